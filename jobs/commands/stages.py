"""Run pipeline stages from a config file.

  metacurate run --config run.yaml [--set balance.t=5000 ...] [--master spark://host:7077]
  metacurate match --config run.yaml          (one stage; likewise count, balance, download, ...)

The config is YAML (see the README's config reference); `--set key=value` overrides any key
(values parsed as YAML). Stages whose `_SUCCESS` fingerprint matches the config and inputs are
skipped; an interrupted stage resumes without duplicates or holes.
"""
from __future__ import annotations

import argparse
import json

from jobs.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="run configuration (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set balance.t=5000 (repeatable)")
    p.add_argument("--master", default=None, help="Spark master (overrides spark.master)")


def run(args) -> int:
    from jobs import storage
    from jobs.commands.curate import print_summary
    from jobs.pipeline import config_snapshot, run_pipeline

    overrides = list(args.overrides)
    if args.master:
        overrides.append(f"spark.master={args.master}")
    cfg = load_config(args.config, overrides)
    storage.write_json_atomic(storage.join(cfg.run_dir, "config.json"), config_snapshot(cfg),
                              cfg.storage.options())
    stages = None if args.command == "run" else [args.command]
    summaries = run_pipeline(cfg, stages)
    print_summary(summaries)
    for name, s in summaries.items():
        if name not in ("match", "count", "balance"):
            print(f"{name + ':':<8} in={s.get('in'):,} out={s.get('out'):,} rejected={json.dumps(s.get('rejected'))}")
    return 0
