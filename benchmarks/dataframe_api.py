"""Benchmark: the DataFrame API's per-core match rate against the run-directory match stage.

Both paths match the same pool against the same ~500k-entry metadata (benchmarks/data.py) in
``local[1]`` (one core), in one process and one SparkSession, in interleaved rounds so that a slow
spell of this shared machine hits both. Each path does the same work end to end: read the pool's
parquet, compute uids, check captions, match, write the matched rows as parquet.

* run-directory path: ``metacurate``'s match stage (tasks read their own row groups with pyarrow
  and write their own parts), with the duplicate-uid check off (the DataFrame API does not remove
  repeats, so it would not be the same work);
* DataFrame path: ``spark.read.parquet`` -> ``jobs.dataframe.match`` (``mapInArrow``) ->
  ``write.parquet``: Spark does the I/O.

Prints rows/s of each and the ratio DataFrame / run-directory (goal >= 0.8), and the rate of
Spark's side alone (the DataFrame path with placeholder columns instead of matching: parquet read,
Arrow to and from the Python worker, parquet write), the bound the DataFrame path cannot pass. Usage:
  python benchmarks/dataframe_api.py [--rows 400000] [--entries 500000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_pool(n: int, path: Path, chunk: int = 100_000) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.data import bench_captions

    if (path / "_done").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        pq.write_table(pa.table({"url": [f"http://example.invalid/{start + j}.jpg" for j in range(m)],
                                 "text": bench_captions(m, seed=2000 + i)}), path / f"part-{i:05d}.parquet",
                       row_group_size=50_000)
    (path / "_done").write_text("")
    return path


def run_dir_path(spark, pool: Path, meta: Path, out: str, rows_per_unit: int) -> float:
    from jobs.config import load_config
    from jobs.stages import match, metadata, run_stages

    cfg = load_config(None, values={"pool.path": str(pool), "metadata.path": str(meta), "run_dir": out,
                                    "pool.rows_per_unit": rows_per_unit, "pool.check_duplicate_uids": False})
    run_stages(cfg, [metadata.STAGE.name], spark=spark)
    t0 = time.perf_counter()
    run_stages(cfg, [match.STAGE.name], spark=spark, add_upstream=False)
    return time.perf_counter() - t0


def dataframe_path(spark, pool: Path, entries: list[str], out: str) -> float:
    from jobs.dataframe import match

    t0 = time.perf_counter()
    match(spark.read.parquet(str(pool)), entries).write.mode("overwrite").parquet(out)
    return time.perf_counter() - t0


def _placeholder_ids(batches):
    """The match output's columns with fixed values: what Spark's side costs without matching."""
    import numpy as np
    import pyarrow as pa

    for b in batches:
        n = b.num_rows
        ids = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                       pa.array(np.arange(2 * n, dtype=np.int32) % 1000))
        yield pa.RecordBatch.from_arrays(list(b.columns) + [pa.array(["0" * 24] * n), ids],
                                         names=b.schema.names + ["uid", "entry_ids"])


def spark_side_only(spark, pool: Path, out: str) -> float:
    """read parquet -> Arrow -> a Python worker that adds placeholder uid/entry_ids -> rows ->
    write parquet: the DataFrame path with the matching taken out."""
    from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

    df = spark.read.parquet(str(pool))
    schema = StructType(list(df.schema.fields) + [StructField("uid", StringType()),
                                                  StructField("entry_ids", ArrayType(IntegerType()))])
    t0 = time.perf_counter()
    df.mapInArrow(_placeholder_ids, schema).write.mode("overwrite").parquet(out)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows-per-unit", type=int, default=100_000, help="the match stage's rows per task")
    args = ap.parse_args()

    from benchmarks.data import CACHE_DIR, bench_metadata
    from jobs.spark import get_spark

    entries = bench_metadata(args.entries)
    meta = CACHE_DIR / f"metadata-{len(entries)}.json"
    if not meta.exists():
        meta.write_text(json.dumps(entries))
    pool = write_pool(args.rows, CACHE_DIR / f"dfpool-{args.rows}")
    warm = write_pool(20_000, CACHE_DIR / "dfpool-20000")
    # the DataFrame path reads as many partitions as the run-directory path has units
    spark = get_spark("local[1]", "metacurate-bench-dataframe",
                      conf={"spark.sql.files.maxPartitionBytes": str(16 << 20)})
    work = tempfile.mkdtemp(prefix="bench-df-")
    try:
        run_dir_path(spark, warm, meta, os.path.join(work, "warm-run"), args.rows_per_unit)  # matcher, JIT
        dataframe_path(spark, warm, entries, os.path.join(work, "warm-df"))
        print(f"metadata: {len(entries):,} entries; pool: {args.rows:,} captions; local[1] (one core)")
        ratios, ceilings = [], []
        for r in range(1, args.rounds + 1):
            a = run_dir_path(spark, pool, meta, os.path.join(work, f"run{r}"), args.rows_per_unit)
            b = dataframe_path(spark, pool, entries, os.path.join(work, f"df{r}"))
            c = spark_side_only(spark, pool, os.path.join(work, f"spark{r}"))
            ratios.append(a / b)
            ceilings.append(a / c)
            print(f"round {r}: run-directory match stage {args.rows / a:,.0f} rows/s; DataFrame API "
                  f"{args.rows / b:,.0f} rows/s; DataFrame / run-directory = {a / b:.2f}; Spark's side alone "
                  f"(no matching) {args.rows / c:,.0f} rows/s = {a / c:.2f}x the run-directory stage")
        print(f"DataFrame / run-directory per-core rate, mean of {len(ratios)} rounds: "
              f"{sum(ratios) / len(ratios):.2f} (goal >= 0.8)")
        print(f"Spark's side alone / run-directory, mean: {sum(ceilings) / len(ceilings):.2f} (the DataFrame "
              "path cannot beat it; only overlapping matching with it in time brings the ratio there)")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
