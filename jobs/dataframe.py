"""Curation on the DataFrames you already have: ``match``, ``entry_counts``, ``balance``.

For users who hold a SparkSession and a DataFrame (a Delta, Iceberg or Hive table; parquet on
gs:// or abfs:// read through the cluster's Hadoop connectors): Spark does the I/O, and these
functions add columns. They run the code of the run-directory stages (the match stage's uid and
caption rules and its compiled ``FastMatcher``, ``curation.balancing``'s counts, probabilities
and per-uid draw), so for the same pool, metadata and seed they give the same entry ids, counts
and kept rows as ``metacurate curate`` (tested)::

    from jobs.dataframe import match, entry_counts, balance
    pool = spark.read.parquet("gs://bucket/laion/")               # any source Spark reads
    matched = match(pool, "metadata.json", url_col="URL", text_col="TEXT")
    counts = entry_counts(matched)                                 # entry_id, count (int64)
    kept = balance(matched, counts, t=20_000, seed=0)              # + p_keep, only the kept rows
    kept.write.parquet("gs://bucket/curated/")

Differences from the run-directory path, on purpose: nothing is written (no rejects, no
summaries: filter the rows you drop yourself if you want them), and repeated uids are not
removed (``metacurate curate`` rejects later repeats; ``df.dropDuplicates(["uid"])`` does it here).
Arrow batches go straight from Spark to the matcher (``mapInArrow``): no Python rows.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import balancing
from curation.errors import InputError
from curation.matching import load_metadata_json
from curation.storage import Storage
from curation.textrules import RULES

log = logging.getLogger(__name__)



def _entries(metadata: str | Sequence[str], storage: Storage | None) -> list[str]:
    if isinstance(metadata, str):
        return load_metadata_json(metadata, storage or Storage.from_env())
    entries = list(metadata)
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise InputError("metadata must be a metadata.json path or a non-empty list of non-empty strings")
    return entries


def _column(df, name: str, what: str) -> None:
    if name not in df.columns:
        raise InputError(f"the DataFrame has no column `{name}` for the {what} (it has {df.columns}); "
                         f"name it with {what.split()[0]}_col=...")


# --------------------------------------------------------------------------- match
#: Rows matched per call. Spark hands Arrow batches of spark.sql.execution.arrow.maxRecordsPerBatch
#: rows (10,000 by default); matching pays a fixed cost per call, so batches are joined up to this.
BATCH_ROWS = 50_000


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of about ``rows`` (joined, never split)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        if size >= rows:
            yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            pending, size = [], 0
    if pending and size:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


#: Joined batches read ahead of the one being matched (each BATCH_ROWS rows).
READ_AHEAD = 3
_END = object()


def _read_ahead(batches: Iterator[pa.RecordBatch], depth: int = READ_AHEAD) -> Iterator[pa.RecordBatch]:
    """``batches``, pulled by a thread up to ``depth`` ahead of the consumer, in order.

    Spark's Python runner feeds a worker's input from the task thread, and only while that thread
    waits for output; a worker that reads its next batch only after matching the current one, and
    matches only after handing the last result over, leaves the JVM writing the last output while it
    idles. Used twice in the match worker (input read ahead; matching ahead of the hand-over), it
    lets the worker match batch i+1 while the JVM turns batch i into rows
    (benchmarks/dataframe_api.py). The source's exceptions reach the consumer; a consumer that stops
    early stops the thread at its next batch."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=pump, name="metacurate-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _match_batches(task: dict):
    """The mapInArrow function: uid (where missing), caption checks, matching, per batch."""
    from jobs.stages.match import _executor_matcher, sha224_uids, texts_and_reasons

    def match_all(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        matcher = _executor_matcher(task)
        for batch in _read_ahead(_rebatch(batches, BATCH_ROWS)):
            n = batch.num_rows
            urls = batch.column(task["url_col"])
            urls = urls.cast(pa.string()) if not pa.types.is_string(urls.type) else urls
            no_url = pc.fill_null(pc.equal(pc.binary_length(urls), 0), True).to_numpy(zero_copy_only=False)
            from_url = sha224_uids(pc.fill_null(urls, ""))
            if task["uid_col"] in batch.schema.names:
                given = batch.column(task["uid_col"]).cast(pa.string())
                has = pc.fill_null(pc.greater(pc.binary_length(given), 0), False)
                uids = pc.if_else(has, given, from_url)
                no_id = no_url & ~has.to_numpy(zero_copy_only=False)
            else:
                uids, no_id = from_url, no_url
            texts, codes, _ = texts_and_reasons(batch.column(task["text_col"]), task["max_text_bytes"])
            valid = (codes == 0) & ~no_url
            ids = matcher.match_arrow(pc.if_else(pa.array(valid), texts, pa.scalar(None, pa.string())))
            lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
            keep = np.ones(n, bool) if task["keep_unmatched"] else (valid & (lengths > 0))
            cols = {name: batch.column(name) for name in batch.schema.names}
            uid_name = task["uid_col"] if task["uid_col"] in cols else "uid"
            cols[uid_name] = pc.if_else(pa.array(no_id), pa.scalar(None, pa.string()), uids)
            cols["entry_ids"] = ids.cast(pa.list_(pa.int32()))
            out = pa.RecordBatch.from_pydict(cols)
            yield out.filter(pa.array(keep)) if not keep.all() else out

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # three threads: input read ahead, matching, and this one, which only hands finished batches to
        # Spark (and waits while the JVM is busy writing the last one, without stopping the matching)
        return _read_ahead(match_all(batches), depth=2)
    return run


def match(df, metadata: str | Sequence[str], *, text_col: str = "text", url_col: str = "url",
          uid_col: str = "uid", rule: str = "metaclip1", max_text_bytes: int = 65_536,
          keep_unmatched: bool = False, storage: Storage | None = None):
    """``df`` with ``entry_ids: array<int>`` (the sorted matched entry ids) and, when it has no
    ``uid_col``, a ``uid`` column (``sha224(url)[:24]``, MetaCLIP's id; a given uid wins where set).

    Rows with a null, blank, invalid or too long caption, no URL, or no matched entry are dropped
    unless ``keep_unmatched`` (they then carry an empty ``entry_ids``). ``metadata`` is a
    metadata.json path (read here, on the driver) or the list of entries itself."""
    from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

    from jobs.stages.match import compile_matcher

    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}")
    _column(df, text_col, "text (caption)")
    _column(df, url_col, "url (image URL)")
    if "entry_ids" in df.columns or ("uid" in df.columns and uid_col != "uid"):
        raise InputError("the DataFrame already has an `entry_ids` (or a `uid` besides uid_col) column; drop or "
                         "rename it first")
    entries = _entries(metadata, storage)
    meta = compile_matcher(entries, rule)
    df.sparkSession.sparkContext.addFile(meta["matcher_local"])
    task = {**meta, "text_col": text_col, "url_col": url_col, "uid_col": uid_col,
            "max_text_bytes": int(max_text_bytes), "keep_unmatched": bool(keep_unmatched)}
    fields = list(df.schema.fields)
    if uid_col not in df.columns:
        fields.append(StructField("uid", StringType(), True))
    fields.append(StructField("entry_ids", ArrayType(IntegerType(), True), True))
    return df.mapInArrow(_match_batches(task), StructType(fields))


def parquet_options(url_col: str = "url", text_col: str = "text", uid_col: str = "uid") -> dict[str, str]:
    """Writer options for the curated rows as parquet: ``df.write.options(**parquet_options()).parquet(out)``.

    Spark's parquet writer spends most of its time on a curated row's nearly unique columns:
    ``entry_ids`` (about eight int32 per row out of half a million ids, half the write's CPU) and
    the URL, caption and uid. For such columns the default writer builds a dictionary per column
    chunk and mostly gives it up. These options write v2 data pages with no dictionary for those
    four columns, so the ids are delta-packed (DELTA_BINARY_PACKED) and the strings are
    prefix-coded (DELTA_BYTE_ARRAY). Other columns keep their dictionaries. On 1M benchmark captions
    the write takes about a third less CPU and the files come out about 4% smaller
    (benchmarks/dataframe_api.py). pandas, pyarrow, DuckDB and Spark 3.5/4.x read the files with no
    options (tested).

    Leave these options off when a reader that predates parquet's v2 data pages and delta
    encodings must read the output. Pass the column names you gave ``match``."""
    columns = (url_col, text_col, uid_col, "entry_ids.list.element")
    return {"parquet.writer.version": "v2", **{f"parquet.enable.dictionary#{c}": "false" for c in columns}}


# --------------------------------------------------------------------------- counts
def _partial_counts(ids_col: str):
    """The mapInArrow function: one partition's counts, its non-zero entries only."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from jobs.stages.count import csr

        acc = np.zeros(0, dtype=np.int64)
        for batch in batches:
            _, flat = csr(batch.column(ids_col))
            if not flat.size:
                continue
            if int(flat.min()) < 0:
                raise InputError(f"`{ids_col}` holds negative entry ids")
            binc = np.bincount(flat)
            if len(binc) > len(acc):
                acc = np.concatenate([acc, np.zeros(len(binc) - len(acc), np.int64)])
            acc[: len(binc)] += binc
        nz = np.flatnonzero(acc)
        yield pa.RecordBatch.from_pydict({"entry_id": pa.array(nz.astype(np.int32)),
                                          "count": pa.array(acc[nz], pa.int64())})
    return run


def entry_counts(df, ids_col: str = "entry_ids"):
    """A DataFrame ``entry_id: int, count: bigint``: texts per entry (ids within a row are unique),
    for the entries matched at least once. Each partition counts with numpy and emits at most one
    row per entry; Spark sums those (int64 all the way)."""
    from pyspark.sql import functions as F

    _column(df, ids_col, "entry ids")
    partial = df.select(ids_col).mapInArrow(_partial_counts(ids_col), "entry_id int, count bigint")
    return partial.groupBy("entry_id").agg(F.sum("count").cast("bigint").alias("count")).orderBy("entry_id")


def counts_array(df, ids_col: str = "entry_ids") -> np.ndarray:
    """``entry_counts`` as a dense int64 array on the driver (index = entry id): entries-sized."""
    return _as_counts(entry_counts(df, ids_col))


def _as_counts(counts: Any) -> np.ndarray:
    """A dense int64 array from entry_counts' DataFrame, a {id: count} mapping, or an array."""
    if isinstance(counts, np.ndarray):
        return counts.astype(np.int64, copy=False)
    if isinstance(counts, dict):
        out = np.zeros(max(counts, default=-1) + 1, np.int64)
        for k, v in counts.items():
            out[int(k)] = int(v)
        return out
    if hasattr(counts, "toPandas"):
        pdf = counts.select("entry_id", "count").toPandas()
        out = np.zeros(int(pdf["entry_id"].max()) + 1 if len(pdf) else 0, np.int64)
        out[pdf["entry_id"].to_numpy()] = pdf["count"].to_numpy()
        return out
    raise InputError("counts must be entry_counts()'s DataFrame, a dict {entry_id: count} or an int array")


# --------------------------------------------------------------------------- balance
def _balance_batches(task: dict):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from jobs.stages.count import csr

        prob = task["p_bc"].value
        for batch in batches:
            offsets, flat = csr(batch.column(task["ids_col"]))
            pk = balancing.p_keep_csr(offsets, flat, prob)
            uids = batch.column(task["uid_col"]).cast(pa.string())
            if uids.null_count:
                raise InputError(f"`{task['uid_col']}` has nulls: every row needs an id for the draw")
            out = batch.append_column("p_keep", pa.array(pk, pa.float64()))
            if task["keep"]:
                u = balancing.uniform_from_uid_array(task["seed"], uids)
                out = out.filter(pa.array(u < pk))
            yield out
    return run


def _expected(task: dict):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from jobs.stages.count import csr

        counts = task["counts_bc"].value
        total = np.zeros(len(task["ts"]), np.float64)
        for batch in batches:
            offsets, flat = csr(batch.column(task["ids_col"]))
            total += balancing.expected_kept_for_ts(offsets, flat, counts, task["ts"])
        yield pa.RecordBatch.from_pydict({"i": pa.array(range(len(total)), pa.int32()),
                                          "e": pa.array(total, pa.float64())})
    return run


def balance(df, counts: Any, *, t: float | None = None, target_size: int | None = None, seed: int = 0,
            ids_col: str = "entry_ids", uid_col: str = "uid", keep: bool = True):
    """``df`` with ``p_keep = 1 - prod(1 - min(1, t / count[e]))`` (float64, exact int64 counts),
    and, when ``keep``, only the rows with ``u(seed, uid) < p_keep``: the same draw as the balance
    stage, so the same seed keeps the same rows whatever the partitioning. Give ``t`` or
    ``target_size`` (then t is the smallest whose expected kept count reaches it)."""
    if (t is None) == (target_size is None):
        raise InputError("give exactly one of t (e.g. 20000) or target_size (rows to keep)")
    if t is not None and not t > 0:
        raise InputError(f"t must be > 0, got {t}")
    _column(df, ids_col, "entry ids")
    _column(df, uid_col, "uid (row id)")
    if "p_keep" in df.columns:
        raise InputError("the DataFrame already has a `p_keep` column; drop or rename it first")
    c = _as_counts(counts)
    sc = df.sparkSession.sparkContext
    if target_size is not None:
        counts_bc = sc.broadcast(c)
        ids = df.select(ids_col)

        def evaluate(ts: np.ndarray) -> np.ndarray:
            task = {"counts_bc": counts_bc, "ts": [float(x) for x in ts], "ids_col": ids_col}
            rows = ids.mapInArrow(_expected(task), "i int, e double").groupBy("i").sum("e").collect()
            out = np.zeros(len(ts))
            for r in rows:
                out[r["i"]] = r["sum(e)"]
            return out

        t = float(balancing.solve_t(evaluate, target_size, int(c.max()) if c.size else 1))
        log.info("balance: t = %s for target_size=%s", t, f"{target_size:,}")
    p_bc = sc.broadcast(balancing.entry_probabilities(c, t))
    task = {"p_bc": p_bc, "seed": int(seed), "ids_col": ids_col, "uid_col": uid_col, "keep": bool(keep)}
    from pyspark.sql.types import DoubleType, StructField, StructType

    schema = StructType(list(df.schema.fields) + [StructField("p_keep", DoubleType(), True)])
    return df.mapInArrow(_balance_batches(task), schema)

