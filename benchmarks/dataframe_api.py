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
ratio DataFrame / run-directory of each (goal >= 0.8 per core), and where each path's CPU goes,
per million rows: the JVM by thread (task threads: parquet read and write, rows to and from Arrow;
the JIT compiler; GC), the Python workers, the driver. Three more queries place the cost:

* the DataFrame path into Spark's ``noop`` sink: the same query without the parquet write of the
  result (the run-directory stage still writes its parts, with pyarrow, inside its workers);
* the DataFrame path written with ``jobs.dataframe.parquet_options()`` (v2 data pages, no
  dictionaries for the nearly unique url, text, uid and entry_ids columns: the writer options the
  README and the example use), with its file size against the default write;
* "Spark's side alone": placeholder columns instead of matching (parquet read, Arrow to and from
  a Python worker, parquet write).

Rounds come after one untimed full-size round of every query: a cluster executor runs for hours
and compiles Spark's parquet and Arrow code once, so that JIT time is not a per-row cost. Each new
query still has some (its generated classes); the "JIT compiler" part shows it, and it shrinks
per row as ``--rows`` grows.

The JVM runs with its own defaults (``--jvm cluster``), as on cluster executors and in the session
a DataFrame user brings. ``--jvm local`` keeps the C1-only JIT and serial GC that ``metacurate``
gives its own local sessions (there the JVM only schedules tasks): the DataFrame path, whose I/O
runs in the JVM, is then much slower, the run-directory path barely changes. Usage:
  python benchmarks/dataframe_api.py [--rows 1000000] [--entries 500000] [--rounds 3] [--jvm cluster|local]
                                     [--conf KEY=VALUE ...]
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


#: CPU accounts a run's seconds go to. The JVM's are split by thread (names as /proc shows them,
#: cut to 15 characters); a JVM thread that has exited counts under "JVM, other".
PARTS = ("JVM, task threads", "JVM, JIT compiler", "JVM, GC", "JVM, other", "Python workers", "driver (Python)")


def _jvm_part(thread: str) -> str:
    if thread.startswith("Executor task"):
        return "JVM, task threads"  # parquet read/write, rows <-> Arrow, the Python runner
    if "CompilerThre" in thread:
        return "JVM, JIT compiler"
    if thread.startswith(("GC Thread", "G1 ", "VM Thread")):
        return "JVM, GC"
    return "JVM, other"


def cpu_by_part() -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) of this process and every descendant,
    by part (``PARTS``): the driver, its JVM by thread, the Python workers. Linux /proc only."""
    from collections import defaultdict

    tick = os.sysconf("SC_CLK_TCK")

    def cpu(stat: str, children: bool = True) -> float:
        f = stat[stat.rindex(")") + 2:].split()
        return sum(int(x) for x in f[11:15 if children else 13]) / tick

    stats, kids, is_java = {}, defaultdict(list), {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            exe = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        pid = int(d)
        stats[pid], is_java[pid] = stat, exe.endswith(b"java")
        kids[int(stat[stat.rindex(")") + 2:].split()[1])].append(pid)
    out = dict.fromkeys(PARTS, 0.0)
    me = os.getpid()
    stack = [(me, False)]
    while stack:
        pid, under_jvm = stack.pop()
        if pid not in stats:
            continue
        if pid == me:
            out["driver (Python)"] += cpu(stats[pid], children=False)
        elif is_java[pid]:
            total, seen = cpu(stats[pid], children=False), 0.0
            for t in os.listdir(f"/proc/{pid}/task"):
                try:
                    st = Path(f"/proc/{pid}/task/{t}/stat").read_text()
                except OSError:
                    continue
                c = cpu(st, children=False)
                out[_jvm_part(st[st.index("(") + 1:st.rindex(")")])] += c
                seen += c
            out["JVM, other"] += max(0.0, total - seen)
        else:
            out["Python workers" if under_jvm else "driver (Python)"] += cpu(stats[pid], children=False)
        # reaped children of this process (e.g. Python workers that have exited)
        f = stats[pid][stats[pid].rindex(")") + 2:].split()
        dead = (int(f[13]) + int(f[14])) / tick
        out["Python workers" if (is_java[pid] or under_jvm) else "driver (Python)"] += dead
        stack.extend((k, under_jvm or is_java[pid]) for k in kids[pid])
    return out


class Timed:
    """Wall seconds and CPU seconds by part (``cpu_by_part``) of a with-block."""

    def __enter__(self):
        self.wall, self._cpu = time.perf_counter(), cpu_by_part()
        return self

    def __exit__(self, *exc):
        after = cpu_by_part()
        self.wall = time.perf_counter() - self.wall
        self.parts = {k: after[k] - self._cpu[k] for k in PARTS}
        self.cpu = sum(self.parts.values())


def run_dir_path(spark, pool: Path, meta: Path, out: str, rows_per_unit: int) -> Timed:
    from jobs.config import load_config
    from jobs.stages import match, metadata, run_stages

    cfg = load_config(None, values={"pool.path": str(pool), "metadata.path": str(meta), "run_dir": out,
                                    "pool.rows_per_unit": rows_per_unit, "pool.check_duplicate_uids": False})
    run_stages(cfg, [metadata.STAGE.name], spark=spark)
    with Timed() as t:
        run_stages(cfg, [match.STAGE.name], spark=spark, add_upstream=False)
    return t


def dataframe_path(spark, pool: Path, entries: list[str], out: str, sink: str = "parquet",
                   options: dict[str, str] | None = None) -> Timed:
    """read parquet -> ``jobs.dataframe.match`` -> write ``sink`` (``noop``: Spark's sink that
    runs the whole query and writes nothing, to show what the parquet write costs) with the
    writer's ``options``."""
    from jobs.dataframe import match

    with Timed() as t:
        match(spark.read.parquet(str(pool)), entries).write.mode("overwrite").options(**(options or {})) \
            .format(sink).save(out)
    if sink == "parquet":
        t.bytes = sum(f.stat().st_size for f in Path(out).glob("*.parquet"))
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


def _per_million(parts: list[dict[str, float]], rows: int) -> str:
    mean = {k: sum(p[k] for p in parts) / len(parts) * 1e6 / rows for k in PARTS}
    return ", ".join(f"{k} {v:.2f}" for k, v in mean.items() if v >= 0.005) + f"; total {sum(mean.values()):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, after one untimed warm-up round")
    ap.add_argument("--rows-per-unit", type=int, default=100_000, help="the match stage's rows per task")
    ap.add_argument("--jvm", choices=("cluster", "local"), default="cluster",
                    help="cluster (default): the JVM's own defaults, as on cluster executors and in a session the "
                         "user made; local: the C1-only JIT and serial GC metacurate gives its local[*] sessions, "
                         "where the JVM only schedules tasks (the DataFrame path's I/O runs in the JVM, so it "
                         "pays for C1)")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                    help="a Spark setting for the session, e.g. spark.sql.execution.arrow.maxBytesPerBatch="
                         "2147483647 (repeatable)")
    args = ap.parse_args()

    from benchmarks.data import CACHE_DIR, bench_metadata, write_pool
    from jobs.dataframe import parquet_options
    from jobs.spark import get_spark

    entries = bench_metadata(args.entries)
    meta = CACHE_DIR / f"metadata-{len(entries)}.json"
    if not meta.exists():
        meta.write_text(json.dumps(entries))
    pool = write_pool(args.rows, CACHE_DIR / f"dfpool-{args.rows}", chunk=100_000, seed=2000)
    # the DataFrame path reads as many partitions as the run-directory path has units
    conf = {"spark.sql.files.maxPartitionBytes": str(16 << 20)}
    if args.jvm == "cluster":
        # the JVM as cluster executors (and a user's own session) run it: C2 JIT, default collector
        conf["spark.driver.extraJavaOptions"] = ""
    for kv in args.conf:
        k, _, v = kv.partition("=")
        conf[k] = v
    spark = get_spark("local[1]", "metacurate-bench-dataframe", conf=conf)
    work = tempfile.mkdtemp(prefix="bench-df-")
    n = args.rows
    paths = {
        "run-directory stage": lambda r: run_dir_path(spark, pool, meta, os.path.join(work, f"run{r}"),
                                                      args.rows_per_unit),
        "DataFrame API": lambda r: dataframe_path(spark, pool, entries, os.path.join(work, f"df{r}")),
        "DataFrame API, noop sink": lambda r: dataframe_path(spark, pool, entries, "", sink="noop"),
        "DataFrame API, parquet_options()": lambda r: dataframe_path(
            spark, pool, entries, os.path.join(work, f"dfpo{r}"), options=parquet_options()),
        "Spark's side alone": lambda r: spark_side_only(spark, pool, os.path.join(work, f"spark{r}")),
    }
    try:
        # One untimed round at full size first: a cluster executor runs for hours, so the JIT
        # compiling Spark's parquet and Arrow code (a few CPU-seconds) is paid once per executor,
        # not per million rows; a short warm-up would bill most of it to the first timed round.
        for name, run in paths.items():
            run(0)
        print(f"metadata: {len(entries):,} entries; pool: {n:,} captions; local[1] (one core); "
              f"JVM options: {args.jvm}; {args.rounds} timed rounds after 1 untimed")
        timed: dict[str, list[Timed]] = {name: [] for name in paths}
        for r in range(1, args.rounds + 1):
            line = []
            for name, run in paths.items():
                t = run(r)
                timed[name].append(t)
                line.append(f"{name} {n / t.cpu:,.0f} rows per CPU-s ({n / t.wall:,.0f}/s wall)")
            print(f"round {r}: " + "; ".join(line), flush=True)
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rd, df = timed["run-directory stage"], timed["DataFrame API"]
        cpus = [a.cpu / b.cpu for a, b in zip(rd, df)]
        print("\nCPU-seconds per million rows, by part (mean of the timed rounds):")
        for name, ts in timed.items():
            print(f"  {name}: {_per_million([t.parts for t in ts], n)}")
        print(f"\nDataFrame / run-directory, rows per CPU-second (per-core rate): {mean(cpus):.2f} (goal >= 0.8); "
              f"rounds: {', '.join(f'{x:.2f}' for x in cpus)}")
        print(f"DataFrame / run-directory, wall-clock rate in local[1] (the JVM's I/O overlaps the Python worker "
              f"on a second core): {mean([a.wall / b.wall for a, b in zip(rd, df)]):.2f}")
        noop = timed["DataFrame API, noop sink"]
        print(f"DataFrame (noop sink) / run-directory, rows per CPU-second: "
              f"{mean([a.cpu / b.cpu for a, b in zip(rd, noop)]):.2f} (the same query without Spark's parquet "
              f"write of the result; the run-directory stage still writes its parts)")
        po = timed["DataFrame API, parquet_options()"]
        ratios = [a.cpu / b.cpu for a, b in zip(rd, po)]
        print(f"DataFrame written with jobs.dataframe.parquet_options() (v2 pages, no dictionaries for url, text, "
              f"uid, entry_ids) / run-directory, rows per CPU-second: {mean(ratios):.2f} (goal >= 0.8); rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; its files "
              f"{mean([b.bytes / a.bytes for a, b in zip(df, po)]) - 1:+.1%} in size against the default write")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
