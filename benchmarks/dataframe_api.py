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

The per-core rate is rows per CPU-second of the whole process tree (driver, JVM, Python workers,
from /proc): in ``local[1]`` the DataFrame path's JVM does its I/O on a second core while the
Python worker matches, so its wall-clock rate overstates what it gets per core. Prints both, the
ratio DataFrame / run-directory of each (goal >= 0.8 per core), and the CPU cost of Spark's side
alone (the DataFrame path with placeholder columns instead of matching: parquet read, Arrow to and
from the Python worker, parquet write).

The JVM runs with its own defaults (``--jvm cluster``), as on cluster executors and in the session
a DataFrame user brings. ``--jvm local`` keeps the C1-only JIT and serial GC that ``metacurate``
gives its own local sessions (there the JVM only schedules tasks): the DataFrame path, whose I/O
runs in the JVM, is then much slower, the run-directory path barely changes. Usage:
  python benchmarks/dataframe_api.py [--rows 400000] [--entries 500000] [--rounds 2] [--jvm cluster|local]
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


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system, reaped children included) of this process and every descendant:
    the driver, its JVM, the Python workers. Linux /proc only."""
    from collections import defaultdict

    cpu, children = {}, defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        children[int(rest[1])].append(int(d))
        cpu[int(d)] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    total, stack = 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0)
        stack.extend(children[pid])
    return total / os.sysconf("SC_CLK_TCK")


class Timed:
    """Wall and whole-tree CPU seconds of a with-block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), tree_cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, tree_cpu_seconds() - self.cpu


def run_dir_path(spark, pool: Path, meta: Path, out: str, rows_per_unit: int) -> Timed:
    from jobs.config import load_config
    from jobs.stages import match, metadata, run_stages

    cfg = load_config(None, values={"pool.path": str(pool), "metadata.path": str(meta), "run_dir": out,
                                    "pool.rows_per_unit": rows_per_unit, "pool.check_duplicate_uids": False})
    run_stages(cfg, [metadata.STAGE.name], spark=spark)
    with Timed() as t:
        run_stages(cfg, [match.STAGE.name], spark=spark, add_upstream=False)
    return t


def dataframe_path(spark, pool: Path, entries: list[str], out: str) -> Timed:
    from jobs.dataframe import match

    with Timed() as t:
        match(spark.read.parquet(str(pool)), entries).write.mode("overwrite").parquet(out)
    return t


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


def spark_side_only(spark, pool: Path, out: str) -> Timed:
    """read parquet -> Arrow -> a Python worker that adds placeholder uid/entry_ids -> rows ->
    write parquet: the DataFrame path with the matching taken out."""
    from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

    df = spark.read.parquet(str(pool))
    schema = StructType(list(df.schema.fields) + [StructField("uid", StringType()),
                                                  StructField("entry_ids", ArrayType(IntegerType()))])
    with Timed() as t:
        df.mapInArrow(_placeholder_ids, schema).write.mode("overwrite").parquet(out)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows-per-unit", type=int, default=100_000, help="the match stage's rows per task")
    ap.add_argument("--jvm", choices=("cluster", "local"), default="cluster",
                    help="cluster (default): the JVM's own defaults, as on cluster executors and in a session the "
                         "user made; local: the C1-only JIT and serial GC metacurate gives its local[*] sessions, "
                         "where the JVM only schedules tasks (the DataFrame path's I/O runs in the JVM, so it "
                         "pays for C1)")
    args = ap.parse_args()

    from benchmarks.data import CACHE_DIR, bench_metadata, write_pool
    from jobs.spark import get_spark

    entries = bench_metadata(args.entries)
    meta = CACHE_DIR / f"metadata-{len(entries)}.json"
    if not meta.exists():
        meta.write_text(json.dumps(entries))
    pool = write_pool(args.rows, CACHE_DIR / f"dfpool-{args.rows}", chunk=100_000, seed=2000)
    warm = write_pool(20_000, CACHE_DIR / "dfpool-20000", chunk=100_000, seed=2000)
    # the DataFrame path reads as many partitions as the run-directory path has units
    conf = {"spark.sql.files.maxPartitionBytes": str(16 << 20)}
    if args.jvm == "cluster":
        # the JVM as cluster executors (and a user's own session) run it: C2 JIT, default collector
        conf["spark.driver.extraJavaOptions"] = ""
    spark = get_spark("local[1]", "metacurate-bench-dataframe", conf=conf)
    work = tempfile.mkdtemp(prefix="bench-df-")
    try:
        run_dir_path(spark, warm, meta, os.path.join(work, "warm-run"), args.rows_per_unit)  # matcher, JIT
        dataframe_path(spark, warm, entries, os.path.join(work, "warm-df"))
        print(f"metadata: {len(entries):,} entries; pool: {args.rows:,} captions; local[1] (one core); "
              f"JVM options: {args.jvm}")
        walls, cpus, sides = [], [], []
        n = args.rows
        for r in range(1, args.rounds + 1):
            a = run_dir_path(spark, pool, meta, os.path.join(work, f"run{r}"), args.rows_per_unit)
            b = dataframe_path(spark, pool, entries, os.path.join(work, f"df{r}"))
            c = spark_side_only(spark, pool, os.path.join(work, f"spark{r}"))
            walls.append(a.wall / b.wall)
            cpus.append(a.cpu / b.cpu)
            sides.append(a.cpu / c.cpu)
            print(f"round {r}: run-directory stage {n / a.wall:,.0f} rows/s wall, {n / a.cpu:,.0f} rows per CPU-s; "
                  f"DataFrame API {n / b.wall:,.0f} rows/s wall, {n / b.cpu:,.0f} rows per CPU-s; "
                  f"Spark's side alone {n / c.cpu:,.0f} rows per CPU-s")
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"DataFrame / run-directory, rows per CPU-second (per-core rate), mean of {len(cpus)} rounds: "
              f"{mean(cpus):.2f} (goal >= 0.8); rounds: {', '.join(f'{x:.2f}' for x in cpus)}")
        print(f"DataFrame / run-directory, wall-clock rate in local[1] (the JVM's I/O overlaps the Python worker "
              f"on a second core): {mean(walls):.2f}")
        print(f"Spark's side alone / run-directory, rows per CPU-second: {mean(sides):.2f} (parquet, Arrow and rows "
              "in the JVM without any matching)")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
