"""Running the configured stages in order over one run directory.

Curation stages (match, count, balance) live in ``jobs.curate``; the image stages (download,
dedup, shard) in ``jobs.images``. Every stage is skipped when its ``_SUCCESS`` fingerprint matches,
and resumes unit by unit after an interruption.
"""
from __future__ import annotations

import dataclasses
import logging
import time

from curation.errors import InputError
from jobs import curate
from jobs.config import RunConfig

log = logging.getLogger(__name__)

CURATE_STAGES = ("match", "count", "balance")
IMAGE_STAGES = ("download", "dedup", "shard")


def curate_params(cfg: RunConfig) -> curate.CurateParams:
    return curate.CurateParams(
        pool=cfg.pool.path, metadata=cfg.metadata.path, out=cfg.run_dir, t=cfg.balance.t,
        target_size=cfg.balance.target_size, seed=cfg.balance.seed, max_text_bytes=cfg.pool.max_text_bytes,
        rows_per_unit=cfg.pool.rows_per_unit, on_bad_file=cfg.pool.on_bad_file,
        check_duplicate_uids=cfg.pool.check_duplicate_uids,
        sweep_points=cfg.balance.sweep_points, storage_options=cfg.storage.options(),
        balance_mode=cfg.balance.mode)


def run_stage(spark, cfg: RunConfig, stage: str) -> dict:
    p = curate_params(cfg)
    p.validate()
    if stage in CURATE_STAGES:
        return curate.STAGES[stage](spark, p)
    if stage in IMAGE_STAGES:
        from jobs import image_stages

        return image_stages.run(spark, cfg, p, stage)
    raise InputError(f"unknown stage {stage!r}")


def run_pipeline(cfg: RunConfig, stages: list[str] | None = None, spark=None) -> dict[str, dict]:
    from jobs.spark import get_spark

    stages = list(stages or cfg.stages)
    p = curate_params(cfg)  # checked before the session starts: a config mistake fails in a second
    p.validate()
    if "match" in stages:
        p.check_inputs()
    spark = spark or get_spark(cfg.spark.master, conf=cfg.spark.conf)
    out = {}
    for i, stage in enumerate(stages, 1):
        t0 = time.time()
        log.info("[%d/%d] %s ...", i, len(stages), stage)
        out[stage] = run_stage(spark, cfg, stage)
        s = out[stage]
        log.info("[%d/%d] %s done in %.1fs: in=%s out=%s rejected=%s", i, len(stages), stage,
                 time.time() - t0, s.get("in"), s.get("out"), s.get("rejected"))
    return out


def config_snapshot(cfg: RunConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["storage"] = {k: ("***" if k in ("key", "secret") and v else v) for k, v in d["storage"].items()}
    return d
