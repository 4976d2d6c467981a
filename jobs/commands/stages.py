"""Run pipeline stages from a config file.

  metacurate run --config run.yaml [--set balance.t=5000 ...] [--master spark://host:7077]
  metacurate match --config run.yaml          (one stage; likewise every stage of `metacurate --help`)

The config is YAML (see the README's configuration reference); `--set key=value` overrides any key
(values parsed as YAML). A stage whose `_SUCCESS` fingerprint matches the config and its inputs is
skipped; an interrupted stage resumes without duplicates or holes. `run` also runs the incomplete
upstream stages the configured ones need; a single stage needs its upstream complete.
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
    actions = _actions(name)
    if actions is not None:
        actions.add_actions(p)


def _actions(name: str):
    """The stage's own CLI module, if it has one (``Stage.cli_actions``)."""
    if name == "run":
        return None
    import importlib

    from jobs.stages import get

    module = get(name).cli_actions
    return importlib.import_module(module) if module else None


def config_from(args) -> object:
    overrides = list(args.overrides)
    if args.master:
        overrides.append(f"spark.master={args.master}")
    return load_config(args.config, overrides)


def run(args) -> int:
    actions = _actions(args.command)
    if actions is not None:
        rc = actions.run_action(args)
        if rc is not None:
            return rc
    cfg = config_from(args)
    summaries = run_and_record(cfg, None if args.command == "run" else [args.command],
                               add_upstream=args.command == "run")
    print_summaries(summaries)
    return 0


def run_and_record(cfg, stages: list[str] | None, *, add_upstream: bool = True, spark=None) -> dict:
    """Write ``RUN/config.json`` (secrets masked), then run the stages."""
    from jobs.config import run_dir_of, snapshot
    from jobs.stages import run_stages

    run = run_dir_of(cfg)
    run.storage.write_json(run.path("config.json"), snapshot(cfg))
    return run_stages(cfg, stages, add_upstream=add_upstream, spark=spark)


def print_summaries(summaries: dict) -> None:
    """One line per stage: rows in, out and rejected by reason, plus the balance figures."""
    for name, s in summaries.items():
        rejected = ", ".join(f"{k}={v:,}" for k, v in s.get("rejected", {}).items()) or "none"
        print(f"{name + ':':<10} in={s.get('in', 0):,} out={s.get('out', 0):,} rejected: {rejected}")
        if "t" in s and "kept" in s:
            if s.get("mode") == "random":
                print(f"{name}: random subset (control arm) seed={s['seed']}: kept {s['kept']:,} of "
                      f"{s['matched']:,} matched rows (target {s['target_size']:,})")
            else:
                print(f"{name}: t={s['t']:g} seed={s['seed']}: kept {s['kept']:,} of {s['matched']:,} matched "
                      f"rows (expected {s['expected_kept']:,.1f}); head entries {s['head_entries']:,}, "
                      f"tail entries {s['tail_entries']:,}")


def print_json(s: dict) -> None:
    print(json.dumps(s, indent=1, sort_keys=True))
