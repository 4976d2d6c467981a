"""Benchmark: scaling of the Spark curate job (issue 4).

Prints, in one run, against a ~500k-entry metadata (benchmarks/data.py):
  * rows/s of the match stage and of match+count+balance in local[1] and local[2], and the ratio
    (target >= 1.8x: the job scales with cores), at N and 4N rows (fixed costs amortise);
  * the Spark job's per-core match rate / the bare matcher's rate in this process on the same
    captions (target >= 0.6: Spark overhead is small), and / the rate of the match stage's own unit
    work (read, uid, validate, match, write) run in a plain loop without Spark — the second ratio
    isolates what Spark itself costs;
  * the driver's peak RSS (Python driver and its JVM) at N and 4N rows (target: flat — nothing
    row-sized reaches the driver).

Each Spark run is a fresh subprocess (its own JVM and master). Usage:
  python benchmarks/curate_scaling.py [--rows 1000000] [--big-rows 4000000] [--entries 500000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.data import CACHE_DIR, bench_captions, bench_metadata  # noqa: E402
from jobs.curate import CurateParams  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
from jobs.spark import get_spark
from jobs.curate import CurateParams, run_match, run_count, run_balance
master, pool, meta, out = sys.argv[1:5]
spark = get_spark(master, conf={"spark.sql.shuffle.partitions": "8"})
jvm_pid = spark.sparkContext._gateway.proc.pid
p = CurateParams(pool=pool, metadata=meta, out=out, t=20000, seed=0, rows_per_unit=int(sys.argv[5]))
times = {}
for name, fn in (("match", run_match), ("count", run_count), ("balance", run_balance)):
    t0 = time.perf_counter(); s = fn(spark, p); times[name] = time.perf_counter() - t0
hwm = 0
with open(f"/proc/{jvm_pid}/status") as f:
    for line in f:
        if line.startswith("VmHWM"):
            hwm = int(line.split()[1]) * 1024
print("RESULT " + json.dumps({"times": times, "rows": s["pool"],
      "py_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "jvm_rss": hwm}))
"""


def write_pool(n: int, path: Path, chunk: int = 250_000) -> Path:
    if (path / "_done").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        caps = bench_captions(m, seed=1000 + i)
        urls = [f"http://example.invalid/{start + j}.jpg" for j in range(m)]
        pq.write_table(pa.table({"url": urls, "text": caps}), path / f"part-{i:05d}.parquet",
                       row_group_size=50_000)
    (path / "_done").write_text("")
    return path


def spark_run(master: str, pool: Path, meta: Path, rows_per_unit: int) -> dict:
    out = tempfile.mkdtemp(prefix="bench-run-")
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-c", CHILD, master, str(pool), str(meta), out, str(rows_per_unit)],
                          capture_output=True, text=True, env=env,
                          cwd=str(Path(__file__).resolve().parent.parent))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            subprocess.run(["rm", "-rf", out])
            return json.loads(line[7:])
    raise RuntimeError(f"spark run failed:\n{proc.stderr[-4000:]}")


def bare_rate(entries: list[str], captions: list[str]) -> tuple[float, str]:
    try:
        from curation.fastmatch import FastMatcher

        m = FastMatcher(entries)
        arr = pa.array(captions, pa.string())
        t0 = time.perf_counter()
        for i in range(0, len(arr), 50_000):
            m.match_arrow(arr.slice(i, 50_000))
        return len(captions) / (time.perf_counter() - t0), "FastMatcher"
    except ImportError:
        from curation.matching import Matcher

        m = Matcher(entries)
        t0 = time.perf_counter()
        m.match_batch(captions)
        return len(captions) / (time.perf_counter() - t0), "Matcher"


def bare_unit_rate(pool: Path, meta: Path, rows_per_unit: int, n_units: int = 4) -> float:
    """The match stage's own per-unit work (read, uid, validate, match, write parts and marker) in a
    plain loop in this process: no Spark. Matcher built before the clock starts."""
    from dataclasses import asdict

    from curation.matching import entries_fingerprint, load_metadata_json
    from jobs.curate import CurateParams, _executor_matcher, _match_unit, plan_units

    out = tempfile.mkdtemp(prefix="bench-bare-")
    p = CurateParams(pool=str(pool), metadata=str(meta), out=out, rows_per_unit=rows_per_unit)
    units, _ = plan_units(p)
    units = [u for u in units if u["rows"] == max(x["rows"] for x in units)][:n_units]
    ctx = {"params": asdict(p), "metadata_fingerprint": entries_fingerprint(load_metadata_json(str(meta))),
           "metadata_local": str(meta), "metadata_name": meta.name}
    _executor_matcher(ctx)
    t0 = time.perf_counter()
    rows = sum(_match_unit(u, ctx)["in"] for u in units)
    rate = rows / (time.perf_counter() - t0)
    subprocess.run(["rm", "-rf", out])
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=4_000_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--rows-per-unit", type=int, default=CurateParams.rows_per_unit,
                    help="rows per Spark task (default: the job's own default); Spark costs ~70 ms per task here")
    args = ap.parse_args()
    entries = bench_metadata(args.entries)
    meta = CACHE_DIR / f"metadata-{len(entries)}.json"
    if not meta.exists():
        meta.write_text(json.dumps(entries))
    pool = write_pool(args.rows, CACHE_DIR / f"pool-{args.rows}")
    big = write_pool(args.big_rows, CACHE_DIR / f"pool-{args.big_rows}")
    print(f"metadata: {len(entries):,} entries; pools: {args.rows:,} and {args.big_rows:,} captions; "
          f"cores: {os.cpu_count()}")

    sample = bench_captions(min(args.rows, 200_000), seed=1000)
    bare, kind = bare_rate(entries, sample)
    print(f"bare {kind}, one core, in-process: {bare:,.0f} captions/s (matching only)")
    unit_rate = bare_unit_rate(pool, meta, args.rows_per_unit)
    print(f"match-stage unit work without Spark, one core: {unit_rate:,.0f} rows/s "
          f"(read + uid + validate + match + write)")

    runs = {}
    for size, path in ((args.rows, pool), (args.big_rows, big)):
        for master in ("local[1]", "local[2]"):
            r = spark_run(master, path, meta, args.rows_per_unit)
            runs[(size, master)] = r
            t = r["times"]
            print(f"{size:>10,} rows {master}: match {r['rows'] / t['match']:,.0f} rows/s, match+count+balance "
                  f"{r['rows'] / sum(t.values()):,.0f} rows/s  (match {t['match']:.1f}s, count {t['count']:.1f}s, "
                  f"balance {t['balance']:.1f}s)")
    for size in (args.rows, args.big_rows):
        r1, r2 = runs[(size, "local[1]")], runs[(size, "local[2]")]
        scale_match = r1["times"]["match"] / r2["times"]["match"]
        scale_all = sum(r1["times"].values()) / sum(r2["times"].values())
        per_core = r1["rows"] / r1["times"]["match"]
        print(f"{size:>10,} rows: scaling local[2]/local[1]: match {scale_match:.2f}x, whole job {scale_all:.2f}x "
              f"(target >= 1.8x)")
        print(f"{size:>10,} rows: Spark per-core match rate (local[1], whole stage incl. start-up) / bare matcher: "
              f"{per_core / bare:.2f} (target >= 0.6); / the same unit work without Spark: {per_core / unit_rate:.2f}")
    ra, rb = runs[(args.rows, "local[2]")], runs[(args.big_rows, "local[2]")]
    print(f"driver peak RSS at {args.rows:,} rows: python {ra['py_rss'] / 2**20:,.0f} MiB, "
          f"JVM {ra['jvm_rss'] / 2**20:,.0f} MiB")
    print(f"driver peak RSS at {args.big_rows:,} rows: python {rb['py_rss'] / 2**20:,.0f} MiB, "
          f"JVM {rb['jvm_rss'] / 2**20:,.0f} MiB")
    print(f"RSS ratio {args.big_rows / args.rows:g}x rows: python {rb['py_rss'] / ra['py_rss']:.2f}x, "
          f"JVM {rb['jvm_rss'] / ra['jvm_rss']:.2f}x (target: ~1.0, flat)")


if __name__ == "__main__":
    main()
