"""Stage `count`: how many matched texts contain each entry (``count[e]``, int64).

Counted on the executors: a dense bincount of the entry ids per Spark partition, combined with
``treeReduce``; only one entries-sized array reaches the driver, never rows. Output
``RUN/count/entry_counts.parquet``: entry_id, entry, source, count (entries seen at least once).
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from curation.errors import InputError
from curation.rundir import StageDir, parquet_rows
from curation.storage import Storage
from jobs.stages import match, metadata
from jobs.stages.base import Stage, StageContext

log = logging.getLogger(__name__)

COUNTS = "entry_counts.parquet"


class CountStage(Stage):
    name = "count"
    help = "per-entry match counts (int64) over the matched rows"
    upstream = (match.MatchStage,)

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        meta_dir = ctx.dir(metadata.MetadataStage)
        entries = metadata.load_entries(meta_dir)
        files = ctx.dir(match.MatchStage).part_files()
        counts = counts_array(ctx.spark, files, len(entries), ctx.storage)
        sources = entry_sources(meta_dir, len(entries))
        nz = np.flatnonzero(counts)
        table = pa.table({
            "entry_id": pa.array(nz.astype(np.int32)),
            "entry": pa.array([entries[i] for i in nz], pa.string()),
            "source": pa.array([sources[i] for i in nz], pa.string()),
            "count": pa.array(counts[nz], pa.int64()),
        })
        ctx.storage.write_parquet(table, counts_url(out))
        matched = ctx.upstream_summary(match.MatchStage)["out"]
        # Counting turns matched rows into per-entry counts: every matched row is accounted for.
        return {"in": matched, "out": matched, "rejected": {},
                "entries_matched": int(nz.size), "entries_total": len(entries),
                "occurrences": int(counts.sum()), "max_count": int(counts.max()) if counts.size else 0}


    def input_rows(self, ctx: StageContext):
        return match.MatchStage, parquet_rows(ctx.storage, ctx.dir(match.MatchStage).part_files())


STAGE = CountStage()


def counts_url(d: StageDir) -> str:
    return d.path(COUNTS)


def entry_sources(meta_dir: StageDir, n: int) -> list[str]:
    """Per-entry source from the metadata stage's ``entries.parquet`` ('unknown' where absent)."""
    sources = ["unknown"] * n
    try:
        t = metadata.entries_table_of(meta_dir, ["entry_id", "source"])
    except (FileNotFoundError, OSError):
        return sources
    for i, s in zip(t.column("entry_id").to_pylist(), t.column("source").to_pylist()):
        if 0 <= i < n:
            sources[i] = s
    return sources


def load_counts(d: StageDir, n_entries: int) -> np.ndarray:
    """The dense int64 count array (``counts[entry_id]``)."""
    t = d.storage.read_parquet(counts_url(d))
    counts = np.zeros(n_entries, dtype=np.int64)
    counts[t.column("entry_id").to_numpy()] = t.column("count").to_numpy()
    return counts


def csr(list_col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, flat ids)`` of a list<int> column (offsets start at 0)."""
    arr = list_col.combine_chunks() if isinstance(list_col, pa.ChunkedArray) else list_col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    flat = arr.values.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = flat[offsets[0]:offsets[-1]]
    return offsets - offsets[0], flat


def bincount_files(paths: list[str], n_entries: int, storage: Storage) -> np.ndarray:
    """Per-entry occurrence counts over the ``entry_ids`` of some part files (dense int64)."""
    acc = np.zeros(n_entries, dtype=np.int64)
    for path in paths:
        _, flat = csr(storage.read_parquet(path, ["entry_ids"]).column("entry_ids"))
        if flat.size == 0:
            continue
        if int(flat.max()) >= n_entries or int(flat.min()) < 0:
            raise InputError(f"{path} has entry ids outside the metadata's {n_entries:,} entries; "
                             "the metadata changed since the match stage ran: re-run match")
        acc += np.bincount(flat, minlength=n_entries)
    return acc


def counts_array(spark, files: list[str], n_entries: int, storage: Storage) -> np.ndarray:
    """Counts aggregated on executors (a bincount per partition, combined by ``treeReduce``)."""
    if not files:
        return np.zeros(n_entries, dtype=np.int64)
    n = max(1, min(len(files), spark.sparkContext.defaultParallelism * 2))
    rdd = spark.sparkContext.parallelize(files, n)
    return rdd.mapPartitions(lambda it: [bincount_files(list(it), n_entries, storage)]).treeReduce(np.add, depth=2)
