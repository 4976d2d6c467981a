"""The image stages (download, dedup, shard) inside the stage framework.

``jobs.images`` holds the work as plain functions with explicit paths; this module gives them
what every stage has: a fingerprint of config + upstream ``_SUCCESS``, skip when complete, a clean
redo when the config changed, the reconciliation check and the ``_SUCCESS`` marker.
"""
from __future__ import annotations

import dataclasses
import logging

import pyarrow as pa

from curation.errors import InputError
from jobs import curate, storage
from jobs.config import RunConfig

log = logging.getLogger(__name__)

UPSTREAM = {"download": "balance", "dedup": "download", "shard": "dedup"}


def _upstream_fp(p: curate.CurateParams, stage: str) -> str:
    up = UPSTREAM[stage]
    done = curate.read_success(p, up)
    if not done:
        raise InputError(f"stage `{stage}` needs `{up}` to be complete under {p.out}; run it first "
                         f"(`metacurate {up} --config …` or `metacurate run`)")
    return done["fingerprint"]


def entries_parquet(cfg: RunConfig, p: curate.CurateParams) -> str:
    """entries.parquet next to the metadata.json, else one written into RUN/metadata/ from it."""
    base = p.metadata.rsplit("/", 1)[0] if "/" in p.metadata else "."
    beside = storage.join(base, "entries.parquet")
    if storage.exists(beside, p.storage_options):
        return beside
    target = storage.join(p.out, "metadata", "entries.parquet")
    if not storage.exists(target, p.storage_options):
        from curation.matching import load_metadata_json

        entries = load_metadata_json(p.metadata, p.storage_options)
        storage.write_parquet_atomic(pa.table({
            "entry_id": pa.array(range(len(entries)), pa.int32()), "entry": entries,
            "source": ["import"] * len(entries), "score": pa.array([0.0] * len(entries))}),
            target, p.storage_options)
    return target


def _evalsets_fp(cfg: RunConfig, p: curate.CurateParams) -> str | None:
    """Eval hashes are an input of dedup: re-hashing an eval set must redo the stage."""
    base = cfg.dedup.evalsets or p.out
    for cand in (base, storage.join(base, "eval_hashes.parquet"), storage.join(base, "dedup", "eval_hashes.parquet")):
        if cand.endswith(".parquet") and storage.exists(cand, p.storage_options):
            fs, path = storage.get_fs(cand, p.storage_options)
            info = fs.info(path)
            return f"{cand}:{info.get('size')}:{info.get('mtime') or info.get('ETag')}"
    return None


def _copy_eval_hashes(evalsets: str, out_dir: str, storage_options: dict) -> None:
    """Keep the eval hashes used with the run (DESIGN §2: dedup/eval_hashes.parquet), so the audit
    and later readers of this run do not depend on where the eval sets were hashed."""
    from jobs import images

    src = images.eval_hashes_path(evalsets, storage_options)
    dst = storage.join(out_dir, "eval_hashes.parquet")
    if src.rstrip("/") == dst.rstrip("/"):
        return
    for name_src, name_dst in ((src, dst), (src[: -len(".parquet")] + ".json", dst[: -len(".parquet")] + ".json")):
        if storage.exists(name_src, storage_options):
            fs, path = storage.get_fs(name_src, storage_options)
            storage.write_bytes_atomic(name_dst, fs.cat_file(path), storage_options)


def _distributor_spark(cfg: RunConfig, spark):
    mode = cfg.download.distributor
    if mode == "pyspark" or (mode == "auto" and not cfg.spark.master.startswith("local")):
        return spark
    return None


def run(spark, cfg: RunConfig, p: curate.CurateParams, stage: str, retry_failed: bool = False) -> dict:
    from jobs import images

    up = _upstream_fp(p, stage)
    section = {"download": cfg.download, "dedup": cfg.dedup, "shard": cfg.shard}[stage]
    fingerprint = curate._fingerprint(stage, curate.JOB_VERSION, up, dataclasses.asdict(section),
                                      _evalsets_fp(cfg, p) if stage == "dedup" else None)
    out_dir, rej = curate.stage_dir(p, stage), curate.rejects_dir(p, stage)
    if retry_failed:
        if stage != "download":
            raise InputError("--retry-failed applies to the download stage only")
        prev = curate.read_success(p, "download")
        if not prev:
            raise InputError(f"no completed download under {p.out} to retry")
        attempt = int(prev.get("retry", 0)) + 1
        fingerprint = curate._fingerprint(fingerprint, "retry", attempt)
    elif not curate._begin_stage(p, stage, fingerprint,
                                 keep=("eval_hashes.parquet", "eval_hashes.json") if stage == "dedup" else ()):
        return storage.read_json(storage.join(out_dir, "summary.json"), p.storage_options)

    if stage == "download":
        d = cfg.download
        summary = images.download_stage(
            curate.stage_dir(p, "balance"), out_dir, rej, image_size=d.image_size, resize_mode=d.resize_mode,
            processes=d.processes, threads=d.threads, timeout=d.timeout, min_image_size=d.min_image_size,
            spark=_distributor_spark(cfg, spark), retry_failed=retry_failed,
            storage_options=p.storage_options)
    elif stage == "dedup":
        # Default: the run's own eval hashes (RUN/dedup/eval_hashes.parquet from `metacurate evalsets hash`).
        evalsets = cfg.dedup.evalsets or p.out
        summary = images.dedup_stage(spark, curate.stage_dir(p, "download"), evalsets, out_dir, rej,
                                     k=cfg.dedup.k, phash_mode=cfg.dedup.phash_mode,
                                     storage_options=p.storage_options)
        _copy_eval_hashes(evalsets, out_dir, p.storage_options)
    else:
        summary = images.shard_stage(curate.stage_dir(p, "download"), curate.stage_dir(p, "dedup"), out_dir, rej,
                                     samples_per_shard=cfg.shard.samples_per_shard,
                                     entries_path=entries_parquet(cfg, p), storage_options=p.storage_options)
    summary = {k: v for k, v in summary.items() if k != "stage"}
    result = curate._finish_stage(p, stage, fingerprint, summary)
    if retry_failed:
        marker = storage.join(out_dir, "_SUCCESS")
        done = storage.read_json(marker, p.storage_options)
        done["retry"] = attempt
        storage.write_json_atomic(marker, done, p.storage_options)
    return result
