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


def add_arguments_for(name: str, p: argparse.ArgumentParser) -> None:
    add_arguments(p)
    if name == "download":
        p.add_argument("--retry-failed", metavar="RUN", default=None,
                       help="re-try only the samples that failed in RUN's download and merge them in "
                            "(uses RUN/config.json unless --config is given)")


def run(args) -> int:
    from jobs import storage
    from jobs.commands.curate import print_summary
    from jobs.pipeline import config_snapshot, run_pipeline

    overrides = list(args.overrides)
    if args.master:
        overrides.append(f"spark.master={args.master}")
    retry_run = getattr(args, "retry_failed", None)
    if retry_run:
        return _retry_failed(retry_run, args.config, overrides)
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


def _retry_failed(run_dir: str, config: str | None, overrides: list[str]) -> int:
    from jobs import image_stages, storage
    from jobs.pipeline import curate_params
    from jobs.spark import get_spark

    if config:
        cfg = load_config(config, overrides + [f"run_dir={run_dir}"])
    else:
        snap = storage.read_json(storage.join(run_dir, "config.json"), storage.storage_options_from_env())
        snap["storage"] = {k: (None if v == "***" else v) for k, v in snap.get("storage", {}).items()}
        cfg = load_config(None, overrides, base=snap)
    spark = get_spark(cfg.spark.master, conf=cfg.spark.conf)
    s = image_stages.run(spark, cfg, curate_params(cfg), "download", retry_failed=True)
    print(f"download (retry): in={s['in']:,} out={s['out']:,} rejected={json.dumps(s['rejected'])}")
    print("re-run `metacurate run` to redo dedup and shard with the new samples")
    return 0
