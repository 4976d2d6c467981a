"""The curation job: match -> count -> balance (DESIGN §2-§4) as Spark stages.

Design (why it looks like this):
* **Work units.** The driver lists the pool's parquet files and reads only their footers; a unit is
  a range of row groups of one file. Each task reads its unit with pyarrow + fsspec, writes its
  own part files (atomically) and returns a few counters. That works for local paths and ``s3://``
  alike (this Spark has no S3 connector) and keeps the driver free of row data.
* **Idempotent, resumable.** Part names derive from the unit id, a unit writes its reject part,
  then its output part, then ``_units/<id>.json`` last. A retried task overwrites the same names;
  a re-run after a crash keeps units whose marker exists and redoes the rest: no duplicates, no
  holes. A stage whose ``_SUCCESS`` carries the same fingerprint is skipped.
* **Heavy objects once per executor process.** The metadata JSON goes to executors with
  ``addFile``; the automaton is built from it on first use and cached per process (Python
  workers are reused), never pickled per task.
* **Counts on executors.** Per-unit sparse counts are summed by a DataFrame aggregation; only the
  per-entry table (<= number of entries) reaches the driver. ``p`` is broadcast as float32.
* **Reconciliation.** Every stage asserts ``in == out + sum(rejected)`` before marking success.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import balancing
from curation.errors import InputError
from curation.matching import entries_fingerprint, get_matcher, load_metadata_json
from jobs import storage

log = logging.getLogger(__name__)

JOB_VERSION = "1"
REJECT_SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string()), ("detail", pa.string())])
MATCH_CORE = ("uid", "url", "text", "entry_ids")


@dataclass
class CurateParams:
    """Everything the curate stages need; the config file maps onto this."""
    pool: str
    metadata: str
    out: str
    t: float | None = 20_000.0
    target_size: int | None = None
    seed: int = 0
    max_text_bytes: int = 65_536
    rows_per_unit: int = 250_000
    on_bad_file: str = "fail"  # or "skip": record a file-level reject and go on
    sweep_points: int = 40
    storage_options: dict = field(default_factory=dict)
    balance_mode: str = "metaclip"  # or "random": the same p_keep = target_size / matched for every row

    def validate(self) -> None:
        if self.balance_mode not in ("metaclip", "random"):
            raise InputError(f"balance mode must be 'metaclip' or 'random', got {self.balance_mode!r}")
        if self.balance_mode == "random" and self.target_size is None:
            raise InputError("balance mode 'random' needs `target_size` (the number of rows to keep)")
        if (self.t is None) == (self.target_size is None):
            raise InputError("set exactly one of `t` (e.g. 20000) or `target_size` (rows to keep)")
        if self.t is not None and not self.t > 0:
            raise InputError(f"`t` must be > 0, got {self.t}")
        if self.target_size is not None and self.target_size <= 0:
            raise InputError(f"`target_size` must be > 0, got {self.target_size}")
        if self.max_text_bytes <= 0:
            raise InputError("`max_text_bytes` must be > 0")
        if self.on_bad_file not in ("fail", "skip"):
            raise InputError(f"`on_bad_file` must be 'fail' or 'skip', got {self.on_bad_file!r}")


# =========================================================================== helpers
def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


#: Stage name -> folder under the run directory (DESIGN §2 names the shard output `shards/`).
STAGE_DIRS = {"shard": "shards"}


def stage_dir(p: CurateParams, stage: str) -> str:
    return storage.join(p.out, STAGE_DIRS.get(stage, stage))


def rejects_dir(p: CurateParams, stage: str) -> str:
    return storage.join(p.out, "rejects", stage)


def read_success(p: CurateParams, stage: str) -> dict | None:
    url = storage.join(stage_dir(p, stage), "_SUCCESS")
    try:
        return storage.read_json(url, p.storage_options)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def _begin_stage(p: CurateParams, stage: str, fingerprint: str, keep: tuple[str, ...] = ()) -> bool:
    """True if the stage must run. Cleans a stage started with another fingerprint, except the
    files named in ``keep`` (inputs that live in the stage folder, e.g. dedup's eval hashes)."""
    done = read_success(p, stage)
    if done and done.get("fingerprint") == fingerprint:
        log.info("%s: already complete (fingerprint %s), skipping", stage, fingerprint)
        return False
    started_url = storage.join(stage_dir(p, stage), "_STARTED")
    try:
        started = storage.read_json(started_url, p.storage_options)
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        started = None
    if done or not started or started.get("fingerprint") != fingerprint:
        # Stale or different work: start from scratch.
        kept = {}
        for name in keep:
            url = storage.join(stage_dir(p, stage), name)
            if storage.exists(url, p.storage_options):
                fs, path = storage.get_fs(url, p.storage_options)
                kept[name] = fs.cat_file(path)
        storage.remove(stage_dir(p, stage), p.storage_options)
        for name, data in kept.items():
            storage.write_bytes_atomic(storage.join(stage_dir(p, stage), name), data, p.storage_options)
        storage.remove(rejects_dir(p, stage), p.storage_options)
        storage.makedirs(stage_dir(p, stage), p.storage_options)
        storage.write_json_atomic(started_url, {"fingerprint": fingerprint}, p.storage_options)
    else:
        log.info("%s: resuming an interrupted run (fingerprint %s)", stage, fingerprint)
    return True


def _finish_stage(p: CurateParams, stage: str, fingerprint: str, summary: dict) -> dict:
    rejected = sum(summary["rejected"].values())
    if summary["in"] != summary["out"] + rejected:
        raise RuntimeError(f"{stage}: reconciliation failed: in={summary['in']} != out={summary['out']}"
                           f" + rejected={rejected} ({summary['rejected']})")
    summary = {"stage": stage, **summary, "reconciled": True}
    storage.write_json_atomic(storage.join(stage_dir(p, stage), "summary.json"), summary, p.storage_options)
    storage.write_json_atomic(storage.join(stage_dir(p, stage), "_SUCCESS"),
                              {"fingerprint": fingerprint, "stage": stage, "version": JOB_VERSION,
                               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                              p.storage_options)
    storage.remove(storage.join(stage_dir(p, stage), "_STARTED"), p.storage_options)
    return summary


def _merge_summaries(units: list[dict]) -> dict:
    total = {"in": 0, "out": 0, "rejected": {}}
    for u in units:
        total["in"] += u["in"]
        total["out"] += u["out"]
        for k, v in u["rejected"].items():
            total["rejected"][k] = total["rejected"].get(k, 0) + v
    total["rejected"] = dict(sorted(total["rejected"].items()))
    return total


def _unit_marker(p: CurateParams, stage: str, unit_id: int) -> str:
    return storage.join(stage_dir(p, stage), "_units", f"{unit_id:06d}.json")


def _done_units(p: CurateParams, stage: str) -> dict[int, dict]:
    url = storage.join(stage_dir(p, stage), "_units")
    if not storage.exists(url, p.storage_options):
        return {}
    done = {}
    for f in storage.list_files(url, ".json", p.storage_options):
        d = storage.read_json(f, p.storage_options)
        done[int(d["unit"])] = d
    return done


def _run_units(spark, p: CurateParams, stage: str, units: list[dict], task, ctx: dict) -> list[dict]:
    """Run ``task(unit, ctx)`` for units not yet done (one Spark task per unit)."""
    done = _done_units(p, stage)
    todo = [u for u in units if u["unit"] not in done]
    if done:
        log.info("%s: %d of %d units already done", stage, len(units) - len(todo), len(units))
    results = list(done.values())
    if todo:
        log.info("%s: running %d units", stage, len(todo))
        rdd = spark.sparkContext.parallelize(todo, len(todo))
        results += rdd.mapPartitions(lambda it: [task(u, ctx) for u in it]).collect()
    wanted = {u["unit"] for u in units}
    return sorted([r for r in results if r["unit"] in wanted], key=lambda r: r["unit"])


def _throttle() -> None:
    """Failure-injection tests slow units down (env set only on their test cluster / driver)."""
    delay = float(os.environ.get("METACURATE_UNIT_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


# =========================================================================== planning
def plan_units(p: CurateParams) -> tuple[list[dict], list[dict]]:
    """Work units from the pool's footers (driver reads metadata only). Returns (units, bad_files)."""
    files = storage.list_files(p.pool, ".parquet", p.storage_options)
    if not files:
        raise InputError(f"no .parquet files found under pool {p.pool}")

    def footer(path: str):
        fs, fpath = storage.get_fs(path, p.storage_options)
        try:
            with fs.open(fpath, "rb") as f:
                md = pq.ParquetFile(f).metadata
                schema = md.schema.to_arrow_schema()
                return path, md, schema, None
        except Exception as exc:  # malformed / truncated parquet
            return path, None, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(16) as ex:
        footers = list(ex.map(footer, files))
    units, bad = [], []
    for file_idx, (path, md, schema, err) in enumerate(footers):
        if err is not None:
            if p.on_bad_file == "fail":
                raise InputError(f"pool file {path} is not readable parquet ({err}); fix or remove it, "
                                 "or set on_bad_file: skip to record it as a reject and continue")
            bad.append({"path": path, "error": err})
            continue
        missing = [c for c in ("url", "text") if c not in schema.names]
        if missing:
            raise InputError(f"pool file {path} lacks column(s) {missing}; it has {schema.names}. "
                             "The pool needs `url` and `text` (and optionally `uid`)")
        rg_start, rows = 0, 0
        for rg in range(md.num_row_groups):
            rows += md.row_group(rg).num_rows
            if rows >= p.rows_per_unit or rg == md.num_row_groups - 1:
                units.append({"unit": len(units), "path": path, "file": file_idx,
                              "rg_start": rg_start, "rg_end": rg + 1, "rows": rows})
                rg_start, rows = rg + 1, 0
    return units, bad


def pool_fingerprint(p: CurateParams) -> str:
    files = storage.list_files(p.pool, ".parquet", p.storage_options)
    infos = []
    for f in files:
        fs, path = storage.get_fs(f, p.storage_options)
        info = fs.info(path)
        infos.append((f, info.get("size"), str(info.get("ETag") or info.get("mtime") or "")))
    return _fingerprint(infos)


# =========================================================================== match
_METADATA_CACHE: dict[str, list[str]] = {}


def _executor_matcher(ctx: dict):
    """The per-process matcher (built once, reused by later tasks in this Python worker)."""
    fp = ctx["metadata_fingerprint"]
    try:
        from curation.fastmatch import get_fast_matcher  # the vectorised matcher, when present
    except ImportError:
        get_fast_matcher = None
    entries = _METADATA_CACHE.get(fp)
    if entries is None:
        from pyspark import SparkFiles

        local = ctx.get("metadata_local")
        path = local if local and os.path.exists(local) else SparkFiles.get(ctx["metadata_name"])
        with open(path, "rb") as f:
            entries = json.loads(f.read().decode("utf-8"))
        _METADATA_CACHE.clear()
        _METADATA_CACHE[fp] = entries
    if get_fast_matcher is not None:
        return get_fast_matcher(entries, fp), True
    return get_matcher(entries, fp), False


def _texts_and_reasons(text_col: pa.Array, max_bytes: int) -> tuple[pa.Array, list[str | None], list[str]]:
    """Valid texts (as a string array with nulls where invalid), reason per row, detail per row."""
    n = len(text_col)
    reasons: list[str | None] = [None] * n
    details = [""] * n
    if pa.types.is_binary(text_col.type) or pa.types.is_large_binary(text_col.type):
        as_bytes = text_col
    else:
        try:
            text_col.validate(full=True)
            as_bytes = None
        except pa.ArrowInvalid:
            as_bytes = text_col.view(pa.binary() if pa.types.is_string(text_col.type) else pa.large_binary())
    if as_bytes is not None:  # decode row by row to find the bad ones
        values = []
        for i, b in enumerate(as_bytes.to_pylist()):
            if b is None:
                values.append(None)
                continue
            try:
                values.append(b.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(None)
                reasons[i] = "invalid_utf8"
                details[i] = f"byte {exc.start}: {b[max(0, exc.start - 8):exc.start + 8]!r}"
        text_col = pa.array(values, type=pa.string())
    nulls = pc.is_null(text_col).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.binary_length(text_col), 0).to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text_col)), 0), False).to_numpy(
        zero_copy_only=False)
    for i in np.flatnonzero(nulls):
        if reasons[i] is None:
            reasons[i] = "null_text"
    for i in np.flatnonzero(blank & ~nulls):
        reasons[i] = "empty_text"
    for i in np.flatnonzero(lengths > max_bytes):
        reasons[i] = "text_too_long"
        details[i] = f"{int(lengths[i])} bytes > max_text_bytes={max_bytes}"
    invalid = np.array([r is not None for r in reasons], dtype=bool)
    if invalid.any():
        text_col = pc.if_else(pa.array(invalid), pa.scalar(None, pa.string()), text_col.cast(pa.string()))
    return text_col.cast(pa.string()), reasons, details


def _uids(table: pa.Table, file_path: str, first_row: int) -> tuple[list[str], list[bool]]:
    url_col = table.column("url").cast(pa.string())
    null_url = pc.fill_null(pc.equal(pc.binary_length(url_col), 0), True).to_numpy(zero_copy_only=False)
    urls = url_col.to_pylist()
    if "uid" not in table.column_names and not null_url.any():
        # The common case, in one tight comprehension (this dominated the task's time).
        sha = hashlib.sha224
        return [sha(u.encode("utf-8", "surrogatepass")).hexdigest()[:24] for u in urls], null_url.tolist()
    given = table.column("uid").cast(pa.string()).to_pylist() if "uid" in table.column_names else [None] * len(urls)
    uids = []
    for i, (u, url) in enumerate(zip(given, urls)):
        if u is not None and u != "":
            uids.append(u)
        elif url:
            uids.append(balancing.uid_from_url(url))
        else:  # neither: a stable id from the row's position in the pool
            uids.append("row-" + hashlib.sha224(f"{file_path}#{first_row + i}".encode()).hexdigest()[:20])
    return uids, null_url.tolist()


def _match_unit(unit: dict, ctx: dict) -> dict:
    p = CurateParams(**ctx["params"])
    _throttle()
    fs, path = storage.get_fs(unit["path"], p.storage_options)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        table = pf.read_row_groups(list(range(unit["rg_start"], unit["rg_end"])))
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(unit["rg_start"]))
    n = table.num_rows
    uids, null_url = _uids(table, unit["path"], first_row)
    texts, reasons, details = _texts_and_reasons(table.column("text").combine_chunks(), p.max_text_bytes)
    for i in range(n):
        if reasons[i] is None and null_url[i]:
            reasons[i] = "null_url"
    matcher, fast = _executor_matcher(ctx)
    valid_idx = np.array([i for i in range(n) if reasons[i] is None], dtype=np.int64)
    valid_texts = texts.take(pa.array(valid_idx)) if len(valid_idx) < n else texts
    if fast:
        matched = matcher.match_arrow(valid_texts)
        lengths = pc.list_value_length(matched).to_numpy(zero_copy_only=False)
    else:
        lists = matcher.match_batch(valid_texts.to_pylist())
        matched = pa.array(lists, type=pa.list_(pa.int32()))
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    for j in np.flatnonzero(lengths == 0):
        reasons[int(valid_idx[j])] = "no_match"
    keep_local = lengths > 0
    keep_rows = valid_idx[keep_local]

    passthrough = [c for c in table.column_names if c not in MATCH_CORE]
    out = pa.table({
        "uid": pa.array([uids[i] for i in keep_rows], pa.string()),
        "url": table.column("url").take(pa.array(keep_rows)).cast(pa.string()),
        "text": texts.take(pa.array(keep_rows)),
        "entry_ids": matched.filter(pa.array(keep_local)).cast(pa.list_(pa.int32())),
        **{c: table.column(c).take(pa.array(keep_rows)) for c in passthrough},
    })
    rej_rows = [i for i in range(n) if reasons[i] is not None]
    rejects = pa.table({"uid": [uids[i] for i in rej_rows], "stage": ["match"] * len(rej_rows),
                        "reason": [reasons[i] for i in rej_rows], "detail": [details[i] for i in rej_rows]},
                       schema=REJECT_SCHEMA)
    name = f"part-{unit['unit']:06d}.parquet"
    storage.write_parquet_atomic(rejects, storage.join(rejects_dir(p, "match"), name), p.storage_options)
    storage.write_parquet_atomic(out, storage.join(stage_dir(p, "match"), name), p.storage_options)
    counts: dict[str, int] = {}
    for i in rej_rows:
        counts[reasons[i]] = counts.get(reasons[i], 0) + 1
    summary = {"unit": unit["unit"], "in": n, "out": out.num_rows, "rejected": counts}
    storage.write_json_atomic(_unit_marker(p, "match", unit["unit"]), summary, p.storage_options)
    return summary


def _ship_metadata(spark, p: CurateParams) -> dict:
    entries = load_metadata_json(p.metadata, p.storage_options)
    fp = entries_fingerprint(entries)
    local_dir = os.path.join(tempfile.gettempdir(), "metacurate-metadata")
    os.makedirs(local_dir, exist_ok=True)
    name = f"metadata-{fp}.json"
    local = os.path.join(local_dir, name)
    if not os.path.exists(local):
        storage.write_bytes_atomic(local, json.dumps(entries, ensure_ascii=False).encode("utf-8"))
    spark.sparkContext.addFile(local)
    return {"metadata_fingerprint": fp, "metadata_name": name, "metadata_local": local,
            "n_entries": len(entries)}


def run_match(spark, p: CurateParams) -> dict:
    meta = _ship_metadata(spark, p)
    fingerprint = _fingerprint("match", JOB_VERSION, pool_fingerprint(p), meta["metadata_fingerprint"],
                               p.max_text_bytes, p.rows_per_unit, p.on_bad_file)
    if not _begin_stage(p, "match", fingerprint):
        return storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)
    units, bad = plan_units(p)
    if bad:
        log.warning("match: skipping %d unreadable pool file(s): %s", len(bad), [b["path"] for b in bad])
        storage.write_parquet_atomic(pa.table({
            "uid": [""] * len(bad), "stage": ["match"] * len(bad), "reason": ["unreadable_file"] * len(bad),
            "detail": [f"{b['path']}: {b['error']}" for b in bad]}, schema=REJECT_SCHEMA),
            storage.join(rejects_dir(p, "match"), "files.parquet"), p.storage_options)
    ctx = {"params": asdict(p), **meta}
    results = _run_units(spark, p, "match", units, _match_unit, ctx)
    summary = _merge_summaries(results)
    summary.update(units=len(units), files_skipped=[b["path"] for b in bad], n_entries=meta["n_entries"],
                   metadata_fingerprint=meta["metadata_fingerprint"])
    return _finish_stage(p, "match", fingerprint, summary)


# =========================================================================== count
def _entry_counts_df(spark, files: list[str], storage_options: dict):
    """DataFrame (entry_id, count) summed over ``entry_ids`` of the given part files."""
    from pyspark.sql import functions as F

    def count_parts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path in batch.column("path").to_pylist():
                ids = storage.read_parquet(path, storage_options, ["entry_ids"]).column("entry_ids")
                flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
                if flat.size == 0:
                    continue
                uniq, cnt = np.unique(flat, return_counts=True)
                yield pa.record_batch([pa.array(uniq.astype(np.int32)), pa.array(cnt.astype(np.int64))],
                                      names=["entry_id", "count"])

    n = max(1, min(len(files), spark.sparkContext.defaultParallelism * 4))
    paths = spark.createDataFrame([(f,) for f in files], "path string").repartition(n)
    return (paths.mapInArrow(count_parts, "entry_id int, count long")
            .groupBy("entry_id").agg(F.sum("count").alias("count")))


def _counts_array(spark, files: list[str], n_entries: int, storage_options: dict) -> np.ndarray:
    table = _entry_counts_df(spark, files, storage_options).toArrow()
    counts = np.zeros(n_entries, dtype=np.int64)
    if table.num_rows:
        ids = table.column("entry_id").to_numpy()
        if ids.max() >= n_entries:
            raise InputError("match output has entry ids beyond the metadata; re-run the match stage")
        counts[ids] = table.column("count").to_numpy()
    return counts


def _part_files(p: CurateParams, stage: str) -> list[str]:
    d = stage_dir(p, stage)
    return [f for f in storage.list_files(d, ".parquet", p.storage_options)
            if os.path.basename(f).startswith("part-")]


def run_count(spark, p: CurateParams) -> dict:
    match_done = read_success(p, "match")
    if not match_done:
        raise InputError(f"the match stage has not completed under {p.out}; run it first")
    fingerprint = _fingerprint("count", JOB_VERSION, match_done["fingerprint"])
    if not _begin_stage(p, "count", fingerprint):
        return storage.read_json(storage.join(stage_dir(p, "count"), "summary.json"), p.storage_options)
    entries = load_metadata_json(p.metadata, p.storage_options)
    files = _part_files(p, "match")
    counts = _counts_array(spark, files, len(entries), p.storage_options)
    sources = _entry_sources(p, len(entries))
    nz = np.flatnonzero(counts)
    table = pa.table({
        "entry_id": pa.array(nz.astype(np.int32)),
        "entry": pa.array([entries[i] for i in nz], pa.string()),
        "source": pa.array([sources[i] for i in nz], pa.string()),
        "count": pa.array(counts[nz], pa.int64()),
    })
    storage.write_parquet_atomic(table, storage.join(stage_dir(p, "count"), "entry_counts.parquet"),
                                 p.storage_options)
    match_summary = storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)
    # Counting turns matched rows into per-entry counts; every matched row is accounted for.
    summary = {"in": match_summary["out"], "out": match_summary["out"], "rejected": {},
               "entries_matched": int(nz.size), "entries_total": len(entries),
               "occurrences": int(counts.sum()), "max_count": int(counts.max()) if counts.size else 0}
    return _finish_stage(p, "count", fingerprint, summary)


def _entry_sources(p: CurateParams, n: int) -> list[str]:
    """Per-entry source from ``entries.parquet`` next to the metadata.json, else 'unknown'."""
    base = p.metadata.rsplit("/", 1)[0] if "/" in p.metadata else "."
    url = storage.join(base, "entries.parquet")
    try:
        t = storage.read_parquet(url, p.storage_options, ["entry_id", "source"])
    except (FileNotFoundError, OSError):
        return ["unknown"] * n
    sources = ["unknown"] * n
    for i, s in zip(t.column("entry_id").to_pylist(), t.column("source").to_pylist()):
        if 0 <= i < n:
            sources[i] = s
    return sources


def load_counts(p: CurateParams, n_entries: int) -> np.ndarray:
    t = storage.read_parquet(storage.join(stage_dir(p, "count"), "entry_counts.parquet"), p.storage_options)
    counts = np.zeros(n_entries, dtype=np.int64)
    counts[t.column("entry_id").to_numpy()] = t.column("count").to_numpy()
    return counts


# =========================================================================== balance
def _csr(list_col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = list_col.combine_chunks() if isinstance(list_col, pa.ChunkedArray) else list_col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    flat = arr.values.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = flat[offsets[0]:offsets[-1]]
    return offsets - offsets[0], flat


def _expected_unit(path: str, ctx: dict) -> list[float]:
    counts = ctx["counts_bc"].value
    t = storage.read_parquet(path, ctx["storage_options"], ["entry_ids"])
    offsets, flat = _csr(t.column("entry_ids"))
    return balancing.expected_kept_for_ts(offsets, flat, counts, ctx["ts"]).tolist()


def _expected_kept(spark, files: list[str], counts_bc, ts: np.ndarray, storage_options: dict) -> np.ndarray:
    ctx = {"counts_bc": counts_bc, "ts": [float(t) for t in ts], "storage_options": storage_options}
    rdd = spark.sparkContext.parallelize(files, max(1, len(files)))
    per_file = rdd.map(lambda f: _expected_unit(f, ctx)).collect()
    return np.sum(np.array(per_file, dtype=np.float64).reshape(len(files), len(ts)), axis=0)


def _balance_unit(unit: dict, ctx: dict) -> dict:
    p = CurateParams(**ctx["params"])
    _throttle()
    prob = ctx["p_bc"].value
    counts = ctx["counts_bc"].value
    table = storage.read_parquet(unit["path"], p.storage_options)
    offsets, flat = _csr(table.column("entry_ids"))
    if ctx.get("uniform_p") is not None:  # the random-subset control: entries ignored
        pk = np.full(table.num_rows, ctx["uniform_p"], dtype=np.float64)
    else:
        pk = balancing.p_keep_csr(offsets, flat, prob)
    uids = table.column("uid").to_pylist()
    u = balancing.uniform_from_uids(p.seed, uids)
    keep = u < pk
    kept = table.filter(pa.array(keep)).append_column("p_keep", pa.array(pk[keep], pa.float64()))
    drop = np.flatnonzero(~keep)
    rejects = pa.table({"uid": [uids[i] for i in drop], "stage": ["balance"] * len(drop),
                        "reason": ["balanced_out"] * len(drop),
                        "detail": [f"p_keep={pk[i]:.6g} u={u[i]:.6g}" for i in drop]}, schema=REJECT_SCHEMA)
    name = f"part-{unit['unit']:06d}.parquet"
    storage.write_parquet_atomic(rejects, storage.join(rejects_dir(p, "balance"), name), p.storage_options)
    storage.write_parquet_atomic(kept, storage.join(stage_dir(p, "balance"), name), p.storage_options)
    sweep = balancing.expected_kept_for_ts(offsets, flat, counts, ctx["ts"]).tolist()
    summary = {"unit": unit["unit"], "in": table.num_rows, "out": kept.num_rows,
               "rejected": {"balanced_out": int(len(drop))} if len(drop) else {},
               "expected_kept": float(pk.sum()), "sweep": sweep}
    storage.write_json_atomic(_unit_marker(p, "balance", unit["unit"]), summary, p.storage_options)
    return summary


def run_balance(spark, p: CurateParams) -> dict:
    count_done = read_success(p, "count")
    if not count_done:
        raise InputError(f"the count stage has not completed under {p.out}; run it first")
    fingerprint = _fingerprint("balance", JOB_VERSION, count_done["fingerprint"], p.t, p.target_size, p.seed,
                               p.sweep_points, p.balance_mode)
    if not _begin_stage(p, "balance", fingerprint):
        return storage.read_json(storage.join(stage_dir(p, "balance"), "summary.json"), p.storage_options)
    match_summary = storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)
    n_entries = int(match_summary["n_entries"])  # recorded by match: no second parse of the metadata
    counts = load_counts(p, n_entries)
    files = _part_files(p, "match")
    sc = spark.sparkContext
    counts_bc = sc.broadcast(counts.astype(np.float32))
    max_count = int(counts.max()) if counts.size else 1
    t = p.t
    uniform_p = None
    if p.balance_mode == "random":
        matched_rows = storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)["out"]
        uniform_p = min(1.0, p.target_size / max(matched_rows, 1))
        t = float(max_count)  # reported only; every row gets uniform_p
        log.info("balance: random mode, p_keep = %.6g for every matched row", uniform_p)
    elif p.target_size is not None:
        log.info("balance: solving t for target_size=%s", f"{p.target_size:,}")
        t = float(balancing.solve_t(lambda ts: _expected_kept(spark, files, counts_bc, ts, p.storage_options),
                                    p.target_size, max_count))
        log.info("balance: t = %s", t)
    prob = balancing.entry_probabilities(counts, t).astype(np.float32)
    p_bc = sc.broadcast(prob)
    ts = sorted(set(np.unique(np.geomspace(1, max(max_count, 2), p.sweep_points).round()).tolist()) | {float(t)})
    units = [{"unit": i, "path": f} for i, f in enumerate(files)]
    ctx = {"params": asdict(p), "p_bc": p_bc, "counts_bc": counts_bc, "ts": ts, "uniform_p": uniform_p}
    results = _run_units(spark, p, "balance", units, _balance_unit, ctx)
    total = _merge_summaries(results)
    sweep = np.sum([r["sweep"] for r in results], axis=0) if results else np.zeros(len(ts))
    storage.write_json_atomic(storage.join(stage_dir(p, "balance"), "t_sweep.json"),
                              {"t": ts, "expected_kept": sweep.tolist(), "chosen_t": t}, p.storage_options)
    kept_counts = _counts_array(spark, _part_files(p, "balance"), n_entries, p.storage_options)
    nz = np.flatnonzero(kept_counts)
    storage.write_parquet_atomic(pa.table({"entry_id": pa.array(nz.astype(np.int32)),
                                           "kept": pa.array(kept_counts[nz], pa.int64())}),
                                 storage.join(stage_dir(p, "balance"), "kept_counts.parquet"), p.storage_options)
    matched = counts > 0
    summary = {**total, "t": t, "target_size": p.target_size, "seed": p.seed, "mode": p.balance_mode,
               "pool": match_summary["in"], "matched": total["in"],
               "expected_kept": float(sum(r["expected_kept"] for r in results)),
               "kept": total["out"],
               "head_entries": int((counts > t).sum()), "tail_entries": int((matched & (counts <= t)).sum())}
    return _finish_stage(p, "balance", fingerprint, summary)


# =========================================================================== all
STAGES = {"match": run_match, "count": run_count, "balance": run_balance}


def run_curate(spark, p: CurateParams, stages: list[str] | None = None) -> dict[str, dict]:
    p.validate()
    out = {}
    for name in stages or list(STAGES):
        t0 = time.time()
        out[name] = STAGES[name](spark, p)
        log.info("%s: done in %.1fs: in=%s out=%s rejected=%s", name, time.time() - t0,
                 out[name]["in"], out[name]["out"], out[name]["rejected"])
    return out
