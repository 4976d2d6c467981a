"""Measure core-hours per stage per million pool rows and scale them to MetaCLIP-sized pools.

Why: a cluster budget needs a number per stage, measured on the same code the cluster runs. This
script runs the real stages (``jobs.stages``, the code path of ``metacurate run``) in ``local[N]``
on a generated pool, times each stage that works on pool rows, converts wall seconds x N cores into
core-hours per million pool rows and scales them to 1.6B rows (MetaCLIP's pool) and 10B rows. The
stages are the registry's: those that need the network or real images (download, dedup, shard)
declare a ``sizing_estimate`` (published img2dataset throughput, the pHash cost measured on the
development machine) and their rows are labelled ESTIMATE.

  python infra/measure_sizing.py                          # 200k captions, 500k entries, local[1]
  python infra/measure_sizing.py --rows 50000 200000      # two sizes: also prints the marginal cost
  python infra/measure_sizing.py --demo --rows 20000      # small demo pool (no wordfreq needed)
  python infra/measure_sizing.py --pool sample/ --metadata metadata.json   # a sample of your pool

A first uncounted warm-up run builds the matcher in the (reused) Python worker and warms the JVM,
as the first task on every executor does once; each size then runs ``--repeat`` times and the best
time per stage counts. Figures still include each stage's fixed Spark job overhead, which a
billion-row run amortises, so they are upper bounds; with two or more ``--rows`` values the slope
between sizes is printed too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

log = logging.getLogger("measure_sizing")

SCALES = {"1.6B (MetaCLIP pool)": 1.6e9, "10B": 1.0e10}

# Image stages touch only the kept rows: MetaCLIP kept 400M of its 1.6B pool at t=20k (25%).
KEPT_FRACTION = 0.25


def measured_stages() -> list[str]:
    """Stages measured here: those that work on pool rows (they have upstream stages) and declare
    no estimate, in pipeline order."""
    from jobs.stages import STAGES

    return [s.name for s in STAGES if s.upstream and s.sizing_estimate is None]


def source_stages() -> list[str]:
    """Stages with no upstream (the entry list): run before the measured ones, not timed."""
    from jobs.stages import STAGES

    return [s.name for s in STAGES if not s.upstream]


def estimated_stages() -> list[tuple[str, float, str]]:
    from jobs.stages import STAGES

    return [(s.name, *s.sizing_estimate) for s in STAGES if s.sizing_estimate is not None]


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user + system, incl. reaped children) of this process and all its descendants.

    Linux /proc only; the JVM and the Python workers are descendants of the driver in local mode,
    so this counts the work wherever it ran, independent of how busy the shared host was.
    """
    root = root or os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    parent, times = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parent[int(d)] = int(fields[1])
        times[int(d)] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    total, stack = 0.0, [root]
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def _cores(master: str) -> int:
    if master.startswith("local["):
        inner = master[len("local["):-1].split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    if master == "local":
        return 1
    raise SystemExit("measure_sizing runs in local[N]; on a cluster multiply wall time by executor cores")


def make_pool(work: Path, rows: int, entries: int, n_files: int, demo: bool) -> dict:
    """Write a pool (``work/pool/*.parquet``) and ``work/metadata/metadata.json``; return paths."""
    if demo:
        from jobs.demo import make_demo_pool

        return make_demo_pool(str(work), n_rows=rows, n_files=n_files)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.data import bench_captions, bench_metadata

    log.info("generating %d-entry metadata and %d captions (cached under /tmp/metacurate-bench)", entries, rows)
    meta = bench_metadata(entries)
    caps = bench_captions(rows)
    (work / "metadata").mkdir(parents=True, exist_ok=True)
    meta_path = work / "metadata" / "metadata.json"
    meta_path.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    pool = work / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    per = (rows + n_files - 1) // n_files
    for f in range(n_files):
        lo, hi = f * per, min(rows, (f + 1) * per)
        pq.write_table(pa.table({"url": [f"http://img.invalid/{i:09d}.jpg" for i in range(lo, hi)],
                                 "text": caps[lo:hi]}), pool / f"part-{f:05d}.parquet",
                       row_group_size=max(1, min(50_000, hi - lo)))
    return {"pool": str(pool), "metadata": str(meta_path)}


def measure(spark, work: Path, rows: int, args, repeat: int = 1) -> dict:
    """Run match, count, balance on a pool of ``rows`` rows; best wall seconds per stage over
    ``repeat`` runs, each into a fresh run directory (the machine is shared and noisy)."""
    from jobs.config import load_config
    from jobs.stages import run_stages

    if args.pool:  # your own pool sample, measured as it is
        paths = {"pool": args.pool, "metadata": args.metadata}
    else:
        paths = make_pool(work / f"n{rows}", rows, args.entries, args.files, args.demo)
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for rep in range(repeat):
        out = work / f"n{rows}" / f"run{rep}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(None, values={"pool.path": paths["pool"], "metadata.path": paths["metadata"],
                                        "run_dir": str(out), "balance.t": args.t,
                                        "pool.rows_per_unit": args.rows_per_unit})
        summaries = run_stages(cfg, source_stages(), spark=spark)  # not measured: they do not see pool rows
        for stage in measured_stages():
            c0, t0 = tree_cpu_seconds(), time.perf_counter()
            summaries[stage] = run_stages(cfg, [stage], spark=spark, add_upstream=False)[stage]
            secs, cpu = time.perf_counter() - t0, tree_cpu_seconds() - c0
            best[stage] = min(best.get(stage, float("inf")), secs)
            best_cpu[stage] = min(best_cpu.get(stage, float("inf")), cpu)
            log.info("rows=%d run %d/%d %s: %.1f s wall, %.1f s CPU (in=%s out=%s)", rows, rep + 1, repeat,
                     stage, secs, cpu, summaries[stage]["in"], summaries[stage]["out"])
        shutil.rmtree(out, ignore_errors=True)
    stages = measured_stages()
    return {"rows": rows, "seconds": best, "cpu_seconds": best_cpu, "matched": summaries[stages[0]]["out"],
            "kept": summaries[stages[-1]]["out"]}


def core_hours_per_m(seconds: float, cores: int, rows: int) -> float:
    """Wall seconds on ``cores`` reserved cores -> core-hours per million rows."""
    return seconds * cores / 3600.0 / (rows / 1e6)


def table(results: list[dict], cores: int) -> tuple[str, dict]:
    """Markdown table (measured + estimated rows) and the per-stage core-hours/M used for it.

    The basis is the largest measured size: wall seconds x reserved cores, per-row cost *including*
    each stage's fixed Spark job overhead, so an upper bound; where CPU seconds were recorded, the
    CPU time of the whole process tree is shown too (what the work costs on an idle core). With two or more sizes a marginal (slope) figure is added where
    it is meaningful (positive): it removes the fixed part, but on a loaded machine it is noisy.
    """
    last = results[-1]
    stages = [s for s in measured_stages() if s in last["seconds"]]
    per_m = {s: core_hours_per_m(last["seconds"][s], cores, last["rows"]) for s in stages}
    marginal = {}
    if len(results) >= 2:
        a, b = results[0], results[-1]
        drows = b["rows"] - a["rows"]
        for s in stages:
            d = b["seconds"][s] - a["seconds"][s]
            marginal[s] = core_hours_per_m(d, cores, drows) if d > 0 else None
    head = ("| stage | basis | core-h per 1M pool rows | "
            + " | ".join(f"core-h at {k}" for k in SCALES) + " |")
    lines = [head, "|" + "---|" * (3 + len(SCALES))]

    def row(stage: str, basis: str, rate: float, fmt: str = ".4f") -> str:
        return (f"| {stage} | {basis} | {rate:{fmt}} | "
                + " | ".join(f"{rate * n / 1e6:,.0f}" for n in SCALES.values()) + " |")

    cpu = last.get("cpu_seconds")
    for s in stages:
        lines.append(row(s, f"measured, {last['rows']:,} rows, {cores} core(s)", per_m[s]))
        if cpu:  # CPU actually used (driver + JVM + Python workers): less sensitive to a busy host
            lines.append(row(s, f"CPU time, {last['rows']:,} rows", core_hours_per_m(cpu[s], 1, last["rows"])))
        if marginal.get(s) is not None:
            lines.append(row(s, f"marginal {results[0]['rows']:,}->{last['rows']:,} rows", marginal[s]))
    total = sum(per_m.values())
    lines.append(row("+".join(stages), "measured (sum)", total))
    for s, v, basis in estimated_stages():
        lines.append(row(s, f"ESTIMATE ({v} core-h per 1M kept images, {KEPT_FRACTION:.0%} kept; {basis})",
                         v * KEPT_FRACTION, ".3f"))  # image stages run on kept rows only
    return "\n".join(lines), per_m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000], help="pool sizes to measure (ascending)")
    ap.add_argument("--entries", type=int, default=500_000, help="metadata entries (benchmarks.data)")
    ap.add_argument("--files", type=int, default=4, help="pool parquet files")
    ap.add_argument("--rows-per-unit", type=int, default=250_000, help="pool.rows_per_unit")
    ap.add_argument("--t", type=float, default=20_000.0, help="balancing threshold")
    ap.add_argument("--master", default="local[1]")
    ap.add_argument("--repeat", type=int, default=2, help="runs per size; the best time per stage counts")
    ap.add_argument("--warmup-rows", type=int, default=5_000,
                    help="a first, uncounted run: builds the matcher in the Python worker, warms the JVM")
    ap.add_argument("--demo", action="store_true", help="use jobs.demo's small pool instead of benchmarks.data")
    ap.add_argument("--pool", default=None, help="measure this pool (parquet file/dir, local or s3://) instead")
    ap.add_argument("--metadata", default=None, help="with --pool: its metadata.json")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir, removed after)")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cores = _cores(args.master)
    if args.pool:
        if not args.metadata:
            ap.error("--pool needs --metadata")
        from curation.storage import Storage
        from jobs.config import load_config
        from curation.pool import plan_units

        pool = load_config(None, values={"run_dir": str(args.work or "."), "pool.path": args.pool,
                                         "pool.rows_per_unit": args.rows_per_unit}).pool
        units, _ = plan_units(pool, Storage.from_env())
        args.rows = [sum(u["rows"] for u in units)]  # one size: the whole given pool
        args.warmup_rows = 0  # the best of --repeat runs is the warm one (matcher already built)
    work = Path(args.work or tempfile.mkdtemp(prefix="metacurate-sizing-"))
    from jobs.spark import get_spark

    load_before = os.getloadavg()
    spark = get_spark(args.master, "metacurate-sizing", conf=dict(c.split("=", 1) for c in args.conf))
    try:
        warm = measure(spark, work, args.warmup_rows, args) if args.warmup_rows > 0 else None
        results = [measure(spark, work, n, args, args.repeat) for n in sorted(args.rows)]
    finally:
        spark.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    md, per_m = table(results, cores)
    data = "jobs.demo pool + its small metadata" if args.demo else f"benchmarks.data: {args.entries:,} entries"
    print(f"\nmaster={args.master} ({cores} core(s)); {data}; host load average before/after: "
          f"{load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} CPUs")
    if warm:
        print(f"warm-up ({warm['rows']:,} rows, not counted; match includes building the matcher once per "
              "Python worker): " + ", ".join(f"{s}={warm['seconds'][s]:.1f}s" for s in measured_stages()))
    for r in results:
        print(f"rows={r['rows']:,} matched={r['matched']:,} kept={r['kept']:,} wall/CPU seconds: "
              + ", ".join(f"{s}={r['seconds'][s]:.1f}/{r['cpu_seconds'][s]:.1f}" for s in measured_stages()))
    print()
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"master": args.master, "cores": cores, "results": results,
                                               "warmup": warm, "core_h_per_m": per_m, "load": [load_before, load_after]},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
