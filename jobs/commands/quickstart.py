"""Offline end-to-end demo on generated data (no network): build a pool, curate it, report.

  metacurate quickstart [--out runs/quickstart] [--rows 20000] [--t 300] [--master local[*]]

Generates a web-like pool (a head of generic captions such as "photo" and "image", a Zipf tail
of concrete entries, noise: file names, empty/null captions, duplicates) and a small metadata
list, then runs match -> count -> balance in Spark and prints what it kept and why the rest was
rejected.
"""
from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="where the pool and the run directory go")
    p.add_argument("--rows", type=int, default=20_000, help="pool size (default 20000)")
    p.add_argument("--t", type=float, default=300, help="balancing threshold for this small pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--master", default="local[*]")
    p.add_argument("--tiny", action="store_true", help="a very small run (CI)")


def run(args) -> int:
    from jobs.commands.curate import print_summary
    from jobs.config import load_config
    from jobs.demo import make_demo_pool
    from jobs.pipeline import run_pipeline

    rows = 3000 if args.tiny else args.rows
    out = os.path.abspath(args.out)
    log.info("quickstart: generating a %s-row pool under %s", f"{rows:,}", out)
    data = make_demo_pool(os.path.join(out, "data"), n_rows=rows, seed=args.seed)
    cfg = load_config(None, [f"run_dir={os.path.join(out, 'run')}", f"pool.path={data['pool']}",
                             f"metadata.path={data['metadata']}", f"balance.t={args.t}",
                             f"balance.seed={args.seed}", f"spark.master={args.master}",
                             "stages=[match, count, balance]"])
    summaries = run_pipeline(cfg)
    print_summary(summaries)
    print(f"run directory: {cfg.run_dir}")
    return 0
