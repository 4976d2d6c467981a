"""Stage `download`: fetch the kept rows' images with img2dataset; failed samples become rejects.

``RUN/download/`` is img2dataset's own output, as its users know it (``NNNNN.tar`` WebDataset
shards, ``NNNNN.parquet`` with each sample's status and ``NNNNN_stats.json``) plus ``_input/``: the
rows handed to it (uid, url, text, entry_ids, p_keep; img2dataset copies them into each sample's
json). Every input row ends as a downloaded sample or a reject with a short reason (``http_404``,
``timeout``, ``decode_error``, ...).

img2dataset opens paths with its own fsspec set-up (no storage options), so for an object-store
run with the local distributor it works in a local scratch folder and the files travel through
the run's storage; with its pyspark distributor (``download.distributor``) it writes the remote
folder itself, and the executors need credentials in their environment.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.rundir import StageDir, fingerprint, reject_rows
from curation.settings import setting
from curation.storage import Storage, is_remote, join
from jobs.stages import balance
from jobs.stages.base import Stage, StageContext, reconcile

log = logging.getLogger(__name__)

PASS_COLUMNS = ("uid", "entry_ids", "p_keep")
INPUT = "_input"
_SHARD_FILE = re.compile(r"\d+(\.tar|\.parquet|_stats\.json)")


@dataclass
class DownloadConfig:
    image_size: int = setting(256, "img2dataset image_size", minimum=1)
    resize_mode: str = setting("center_crop", "img2dataset resize_mode",
                               choices=("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"))
    min_image_size: int = setting(0, "reject images whose smaller side is below this (img2dataset)", minimum=0)
    processes: int = setting(2, "img2dataset processes_count (local multiprocessing distributor)", minimum=1)
    threads: int = setting(16, "img2dataset thread_count", minimum=1)
    timeout: int = setting(10, "per-request timeout in seconds", minimum=1)
    samples_per_shard: int = setting(10_000, "img2dataset number_sample_per_shard", minimum=1)
    distributor: str = setting("auto", "auto (pyspark on a cluster master, multiprocessing locally), "
                                       "multiprocessing, pyspark", choices=("auto", "multiprocessing", "pyspark"))


class DownloadStage(Stage):
    name = "download"
    help = "fetch the kept rows' images with img2dataset (failures become reject rows)"
    upstream = (balance.BalanceStage,)
    section = "download"
    Config = DownloadConfig
    section_doc = "image download (img2dataset)"
    sizing_estimate = (3.4, "img2dataset's published throughput: 100M URLs in 20 h on one 16-core machine")
    cli_actions = "jobs.commands.download"

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s: DownloadConfig = ctx.settings(self)
        return download(ctx.dir(balance.BalanceStage), out, s, spark=_distributor_spark(ctx, s))

    def retry_failed(self, ctx: StageContext) -> dict:
        """Download again only the samples that failed (into new shards numbered after the existing
        ones) and reconcile again; the stage stays complete, its marker counts the retries."""
        out = ctx.dir(self)
        prev = out.success()
        if not prev:
            raise InputError(f"no completed download under {ctx.run.url} to retry; run `metacurate download` first")
        s: DownloadConfig = ctx.settings(self)
        summary = reconcile(self.name, download(ctx.dir(balance.BalanceStage), out, s, spark=None,
                                                retry_failed=True))
        out.write_summary(summary)
        attempt = int(prev.get("retry", 0)) + 1
        out.write_success(prev["fingerprint"], stage=self.name, version=self.version, retry=attempt,
                          output_id=fingerprint(prev["fingerprint"], "retry", attempt))
        return summary


STAGE = DownloadStage()


def _distributor_spark(ctx: StageContext, s: DownloadConfig):
    if s.distributor == "pyspark" or (s.distributor == "auto" and not ctx.cfg.spark.master.startswith("local")):
        return ctx.spark
    return None


def classify_error(status: str | None, message: str | None) -> str:
    """img2dataset's free-text error -> a short reject reason."""
    msg = (message or "").lower()
    m = re.search(r"http error (\d{3})", msg)
    if m:
        return f"http_{m.group(1)}"
    if "timed out" in msg or "timeout" in msg:
        return "timeout"
    if "too small" in msg:
        return "too_small"
    if "area too large" in msg:
        return "too_large"
    if "aspect ratio" in msg:
        return "bad_aspect_ratio"
    if "decod" in msg or status == "failed_to_resize":
        return "decode_error"
    if "refused" in msg or "urlopen error" in msg or "remote end closed" in msg:
        return "connection_error"
    return "other"


def tar_files(d: StageDir) -> list[str]:
    """The downloaded shards, sorted."""
    return [u for u in d.storage.glob(d.url, "*.tar") if re.fullmatch(r"\d+\.tar", u.rsplit("/", 1)[-1])]


def _prepare_input(balance_dir: StageDir, input_dir: str, storage: Storage) -> list[str]:
    """Copy the kept rows (uid, url, text, entry_ids, p_keep) to img2dataset's input folder; returns
    the pass-through columns present."""
    storage.remove(input_dir)
    storage.makedirs(input_dir)
    present = set(PASS_COLUMNS)
    files = balance_dir.part_files()
    if not files:
        raise InputError(f"{balance_dir.url}: no kept rows to download (run `balance` first)")
    for i, src in enumerate(files):
        t = storage.read_parquet(src)
        if "uid" not in t.column_names or "url" not in t.column_names:
            raise InputError(f"{src} lacks `uid`/`url`; it is not a balance part (re-run `balance`)")
        cols = [c for c in ("uid", "url", "text", *PASS_COLUMNS[1:]) if c in t.column_names]
        present &= set(cols)
        t = t.select(cols)
        if "text" not in t.column_names:
            t = t.append_column("text", pa.array([""] * len(t), pa.string()))
        storage.write_parquet(t, join(input_dir, f"part-{i:05d}.parquet"))
    return [c for c in PASS_COLUMNS if c in present]


def _run_img2dataset(input_dir: str, output_dir: str, *, pass_columns: list[str], s: DownloadConfig, spark: Any,
                     incremental_mode: str = "incremental") -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download as img2dataset_download  # heavy; reads the variable above

    img2dataset_download(
        url_list=input_dir, input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=pass_columns, output_format="webdataset",
        output_folder=output_dir, processes_count=s.processes, thread_count=s.threads,
        timeout=s.timeout, image_size=s.image_size, resize_mode=s.resize_mode,
        min_image_size=s.min_image_size, number_sample_per_shard=s.samples_per_shard,
        distributor="pyspark" if spark is not None else "multiprocessing",
        incremental_mode=incremental_mode, enable_wandb=False, extract_exif=False,
        compute_hash="sha256", retries=0,
    )


def _remove_foreign_json(out: StageDir) -> None:
    """img2dataset's incremental mode parses a shard number out of every ``*.json`` in its output
    folder: our ``_summary.json`` (rewritten at the end) must not be there while it runs."""
    fs, path = out.storage.fs(out.url)
    for p in fs.glob(f"{path}/*.json"):
        if not re.fullmatch(r"\d+_stats\.json", p.rsplit("/", 1)[-1]):
            fs.rm(p)


def _status(out: StageDir) -> pa.Table:
    """Per-uid final status over all img2dataset shard parquets (a success anywhere wins)."""
    fs, path = out.storage.fs(out.url)
    parts = sorted(p for p in fs.glob(f"{path}/*.parquet") if re.fullmatch(r"\d+\.parquet", p.rsplit("/", 1)[-1]))
    rows: dict[str, tuple[str, str | None]] = {}
    for p in parts:  # shard order: later shards (retries) override earlier failures
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=["uid", "status", "error_message"])
        for uid, status, err in zip(*(t.column(c).to_pylist() for c in ("uid", "status", "error_message"))):
            if rows.get(uid, ("",))[0] == "success":
                continue
            rows[uid] = (status, err)
    return pa.table({"uid": list(rows), "status": [v[0] for v in rows.values()],
                     "error_message": [v[1] for v in rows.values()]})


def _reconcile(out: StageDir) -> dict:
    storage = out.storage
    inputs = storage.read_parquet(out.path(INPUT), ["uid"]).column("uid")
    status = _status(out)
    by_uid = {u: (s, e) for u, s, e in zip(*(status.column(c).to_pylist() for c in ("uid", "status", "error_message")))}
    rejects, n_ok = [], 0
    for uid in inputs.to_pylist():
        st, err = by_uid.get(uid, (None, None))
        if st == "success":
            n_ok += 1
        elif st is None:
            rejects.append({"uid": uid, "stage": DownloadStage.name, "reason": "shard_failed",
                            "detail": "img2dataset wrote no status for this sample (its shard failed)"})
        else:
            rejects.append({"uid": uid, "stage": DownloadStage.name, "reason": classify_error(st, err),
                            "detail": err or st})
    storage.write_parquet(reject_rows(rejects), out.rejects("part-00000.parquet"))
    counts = Counter(r["reason"] for r in rejects)
    return {"in": len(inputs), "out": n_ok, "rejected": dict(counts)}


def download(balance_dir: StageDir, out: StageDir, s: DownloadConfig, *, spark: Any = None,
             retry_failed: bool = False) -> dict:
    """Download the kept rows into ``out``; returns the summary (in, out, rejected by reason)."""
    storage = out.storage
    input_dir = out.path(INPUT)
    storage.makedirs(out.url)
    _remove_foreign_json(out)
    rows = None
    if retry_failed:
        if not storage.exists(input_dir):
            raise InputError(f"{out.url}: nothing to retry, run `download` first")
        failed = set(storage.read_parquet(out.rejects_url, ["uid"]).column("uid").to_pylist())
        if not failed:
            log.info("download --retry-failed: no failed samples")
            return _reconcile(out)
        rows = storage.read_parquet(input_dir)
        pass_columns = [c for c in PASS_COLUMNS if c in rows.column_names]
        rows = rows.filter(pc.is_in(rows.column("uid"), value_set=pa.array(sorted(failed), pa.string())))
    else:
        pass_columns = _prepare_input(balance_dir, input_dir, storage)
    staged = is_remote(out.url) and spark is None
    scratch = tempfile.mkdtemp(prefix="metacurate-download-") if staged or retry_failed else None
    try:
        if not retry_failed:
            if staged:  # img2dataset works locally; inputs down, outputs up, with our options
                local_in = os.path.join(scratch, "input")
                os.makedirs(local_in)
                for f in storage.list_files(input_dir, ".parquet"):
                    storage.get_file(f, os.path.join(local_in, f.rsplit("/", 1)[-1]))
                local_out = os.path.join(scratch, "out")
                _run_img2dataset(local_in, local_out, pass_columns=pass_columns, s=s, spark=None)
                storage.upload_folder(local_out, out.url)
            else:
                _run_img2dataset(input_dir, out.url, pass_columns=pass_columns, s=s, spark=spark)
        else:
            # Retries run in a local scratch folder: img2dataset's "extend" mode numbers new shards
            # after the highest *_stats.json it sees, so a placeholder stats file goes first.
            local_in, local_out = os.path.join(scratch, "input"), os.path.join(scratch, "out")
            os.makedirs(local_in)
            os.makedirs(local_out)
            pq.write_table(rows, os.path.join(local_in, "part-00000.parquet"))
            last = max((int(u.rsplit("/", 1)[-1].split(".")[0]) for u in tar_files(out)), default=-1)
            dummy = os.path.join(local_out, f"{last:05d}_stats.json")
            with open(dummy, "w") as f:
                json.dump({"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0,
                           "duration": 1, "start_time": 0, "end_time": 1, "status_dict": {}}, f)
            _run_img2dataset(local_in, local_out, pass_columns=pass_columns, s=s, spark=None,
                             incremental_mode="extend")
            os.remove(dummy)
            for name in sorted(os.listdir(local_out)):
                if not _SHARD_FILE.fullmatch(name):
                    os.remove(os.path.join(local_out, name))
            storage.upload_folder(local_out, out.url)
            log.info("download --retry-failed: retried %d samples", len(rows))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return _reconcile(out)
