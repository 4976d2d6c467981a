"""The download stage's own action: download again what failed.

  metacurate download --config run.yaml                  (the stage of a run)
  metacurate download --retry-failed RUN [--config run.yaml]

`--retry-failed` re-tries only the samples rejected by RUN's completed download, into new shards
numbered after the existing ones, and reconciles again (RUN/config.json is the config unless
--config is given). Later stages see the changed download and run again on `metacurate run`.
"""
from __future__ import annotations

import argparse


def add_actions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retry-failed", metavar="RUN", default=None,
                        help="re-try only the samples that failed in RUN's download and merge them in "
                             "(uses RUN/config.json unless --config is given)")


def run_action(args: argparse.Namespace) -> int | None:
    if not args.retry_failed:
        return None
    from curation.storage import Storage, join
    from jobs.config import load_config, run_dir_of
    from jobs.stages import download
    from jobs.stages.base import StageContext

    overrides = list(args.overrides) + [f"run_dir={args.retry_failed}"]
    if args.master:
        overrides.append(f"spark.master={args.master}")
    if args.config:
        cfg = load_config(args.config, overrides)
    else:
        snap = Storage.from_env().read_json(join(args.retry_failed, "config.json"))
        snap["storage"] = {k: (None if v == "***" else v) for k, v in snap.get("storage", {}).items()}
        cfg = load_config(None, overrides, base=snap)
    s = download.STAGE.retry_failed(StageContext(cfg=cfg, run=run_dir_of(cfg)))
    print(f"download (retry): in={s['in']:,} out={s['out']:,} rejected={s['rejected']}")
    print("re-run `metacurate run` to redo dedup and shard with the new samples")
    return 0
