"""Spark jobs of the metadata build: Wikipedia n-gram counts + PMI, and pageview title totals.

How the work is split (nothing row-sized ever reaches the driver):

* Wikipedia ``.bz2`` dumps: the driver only scans each file for bz2 stream offsets
  (``metadata.wiki.plan_units``) and ships ``(path, start, end)`` work units, one per partition,
  two per core (each unit re-emits its own distinct keys, so more units means more merge work).
  Each executor decompresses, parses and tokenises its own unit and counts it with numpy
  (``metadata.ngram_arrow``), holding at most ``flush_keys`` distinct bigrams before emitting
  partial sums. Its counts leave the task split into key buckets, one Arrow IPC blob per bucket,
  so Spark shuffles a few thousand binary rows instead of one row per distinct n-gram; each
  reduce task sums its buckets with Arrow's hash aggregation and drops keys that cannot pass the
  thresholds. A parquet of ``title, text`` is read by Spark directly and counted the same way.
* PMI is computed with DataFrame joins and column arithmetic on the summed counts.
* Pageview files: one file per task, aggregated per file (titles percent-decoded), summed with
  ``groupBy``. An hourly file holds every project, so one pass serves every language: a task
  keeps each language's project lines and tags them with the language.
* Several languages: each language's dump is counted in its own job with its own tokeniser
  (``metadata.segment``: the executor builds it once per Python worker) and thresholds.
* Only each source's best ``cap + len(entries so far)`` candidates are collected (enough to fill
  the cap whatever the overlap with earlier sources): metadata-sized, not dump-sized.

Thresholds and why:

* unigrams: count >= 100 (MetaCLIP).
* bigrams: PMI >= 30 in log2 (MetaCLIP's figure) *and* pair count >= 5. The count floor exists
  because PMI rewards rarity: a pair seen once whose two words occur nowhere else gets the
  highest possible PMI, log2(N_uni^2 / N_bi), so without a floor the bigram list would be
  hapax noise (typos, names seen once). A pair seen ``k`` times can reach at most
  log2(N_uni^2 / (N_bi * k)), which the report records as ``pmi_upper_bound``: on a corpus much
  smaller than Wikipedia (~4e9 tokens) PMI >= 30 is unreachable and the build logs a warning.
* titles: ``en`` lines with >= 50 views, no ``:``; total >= 70 (MetaCLIP). Another language reads
  its own project's lines (``de``, ``zh``), with its own thresholds.
"""
from __future__ import annotations

import glob as globlib
import logging
import math
import re
from collections import Counter
from typing import Any, Iterator

import pyarrow as pa

from curation.errors import InputError
from curation.storage import Storage
from jobs.spark import executor_errors
from metadata import ngram_arrow, segment, wiki
from metadata import pageviews as pv
from metadata.merge import SourceCandidates, effective_cap

log = logging.getLogger(__name__)

KIND_UNIGRAM, KIND_BIGRAM, KIND_TOTAL = ngram_arrow.KIND_UNIGRAM, ngram_arrow.KIND_BIGRAM, ngram_arrow.KIND_TOTAL
COUNT_DDL = "kind tinyint, w1 string, w2 string, c bigint"
BLOB_SCHEMA = pa.schema([("bucket", pa.int32()), ("blob", pa.binary())])
BLOB_DDL = "bucket int, blob binary"
#: Each unit re-emits its own distinct keys, so the merge work grows with the unit count: at 4 units
#: per core local[2] did ~8% more Python work than local[1] on the 58 MB benchmark dump (8 vs 4
#: units), at 2 the same; units are even by bytes, so two per core still end in a short tail, and
#: big dumps are cut by the 64 MB cap below anyway.
UNITS_PER_CORE = 2
REDUCE_INPUT_BYTES = 16 << 20
BUCKETS_PER_PARTITION = 8


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def expand_inputs(pattern: str, what: str, storage: Storage) -> list[str]:
    """A file, folder or glob -> sorted file list (the driver lists names only, never reads rows)."""
    fs, root = storage.fs(pattern)
    proto = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
    if globlib.has_magic(root):
        found = sorted(fs.glob(root))
    elif fs.isdir(root):
        found = sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith(("_", ".")))
    elif fs.exists(root):
        found = [root]
    else:
        raise InputError(f"{what} not found: {pattern}")
    if not found:
        raise InputError(f"{what}: no file matches {pattern}")
    return [proto + p if proto and not p.startswith(proto) else p for p in found]


def _one_per_partition(spark, rows: list[tuple], ddl: str):
    """A DataFrame with exactly one row per partition (one work unit per task)."""
    rdd = spark.sparkContext.parallelize(rows, max(1, len(rows)))
    return spark.createDataFrame(rdd, ddl)


# --------------------------------------------------------------------------------------------
# executor side
# --------------------------------------------------------------------------------------------
def _emit_blobs(tables: Iterator[pa.Table], n_buckets: int) -> Iterator[pa.RecordBatch]:
    """Partial count tables -> one ``(bucket, Arrow IPC blob)`` row per non-empty key bucket."""
    for table in tables:
        for bucket, part in ngram_arrow.split_buckets(table, n_buckets):
            yield pa.RecordBatch.from_arrays([pa.array([bucket], pa.int32()), pa.array([ngram_arrow.to_ipc(part)],
                                                                                      pa.binary())],
                                             schema=BLOB_SCHEMA)


def _count_units_fn(flush_pairs: int, n_buckets: int, storage: Storage, segmenter: str = segment.ENGLISH):
    def count_units(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        def texts() -> Iterator[str]:
            for batch in batches:
                cols = batch.to_pydict()
                for path, start, end in zip(cols["path"], cols["start"], cols["end"]):
                    yield from wiki.article_texts(wiki.iter_unit_pages(path, start, end, storage))
        tokenize = segment.tokenizer(segmenter)
        yield from _emit_blobs(ngram_arrow.count_texts(texts(), flush_pairs=flush_pairs, tokenize=tokenize),
                               n_buckets)
    return count_units


def _count_parquet_fn(flush_pairs: int, n_buckets: int, storage: Storage, segmenter: str = segment.ENGLISH):
    def count_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        def texts() -> Iterator[str]:
            for batch in batches:
                for t in batch.column("text").to_pylist():
                    if t:
                        yield t
        tokenize = segment.tokenizer(segmenter)
        yield from _emit_blobs(ngram_arrow.count_texts(texts(), flush_pairs=flush_pairs, tokenize=tokenize),
                               n_buckets)
    return count_rows


def _sum_buckets_fn(min_unigram: int, min_bigram: int):
    """Reduce side: blobs arrive sorted by bucket; sum each bucket's tables, emit the keys that
    can still matter (see :func:`wiki_counts`)."""
    def sum_buckets(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        current, tables = None, []

        def flush() -> Iterator[pa.RecordBatch]:
            merged = ngram_arrow.merge_count_tables(tables)
            yield from ngram_arrow.drop_rare(merged, min_unigram, min_bigram).to_batches(max_chunksize=65_536)

        for batch in batches:
            for bucket, blob in zip(batch.column("bucket").to_pylist(), batch.column("blob").to_pylist()):
                if bucket != current and tables:
                    yield from flush()
                    tables = []
                current = bucket
                tables.append(ngram_arrow.from_ipc(blob))
        if tables:
            yield from flush()
    return sum_buckets


def _pageview_fn(plan: dict[str, dict[str, int]], lang_of: dict[str, str], storage: Storage):
    """Executor side: ``plan`` maps each file to the projects read from it (project ->
    min_line_views), ``lang_of`` a project to its language. One read of a file serves them all."""
    def file_views(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path in batch.column("path").to_pylist():
                projects = plan[path]
                stats = {p: Counter() for p in projects}
                langs, entries, views, kinds = [], [], [], []
                for project, titles in sorted(pv.file_project_views(path, projects, stats, storage).items()):
                    totals: dict[str, int] = {}
                    for title, n in titles.items():
                        entry = pv.title_entry(title)
                        totals[entry] = totals.get(entry, 0) + n
                    items = sorted(totals.items())
                    stat_items = sorted(stats[project].items())
                    # stat rows (entry null) travel with the titles so one pass yields both
                    lang = lang_of[project]
                    langs += [lang] * (len(items) + len(stat_items))
                    entries += [e for e, _ in items] + [None] * len(stat_items)
                    views += [v for _, v in items] + [n for _, n in stat_items]
                    kinds += [None] * len(items) + [k for k, _ in stat_items]
                yield pa.RecordBatch.from_arrays(
                    [pa.array(langs, pa.string()), pa.array(entries, pa.string()), pa.array(views, pa.int64()),
                     pa.array(kinds, pa.string())], names=["lang", "entry", "views", "stat"])
    return file_views


# --------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------
def wiki_counts(spark, wiki_pattern: str, cfg: Any, storage: Storage, segmenter: str = segment.ENGLISH):
    """Summed counts DataFrame ``(kind, w1, w2, c)`` for the dump(s) of one language, tokenised
    with ``segmenter`` (``metadata.segment``); plus input stats.

    Only keys that can still matter are kept (the reduce drops the rest before Spark sees them):
    bigrams seen >= ``bigram_min_count`` times, and unigrams seen >= the smaller of the two
    minimum counts — a word of a kept bigram occurs at least as often as the bigram, so every
    unigram count PMI needs is there. The totals rows always are.
    """
    files = expand_inputs(wiki_pattern, "Wikipedia dump", storage)
    parquet = [f for f in files if f.endswith(".parquet")]
    dumps = [f for f in files if not f.endswith(".parquet")]
    parts = []
    info: dict = {"files": len(files)}
    parallelism = spark.sparkContext.defaultParallelism
    input_bytes = 0
    if dumps:
        bad = [f for f in dumps if not re.search(r"\.xml(\.bz2)?$|\.bz2$", f)]
        if bad:
            raise InputError(f"{bad[0]}: a Wikipedia input must be a pages-articles .xml.bz2 / .xml dump "
                             "or a parquet of title,text")
        sizes = {f: storage.size(f) for f in dumps}
        input_bytes += sum(sizes.values())
        if cfg.unit_mb:
            unit_bytes = int(cfg.unit_mb * (1 << 20))
        else:  # UNITS_PER_CORE units per core (even waves, a short tail), 1..64 MB compressed each
            unit_bytes = int(min(64 << 20, max(1 << 20, sum(sizes.values()) / (UNITS_PER_CORE * parallelism))))
        units = []
        for f in dumps:
            units.extend(wiki.plan_units(f, unit_bytes, storage))
        info.update({"dump_bytes": sum(sizes.values()), "work_units": len(units)})
        single = [f for f in dumps if f.endswith(".bz2") and sum(1 for u in units if u[0] == f) == 1
                  and sizes[f] > 2 * unit_bytes]
        if single:
            log.warning("%d dump file(s) have one bz2 stream and cannot be split (e.g. %s); use the "
                        "*-multistream.xml.bz2 dumps to parallelise within a file", len(single), single[0])
        log.info("Wikipedia: %d file(s), %d work units of ~%.1f MB", len(dumps), len(units), unit_bytes / 2**20)
        parts.append(("units", _one_per_partition(spark, units, "path string, start long, end long")))
    if parquet:
        df = spark.read.parquet(*parquet)
        if "text" not in df.columns:
            raise InputError(f"{parquet[0]}: a Wikipedia parquet needs a 'text' column (and 'title'); "
                             f"it has {df.columns}")
        input_bytes += sum(storage.size(f) for f in parquet)
        parts.append(("parquet", df.select("text")))
    # reduce side: enough partitions that each holds ~REDUCE_INPUT_BYTES of input's counts, and
    # several key buckets per partition so that buckets spread evenly over them
    n_parts = max(2 * parallelism, math.ceil(input_bytes / REDUCE_INPUT_BYTES))
    n_buckets = BUCKETS_PER_PARTITION * n_parts
    info["reduce_partitions"] = n_parts
    blobs = None
    for kind, df in parts:
        fn = _count_units_fn if kind == "units" else _count_parquet_fn
        mapped = df.mapInArrow(fn(cfg.flush_keys, n_buckets, storage, segmenter), BLOB_DDL)
        blobs = mapped if blobs is None else blobs.unionByName(mapped)
    from pyspark import StorageLevel

    summed = (blobs.repartition(n_parts, "bucket").sortWithinPartitions("bucket")
              .mapInArrow(_sum_buckets_fn(min(cfg.unigram_min_count, cfg.bigram_min_count), cfg.bigram_min_count),
                          COUNT_DDL).persist(StorageLevel.MEMORY_AND_DISK))
    return summed, info


def unigram_and_bigram_candidates(summed, cfg: Any, joiner: str = " "):
    """``(unigram_df, bigram_df, totals)``; both DataFrames have ``entry, score`` (+ counts).
    A bigram's entry is its two words with ``joiner`` between (``""`` for languages written
    without spaces, as MetaCLIP 2 does)."""
    from pyspark.sql import functions as F

    with executor_errors():
        totals = {r["w1"]: int(r["c"]) for r in summed.where(F.col("kind") == KIND_TOTAL).collect()}
    n_uni, n_bi = totals.get("n_unigrams", 0), totals.get("n_bigrams", 0)
    uni_all = summed.where(F.col("kind") == KIND_UNIGRAM).select(F.col("w1").alias("w"), F.col("c"))
    unigrams = uni_all.where(F.col("c") >= cfg.unigram_min_count).select(
        F.col("w").alias("entry"), F.col("c").cast("double").alias("score"))
    bi = summed.where((F.col("kind") == KIND_BIGRAM) & (F.col("c") >= cfg.bigram_min_count))
    u1 = uni_all.select(F.col("w").alias("w1"), F.col("c").alias("c1"))
    u2 = uni_all.select(F.col("w").alias("w2"), F.col("c").alias("c2"))
    if n_bi > 0:
        pmi = F.log2((F.col("c") / F.lit(float(n_bi)))
                     / ((F.col("c1") / F.lit(float(n_uni))) * (F.col("c2") / F.lit(float(n_uni)))))
    else:
        pmi = F.lit(None).cast("double")
    bigrams = (bi.join(u1, "w1").join(u2, "w2")
               .select(F.concat_ws(joiner, "w1", "w2").alias("entry"), pmi.alias("score"),
                       F.col("c"), F.col("c1"), F.col("c2"))
               .where(F.col("score") >= cfg.bigram_min_pmi))
    if joiner == "":
        # two pairs can join to one string (北京大+学, 北京+大学): one candidate each, its best PMI,
        # so that duplicates never take the places the cap leaves
        bigrams = bigrams.groupBy("entry").agg(F.max("score").alias("score"))
    return unigrams, bigrams, totals


def title_totals_by_lang(spark, readers: dict[str, tuple[str, str, int]], storage: Storage):
    """``(totals, info)``: the persisted ``lang, stat, entry, views`` DataFrame of every
    language's summed title views (unpersist it when done), and per language its input stats
    (incl. percent-decoding counts). ``readers``: language -> (pageview files, project,
    min_line_views); languages reading the same files share one pass over them."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    plan: dict[str, dict[str, int]] = {}
    lang_of: dict[str, str] = {}
    n_files: dict[str, int] = {}
    for lang, (pattern, project, min_line_views) in readers.items():
        files = expand_inputs(pattern, "pageview files" if len(readers) == 1 else f"pageview files of {lang}",
                              storage)
        n_files[lang] = len(files)
        lang_of[project] = lang
        for f in files:
            plan.setdefault(f, {})[project] = min_line_views
    df = _one_per_partition(spark, [(f,) for f in sorted(plan)], "path string").mapInArrow(
        _pageview_fn(plan, lang_of, storage), "lang string, entry string, views bigint, stat string")
    totals = (df.groupBy("lang", "stat", "entry").agg(F.sum("views").alias("views"))
              .persist(StorageLevel.MEMORY_AND_DISK))
    with executor_errors():
        stats = {(r["lang"], r["stat"]): int(r["views"]) for r in totals.where(F.col("stat").isNotNull()).collect()}
    info = {}
    for lang in readers:
        info[lang] = {"files": n_files[lang], **{k: stats.get((lang, k), 0) for k in ("percent_decoded", "undecodable",
                                                                                   "percent_literal")}}
        if info[lang]["undecodable"]:
            log.warning("pageviews %s: %d kept line(s) have %%-escapes that are not UTF-8; their titles were kept "
                        "as they are", lang, info[lang]["undecodable"])
    return totals, info


def titles_of(totals, lang: str, min_total_views: int):
    """The ``entry, score`` DataFrame of one language's titles with total views >= the threshold."""
    from pyspark.sql import functions as F

    return totals.where(F.col("stat").isNull() & (F.col("lang") == lang)
                        & (F.col("views") >= min_total_views)).select("entry", F.col("views").cast("double").alias("score"))


def collect_best(df, source: str, cap: int | None, n_prior: int, stats: dict,
                 share: float | None = None) -> SourceCandidates:
    """Count the candidates, then bring only the best ``cap + n_prior`` of them to the driver
    (``share``: the cap is at most that share of the candidates, :func:`metadata.merge.effective_cap`)."""
    from pyspark.sql import functions as F

    with executor_errors():
        total = df.count()
        cap = effective_cap(cap, share, total)
        ranked = df.select("entry", "score").orderBy(F.col("score").desc(), F.col("entry").asc())
        if cap is not None:
            ranked = ranked.limit(cap + n_prior)
        else:
            log.warning("%s: no cap, all %d candidates are collected to the driver", source, total)
        # bounded by cap + n_prior (metadata-sized), never by the dump size
        rows = [(r["entry"], float(r["score"])) for r in ranked.collect()]
    if share is not None:
        stats = {**stats, "cap_share": share}
    return SourceCandidates(source, rows, total=total, stats=stats)
