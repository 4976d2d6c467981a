"""Run match -> count -> balance over a pool parquet, configured by flags.

Example:
  metacurate curate --pool pool/ --metadata M/metadata.json --out RUN --t 20000 --seed 0

Writes RUN/match/, RUN/count/entry_counts.parquet, RUN/balance/ (kept rows with p_keep),
RUN/balance/summary.json and RUN/rejects/<stage>/. Completed stages are skipped on re-run; an
interrupted stage resumes where it stopped. Use `metacurate run --config run.yaml` for the full
pipeline from a config file.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", required=True, help="pool parquet file or directory (columns url, text[, uid])")
    p.add_argument("--metadata", required=True, help="metadata.json: a JSON list of entry strings")
    p.add_argument("--out", required=True, help="run directory (local path or s3://bucket/prefix)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--t", type=float, default=None, help="balancing threshold t (default 20000)")
    g.add_argument("--target-size", type=int, default=None, help="solve t so that ~this many rows are kept")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic draw (default 0)")
    p.add_argument("--master", default=None, help="Spark master: local[*] (default), local[N], spark://host:port")
    p.add_argument("--max-text-bytes", type=int, default=65_536, help="longer captions are rejected")
    p.add_argument("--on-bad-file", choices=["fail", "skip"], default="fail",
                   help="unreadable pool parquet: fail (default) or skip it with a reject record")
    p.add_argument("--allow-duplicate-uids", action="store_true",
                   help="skip the duplicate-uid check (by default later repeats of a uid are rejected as "
                        "duplicate_uid; the check costs one shuffle of the uids)")


def run(args) -> int:
    from jobs.curate import CurateParams, run_curate
    from jobs.spark import get_spark
    from jobs.storage import storage_options_from_env

    t = args.t if (args.t is not None or args.target_size is not None) else 20_000.0
    params = CurateParams(pool=args.pool, metadata=args.metadata, out=args.out, t=t,
                          target_size=args.target_size, seed=args.seed, max_text_bytes=args.max_text_bytes,
                          on_bad_file=args.on_bad_file,
                          check_duplicate_uids=not args.allow_duplicate_uids, storage_options=storage_options_from_env())
    params.validate()
    params.check_inputs()
    spark = get_spark(args.master)
    summaries = run_curate(spark, params)
    print_summary(summaries)
    return 0


def print_summary(summaries: dict) -> None:
    m, b = summaries.get("match"), summaries.get("balance")
    if m:
        print(f"match:   {m['in']:>10,} rows in, {m['out']:>10,} matched, rejected: "
              + (", ".join(f"{k}={v:,}" for k, v in m["rejected"].items()) or "none"))
    c = summaries.get("count")
    if c:
        print(f"count:   {c['entries_matched']:>10,} of {c['entries_total']:,} entries matched at least once")
    if b and b.get("mode") == "random":
        print(f"balance: random subset (control arm) seed={b['seed']}: kept {b['kept']:,} of {b['matched']:,} "
              f"matched rows (target {b['target_size']:,}, expected {b['expected_kept']:,.1f})")
    elif b:
        print(f"balance: t={b['t']:g} seed={b['seed']}: kept {b['kept']:,} of {b['matched']:,} matched rows "
              f"(expected {b['expected_kept']:,.1f}); head entries {b['head_entries']:,}, "
              f"tail entries {b['tail_entries']:,}")
