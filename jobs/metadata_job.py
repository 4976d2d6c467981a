"""The metadata build on Spark: Wikipedia n-gram counts + PMI, pageview title totals, merge.

How the work is split (nothing row-sized ever reaches the driver):

* Wikipedia ``.bz2`` dumps: the driver only scans each file for bz2 stream offsets
  (``metadata.wiki.plan_units``) and ships ``(path, start, end)`` work units, one per partition.
  Each executor decompresses, parses and tokenises its own unit and emits *partial* counts
  (flushed every ``flush_keys`` distinct keys so executor memory stays bounded); Spark sums them
  with ``groupBy``. A parquet of ``title, text`` is read by Spark directly and tokenised with
  ``mapInArrow``.
* PMI is computed with DataFrame joins and column arithmetic on the summed counts.
* Pageview files: one file per task, aggregated per file, summed with ``groupBy``.
* Only each source's best ``cap + len(entries so far)`` candidates are collected (enough to fill
  the cap whatever the overlap with earlier sources): that is metadata-sized, not dump-sized.

Defaults and why:

* unigrams: count >= 100 (MetaCLIP).
* bigrams: PMI >= 30 in log2 (MetaCLIP's figure) *and* pair count >= 5. The count floor exists
  because PMI rewards rarity: a pair seen once whose two words occur nowhere else gets the
  highest possible PMI, log2(N_uni^2 / N_bi) — so without a floor the bigram list would be
  hapax noise (typos, names seen once). A pair seen ``k`` times can reach at most
  log2(N_uni^2 / (N_bi * k)), which the report prints as ``pmi_upper_bound``: on a corpus much
  smaller than Wikipedia (~4e9 tokens) PMI >= 30 is unreachable and the build logs a warning;
  lower ``--bigram-min-pmi`` there.
* titles: ``en`` lines with >= 50 views, no ``:``; total >= 70 (MetaCLIP).
"""
from __future__ import annotations

import glob as globlib
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import pyarrow as pa

from curation.errors import InputError
from metadata import pageviews as pv
from metadata import wiki
from metadata.merge import (DEFAULT_CAPS, SourceCandidates, build_report, fingerprint,
                            merge_sources, write_outputs)

log = logging.getLogger(__name__)

KIND_UNIGRAM, KIND_BIGRAM, KIND_TOTAL = 0, 1, 2
COUNT_SCHEMA = pa.schema([("kind", pa.int8()), ("w1", pa.string()), ("w2", pa.string()), ("c", pa.int64())])
COUNT_DDL = "kind tinyint, w1 string, w2 string, c bigint"


@dataclass
class BuildConfig:
    """Every threshold of the build (CLI flags map 1:1)."""

    unigram_min_count: int = 100
    bigram_min_count: int = 5
    bigram_min_pmi: float = 30.0
    pageview_project: str = pv.DEFAULT_PROJECT
    pageview_min_line_views: int = pv.DEFAULT_MIN_LINE_VIEWS
    pageview_min_total_views: int = pv.DEFAULT_MIN_TOTAL_VIEWS
    caps: dict = field(default_factory=lambda: dict(DEFAULT_CAPS))
    unit_mb: float | None = None  # compressed MB per work unit; None = automatic
    flush_keys: int = 400_000


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def expand_paths(pattern: str, what: str) -> list[str]:
    """A file, folder or glob -> sorted file list (driver lists names only, never reads rows)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(pattern)
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


_INPUT_ERROR = re.compile(r"InputError: (.*)")


@contextmanager
def executor_errors() -> Iterator[None]:
    """Turn an ``InputError`` raised inside a Spark task back into an ``InputError`` here."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # py4j / PythonException wrap the task's traceback text
        m = _INPUT_ERROR.search(str(exc))
        if m:
            raise InputError(m.group(1).strip()) from None
        raise


def _one_per_partition(spark, rows: list[tuple], ddl: str):
    """A DataFrame with exactly one row per partition (one work unit per task)."""
    rdd = spark.sparkContext.parallelize(rows, max(1, len(rows)))
    return spark.createDataFrame(rdd, ddl)


# --------------------------------------------------------------------------------------------
# executor side
# --------------------------------------------------------------------------------------------
def _counts_to_batches(counts: wiki.NgramCounts, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    kinds, w1s, w2s, cs = [], [], [], []

    def flush():
        batch = pa.RecordBatch.from_arrays(
            [pa.array(kinds, pa.int8()), pa.array(w1s, pa.string()), pa.array(w2s, pa.string()),
             pa.array(cs, pa.int64())], schema=COUNT_SCHEMA)
        kinds.clear(); w1s.clear(); w2s.clear(); cs.clear()  # noqa: E702
        return batch

    for w, c in counts.unigrams.items():
        kinds.append(KIND_UNIGRAM); w1s.append(w); w2s.append(None); cs.append(c)  # noqa: E702
        if len(cs) >= batch_rows:
            yield flush()
    for (a, b), c in counts.bigrams.items():
        kinds.append(KIND_BIGRAM); w1s.append(a); w2s.append(b); cs.append(c)  # noqa: E702
        if len(cs) >= batch_rows:
            yield flush()
    for name, c in (("n_unigrams", counts.n_unigrams), ("n_bigrams", counts.n_bigrams), ("articles", counts.pages)):
        kinds.append(KIND_TOTAL); w1s.append(name); w2s.append(None); cs.append(c)  # noqa: E702
    yield flush()


def _count_pages(texts: Iterator[str], flush_keys: int) -> Iterator[pa.RecordBatch]:
    counts = wiki.NgramCounts.empty()
    for text in texts:
        counts.add_page(text)
        if len(counts.bigrams) + len(counts.unigrams) >= flush_keys:
            yield from _counts_to_batches(counts)
            counts = wiki.NgramCounts.empty()
    yield from _counts_to_batches(counts)


def _count_units_fn(flush_keys: int):
    def count_units(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            cols = batch.to_pydict()
            for path, start, end in zip(cols["path"], cols["start"], cols["end"]):
                pages = wiki.iter_unit_pages(path, start, end)
                yield from _count_pages(wiki.article_texts(pages), flush_keys)
    return count_units


def _count_parquet_fn(flush_keys: int):
    def count_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        def texts():
            for batch in batches:
                for t in batch.column("text").to_pylist():
                    if t:
                        yield t
        yield from _count_pages(texts(), flush_keys)
    return count_rows


def _pageview_fn(project: str, min_line_views: int):
    def file_views(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path in batch.column("path").to_pylist():
                totals: dict[str, int] = {}
                for title, views in pv.file_title_views(path, project, min_line_views).items():
                    entry = pv.title_entry(title)
                    totals[entry] = totals.get(entry, 0) + views
                items = sorted(totals.items())
                yield pa.RecordBatch.from_arrays(
                    [pa.array([e for e, _ in items], pa.string()), pa.array([v for _, v in items], pa.int64())],
                    names=["entry", "views"])
    return file_views


# --------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------
def wiki_counts(spark, wiki_pattern: str, cfg: BuildConfig):
    """Summed counts DataFrame ``(kind, w1, w2, c)`` for the dump(s); plus input stats."""
    files = expand_paths(wiki_pattern, "Wikipedia dump")
    parquet = [f for f in files if f.endswith(".parquet")]
    dumps = [f for f in files if not f.endswith(".parquet")]
    parts = []
    info: dict = {"files": len(files)}
    if dumps:
        bad = [f for f in dumps if not re.search(r"\.xml(\.bz2)?$|\.bz2$", f)]
        if bad:
            raise InputError(f"{bad[0]}: a Wikipedia input must be a pages-articles .xml.bz2 / .xml dump "
                             "or a parquet of title,text")
        import fsspec

        sizes = {f: fsspec.core.url_to_fs(f)[0].size(f) for f in dumps}
        parallelism = spark.sparkContext.defaultParallelism
        if cfg.unit_mb:
            unit_bytes = int(cfg.unit_mb * (1 << 20))
        else:  # a few units per core, 1..64 MB compressed each
            unit_bytes = int(min(64 << 20, max(1 << 20, sum(sizes.values()) / (4 * parallelism))))
        units = []
        for f in dumps:
            units.extend(wiki.plan_units(f, unit_bytes))
        info.update({"dump_bytes": sum(sizes.values()), "work_units": len(units)})
        single = [f for f in dumps if f.endswith(".bz2") and sum(1 for u in units if u[0] == f) == 1
                  and sizes[f] > 2 * unit_bytes]
        if single:
            log.warning("%d dump file(s) have one bz2 stream and cannot be split (e.g. %s); use the "
                        "*-multistream.xml.bz2 dumps to parallelise within a file", len(single), single[0])
        log.info("Wikipedia: %d file(s), %d work units of ~%.1f MB", len(dumps), len(units), unit_bytes / 2**20)
        units_df = _one_per_partition(spark, units, "path string, start long, end long")
        parts.append(units_df.mapInArrow(_count_units_fn(cfg.flush_keys), COUNT_DDL))
    if parquet:
        df = spark.read.parquet(*parquet)
        if "text" not in df.columns:
            raise InputError(f"{parquet[0]}: a Wikipedia parquet needs a 'text' column (and 'title'); "
                             f"it has {df.columns}")
        parts.append(df.select("text").mapInArrow(_count_parquet_fn(cfg.flush_keys), COUNT_DDL))
    raw = parts[0]
    for p in parts[1:]:
        raw = raw.unionByName(p)
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    summed = raw.groupBy("kind", "w1", "w2").agg(F.sum("c").alias("c")).persist(StorageLevel.MEMORY_AND_DISK)
    return summed, info


def unigram_and_bigram_candidates(summed, cfg: BuildConfig):
    """``(unigram_df, bigram_df, totals)``; both DataFrames have ``entry, score`` (+ counts)."""
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
               .select(F.concat_ws(" ", "w1", "w2").alias("entry"), pmi.alias("score"),
                       F.col("c"), F.col("c1"), F.col("c2"))
               .where(F.col("score") >= cfg.bigram_min_pmi))
    return unigrams, bigrams, totals


def title_candidates(spark, pattern: str, cfg: BuildConfig):
    """``entry, score`` DataFrame of titles with total views >= the threshold; plus input stats."""
    from pyspark.sql import functions as F

    files = expand_paths(pattern, "pageview files")
    df = _one_per_partition(spark, [(f,) for f in files], "path string").mapInArrow(
        _pageview_fn(cfg.pageview_project, cfg.pageview_min_line_views), "entry string, views bigint")
    totals = df.groupBy("entry").agg(F.sum("views").alias("views"))
    titles = totals.where(F.col("views") >= cfg.pageview_min_total_views).select(
        "entry", F.col("views").cast("double").alias("score"))
    return titles, {"files": len(files)}


def collect_best(df, source: str, cap: int | None, n_prior: int, stats: dict) -> SourceCandidates:
    """Count the candidates, then bring only the best ``cap + n_prior`` of them to the driver."""
    from pyspark.sql import functions as F

    with executor_errors():
        total = df.count()
        ranked = df.select("entry", "score").orderBy(F.col("score").desc(), F.col("entry").asc())
        if cap is not None:
            ranked = ranked.limit(cap + n_prior)
        else:
            log.warning("%s: no cap, all %d candidates are collected to the driver", source, total)
        # bounded by cap + n_prior (metadata-sized), never by the dump size
        rows = [(r["entry"], float(r["score"])) for r in ranked.collect()]
    return SourceCandidates(source, rows, total=total, stats=stats)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def build_metadata(spark, out_dir: str, wordnet_dir: str | None = None, wiki_pattern: str | None = None,
                   pageview_pattern: str | None = None, cfg: BuildConfig | None = None) -> dict:
    """Build every requested source, merge, lint and write ``out_dir``; return the report."""
    from metadata.wordnet import wordnet_entries

    cfg = cfg or BuildConfig()
    if not (wordnet_dir or wiki_pattern or pageview_pattern):
        raise InputError("nothing to build: give at least one of --wordnet, --wiki, --pageviews")
    # validate every input before the slow work starts
    if wiki_pattern:
        expand_paths(wiki_pattern, "Wikipedia dump")
    if pageview_pattern:
        expand_paths(pageview_pattern, "pageview files")
    sources: list[SourceCandidates] = []
    extra: dict = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("flush_keys", "unit_mb")},
                   "inputs": {"wordnet": wordnet_dir, "wiki": wiki_pattern, "pageviews": pageview_pattern}}
    n_prior = 0
    if wordnet_dir:
        names, wn_stats = wordnet_entries(wordnet_dir)
        extra["wordnet"] = wn_stats
        sources.append(SourceCandidates("wordnet", [(e, float(n)) for e, n in names],
                                        stats={"synsets": wn_stats["synsets"]}))
        n_prior += len(names)
    summed = None
    if wiki_pattern:
        summed, wiki_info = wiki_counts(spark, wiki_pattern, cfg)
        try:
            unigrams, bigrams, totals = unigram_and_bigram_candidates(summed, cfg)
            n_uni, n_bi = totals.get("n_unigrams", 0), totals.get("n_bigrams", 0)
            bound = wiki.pmi_upper_bound(cfg.bigram_min_count, n_uni, n_bi) if n_bi else 0.0
            if bound < cfg.bigram_min_pmi:
                log.warning("bigram PMI >= %.1f is unreachable with pair count >= %d on this corpus "
                            "(%d tokens; max possible PMI %.2f): lower --bigram-min-pmi",
                            cfg.bigram_min_pmi, cfg.bigram_min_count, n_uni, bound)
            extra["wikipedia"] = {**wiki_info, **totals, "pmi_upper_bound": _finite(bound)}
            uni = collect_best(unigrams, "unigram", cfg.caps.get("unigram"), n_prior,
                               {"min_count": cfg.unigram_min_count})
            sources.append(uni)
            n_prior += len(uni.candidates)
            big = collect_best(bigrams, "bigram", cfg.caps.get("bigram"), n_prior,
                               {"min_count": cfg.bigram_min_count, "min_pmi": cfg.bigram_min_pmi})
            sources.append(big)
            n_prior += len(big.candidates)
        finally:
            summed.unpersist()
    if pageview_pattern:
        titles, pv_info = title_candidates(spark, pageview_pattern, cfg)
        extra["pageviews"] = pv_info
        sources.append(collect_best(titles, "title", cfg.caps.get("title"), n_prior,
                                    {"min_line_views": cfg.pageview_min_line_views,
                                     "min_total_views": cfg.pageview_min_total_views,
                                     "project": cfg.pageview_project}))
    merged, source_stats = merge_sources(sources, cfg.caps)
    if not merged:
        raise InputError("the build produced no entries: every source was empty after its thresholds "
                         f"(see the counts above); lower the thresholds. Nothing was written to {out_dir}")
    report = build_report(merged, source_stats, extra)
    total_in = sum(s["candidates"] for s in source_stats.values())
    summary = {"stage": "metadata", "in": total_in, "out": len(merged),
               "rejected": {"duplicate": sum(s["duplicates_of_earlier"] for s in source_stats.values()),
                            "over_cap": sum(s["over_cap"] for s in source_stats.values())}}
    write_outputs(out_dir, merged, report, summary, fingerprint(extra))
    return report
