"""Stage `download`: fetch the kept rows' images with img2dataset; failed samples become rejects.

``RUN/download/`` is img2dataset's own output, as its users know it (``NNNNN.tar`` WebDataset
shards, ``NNNNN.parquet`` with each sample's status and ``NNNNN_stats.json``) plus ``_input/``: the
rows handed to it (uid, url, text, entry_ids, p_keep; img2dataset copies them into each sample's
json). Every input row ends as a downloaded sample or a reject with a short reason (``http_404``,
``timeout``, ``decode_error``, ...).

Pool URLs are untrusted input. Before img2dataset sees them, each URL goes through
``curation.netguard``'s policy: only http/https, and no host that is (or spells) a loopback,
private, link-local, multicast, reserved or metadata address; refused rows become rejects
(``bad_scheme``, ``bad_url``, ``blocked_address``) and are kept in ``_refused/`` so that the stage
reconciles and ``--retry-failed`` never fetches them. Host names are not resolved here (one lookup
per host on the driver would take hours for a web-scale pool): the processes that fetch check the
address of every connection and every redirect target (``netguard.GuardedCall`` wraps
img2dataset's downloader, which its process pool and Spark executors unpickle). A response body
longer than ``max_bytes`` is cut off at the limit (``file_too_large``), and images are checked for
their pixel count from the header before they are decoded (``max_image_area``).

img2dataset opens paths with its own fsspec set-up (no storage options), so for an object-store
run with the local distributor it works in a local scratch folder and the files travel through
the run's storage; with its pyspark distributor (``download.distributor``) it writes the remote
folder itself, and the executors need credentials in their environment.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import netguard
from curation.errors import InputError
from curation.orphans import ContextsDieWithParent
from curation.rundir import StageDir, fingerprint, reject_rows
from curation.settings import setting
from curation.storage import Storage, is_remote, join
from jobs.stages import balance
from jobs.stages.base import Stage, StageContext, reconcile

log = logging.getLogger(__name__)

PASS_COLUMNS = ("uid", "entry_ids", "p_keep")
INPUT = "_input"
REFUSED = "_refused"  # reject rows of the URLs the policy refused; they never reach img2dataset
# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): ~1/4 GiB of RGB pixels.
MAX_IMAGE_AREA = 89_478_485
# The largest response body read for one URL: well above what a web image weighs (a 20-megapixel
# JPEG is ~10 MB), and with img2dataset's default 16 threads x processes it bounds what the
# downloads hold in memory at once.
MAX_BYTES = 64 << 20
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
    allow_loopback: bool = setting(False, "fetch from 127.0.0.0/8 and ::1 (a test or demo server on this "
                                          "machine); off: such URLs become `blocked_address` rejects")
    allow_private: bool = setting(False, "fetch from private addresses (10/8, 172.16/12, 192.168/16, 100.64/10, "
                                         "fc00::/7: an intranet mirror); link-local and metadata addresses stay "
                                         "refused")
    max_image_area: int = setting(MAX_IMAGE_AREA, "reject images with more pixels than this (`too_large`), read "
                                                  "from the header before decoding; the default is PIL's "
                                                  "decompression-bomb limit (PIL reads no header above twice "
                                                  "that, so larger values act as 2x)", minimum=1)
    max_bytes: int = setting(MAX_BYTES, "reject a response whose body is longer than this many bytes "
                                        "(`file_too_large`): refused from its Content-Length before reading, "
                                        "else at the first byte past it, so no worker holds more for one URL",
                             minimum=1)


class DownloadStage(Stage):
    name = "download"
    help = "fetch the kept rows' images with img2dataset (failures become reject rows)"
    upstream = (balance.BalanceStage,)
    section = "download"
    Config = DownloadConfig
    section_doc = "image download (img2dataset)"
    sizing_estimate = (3.4, "img2dataset's published throughput: 100M URLs in 20 h on one 16-core machine")
    failure_reasons = ("shard_failed",)
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
    guarded = netguard.reason_of(msg)  # the fetch guard refused a connection or a redirect
    if guarded:
        return guarded
    m = re.search(r"http error (\d{3})", msg)
    if m:
        return f"http_{m.group(1)}"
    if "timed out" in msg or "timeout" in msg:
        return "timeout"
    if "too small" in msg:
        return "too_small"
    if "area too large" in msg or "cv_io_max_image_pixels" in msg:  # the latter: OpenCV's own limit
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


def _prepare_input(balance_dir: StageDir, out: StageDir, s: DownloadConfig) -> list[str]:
    """Copy the kept rows (uid, url, text, entry_ids, p_keep) whose URL the policy allows to
    img2dataset's input folder, and the refused ones as reject rows to ``_refused/``; returns the
    pass-through columns present."""
    storage = out.storage
    input_dir, refused_dir = out.path(INPUT), out.path(REFUSED)
    for d in (input_dir, refused_dir):
        storage.remove(d)
        storage.makedirs(d)
    present = set(PASS_COLUMNS)
    files = balance_dir.part_files()
    if not files:
        raise InputError(f"{balance_dir.url}: no kept rows to download (run `balance` first)")
    # No DNS here: the fetching processes check the address of every connection (module doc).
    policy = netguard.UrlPolicy(s.allow_loopback, s.allow_private, resolve=False)
    refused: list[dict] = []
    for i, src in enumerate(files):
        t = storage.read_parquet(src)
        if "uid" not in t.column_names or "url" not in t.column_names:
            raise InputError(f"{src} lacks `uid`/`url`; it is not a balance part (re-run `balance`)")
        cols = [c for c in ("uid", "url", "text", *PASS_COLUMNS[1:]) if c in t.column_names]
        present &= set(cols)
        t = t.select(cols)
        if "text" not in t.column_names:
            t = t.append_column("text", pa.array([""] * len(t), pa.string()))
        verdicts = [policy.explain(u) for u in t.column("url").to_pylist()]
        for uid, v in zip(t.column("uid").to_pylist(), verdicts):
            if v is not None:
                refused.append({"uid": uid, "stage": DownloadStage.name, "reason": v[0], "detail": v[1]})
        t = t.filter(pa.array([v is None for v in verdicts], pa.bool_()))
        if len(t):  # img2dataset gets only the URLs it may fetch
            storage.write_parquet(t, join(input_dir, f"part-{i:05d}.parquet"))
    storage.write_parquet(reject_rows(refused), join(refused_dir, "part-00000.parquet"))
    if refused:
        log.info("download: %d URLs refused by the URL policy (%s)", len(refused),
                 dict(Counter(r["reason"] for r in refused)))
    return [c for c in PASS_COLUMNS if c in present]


def _has_rows(storage: Storage, folder: str) -> bool:
    """Whether ``folder`` holds parquet parts (``_input/`` holds none when every URL was refused)."""
    return storage.exists(folder) and bool(storage.list_files(folder, ".parquet"))


def _read_rows(storage: Storage, folder: str, columns: list[str] | None = None) -> pa.Table | None:
    """The parquet parts of ``folder``, or None when it holds none."""
    return storage.read_parquet(folder, columns) if _has_rows(storage, folder) else None


class AreaCheckedResizer:
    """img2dataset's resizer behind a header check: an image whose header declares more than
    ``max_area`` pixels is refused before it is decoded. img2dataset's own ``max_image_area``
    check comes after ``cv2.imdecode`` has allocated the whole bitmap (1.2 GB for 20000x20000
    RGB), so by itself it does not stop a decompression bomb."""

    def __init__(self, resizer: Any, max_area: int) -> None:
        self.resizer = resizer
        self.max_area = int(max_area)

    def __call__(self, img_stream: Any, *args: Any, **kwargs: Any) -> tuple:
        refused = self.refuse(img_stream)
        if refused is not None:
            return None, None, None, None, None, refused
        img_stream.seek(0)
        return self.resizer(img_stream, *args, **kwargs)

    def refuse(self, img_stream: Any) -> str | None:
        """An error message (img2dataset's "image area too large" wording) or None."""
        from PIL import Image, UnidentifiedImageError

        img_stream.seek(0)
        try:
            with Image.open(img_stream) as im:  # parses the header only
                width, height = im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # PIL refuses to report sizes above twice its own limit: larger than any sane max_area
            return f"image area too large (header check before decoding): {err}"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            # Not a format PIL parses: OpenCV decodes it under its own pixel limit
            # (OPENCV_IO_MAX_IMAGE_PIXELS, set from max_image_area where this process could).
            return None
        if width * height > self.max_area:
            return (f"image area too large (header check before decoding): {width}x{height} = "
                    f"{width * height:,} pixels > max_image_area {self.max_area:,}")
        return None


_OPENCV_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"


@contextmanager
def _guarded_img2dataset(s: DownloadConfig) -> Iterator[None]:
    """img2dataset with the fetch guard and the pre-decode area check in the processes that
    download.

    img2dataset builds its ``Downloader`` in this process and hands it to a distributor, which
    pickles it to the workers: a ``spawn`` process pool (an opener installed here would be lost)
    or Spark executors. The distributor functions are wrapped so that the worker gets a
    :class:`netguard.GuardedCall` around the downloader (it installs the guard where it runs) and
    an :class:`AreaCheckedResizer` around its resizer. If img2dataset's layout changes, this raises
    rather than download unguarded."""
    # img2dataset/__init__.py rebinds the name `main` to a function: take the module itself
    i2d_main = importlib.import_module("img2dataset.main")

    names = ("multiprocessing_distributor", "pyspark_distributor")
    missing = [n for n in names if not callable(getattr(i2d_main, n, None))]
    if missing:
        raise RuntimeError(f"img2dataset.main has no {', '.join(missing)}: this img2dataset version cannot be "
                           "guarded (metacurate refuses to download without the URL guard)")
    originals = {n: getattr(i2d_main, n) for n in names}

    def wrap(distribute: Callable[..., Any]) -> Callable[..., Any]:
        def guarded_distributor(processes_count: int, downloader: Any, *rest: Any) -> Any:
            if not hasattr(downloader, "resizer"):
                raise RuntimeError("img2dataset's Downloader has no `resizer`: the pre-decode area check cannot "
                                   "be installed (metacurate refuses to download without it)")
            downloader.resizer = AreaCheckedResizer(downloader.resizer, s.max_image_area)
            worker = netguard.GuardedCall(downloader, s.allow_loopback, s.allow_private, s.max_bytes)
            return distribute(processes_count, worker, *rest)
        return guarded_distributor

    # OpenCV reads its pixel limit once, when it loads: spawned workers inherit it from here
    # (Spark executors are already running and keep their own).
    previous = os.environ.get(_OPENCV_LIMIT)
    os.environ[_OPENCV_LIMIT] = str(s.max_image_area)
    for n in names:
        setattr(i2d_main, n, wrap(originals[n]))
    # The local pool's workers stop when this process dies (a killed driver must not leave them
    # writing into the run dir while a re-run starts): its pool is built from this get_context.
    # Its stats-logger process likewise.
    i2d_dist = importlib.import_module("img2dataset.distributor")
    original_get_context = getattr(i2d_dist, "get_context", None)
    if callable(original_get_context):
        i2d_dist.get_context = ContextsDieWithParent(original_get_context)
    else:
        log.warning("img2dataset.distributor has no get_context: its download workers may outlive a killed driver")
    original_logger = getattr(i2d_main, "LoggerProcess", None)
    if original_logger is not None:
        from jobs.img2dataset_hooks import WatchedLoggerProcess

        i2d_main.LoggerProcess = WatchedLoggerProcess
    try:
        yield
    finally:
        for n in names:
            setattr(i2d_main, n, originals[n])
        if callable(original_get_context):
            i2d_dist.get_context = original_get_context
        if original_logger is not None:
            i2d_main.LoggerProcess = original_logger
        if previous is None:
            os.environ.pop(_OPENCV_LIMIT, None)
        else:
            os.environ[_OPENCV_LIMIT] = previous


def _run_img2dataset(input_dir: str, output_dir: str, *, pass_columns: list[str], s: DownloadConfig, spark: Any,
                     incremental_mode: str = "incremental") -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download as img2dataset_download  # heavy; reads the variable above

    with _guarded_img2dataset(s):
        img2dataset_download(
            url_list=input_dir, input_format="parquet", url_col="url", caption_col="text",
            save_additional_columns=pass_columns, output_format="webdataset",
            output_folder=output_dir, processes_count=s.processes, thread_count=s.threads,
            timeout=s.timeout, image_size=s.image_size, resize_mode=s.resize_mode,
            min_image_size=s.min_image_size, max_image_area=s.max_image_area,
            number_sample_per_shard=s.samples_per_shard,
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
    inputs = _read_rows(storage, out.path(INPUT), ["uid"])
    refused = _read_rows(storage, out.path(REFUSED))
    status = _status(out)
    by_uid = {u: (s, e) for u, s, e in zip(*(status.column(c).to_pylist() for c in ("uid", "status", "error_message")))}
    rejects = refused.to_pylist() if refused is not None else []
    n_ok = 0
    for uid in (inputs.column("uid").to_pylist() if inputs is not None else []):
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
    n_in = (len(inputs) if inputs is not None else 0) + (len(refused) if refused is not None else 0)
    return {"in": n_in, "out": n_ok, "rejected": dict(counts)}


def download(balance_dir: StageDir, out: StageDir, s: DownloadConfig, *, spark: Any = None,
             retry_failed: bool = False) -> dict:
    """Download the kept rows into ``out``; returns the summary (in, out, rejected by reason)."""
    storage = out.storage
    input_dir = out.path(INPUT)
    storage.makedirs(out.url)
    _remove_foreign_json(out)
    rows = None
    if retry_failed:
        if not storage.exists(input_dir) and not storage.exists(out.path(REFUSED)):
            raise InputError(f"{out.url}: nothing to retry, run `download` first")
        # Refused URLs are rejects too, but they are not in _input: they are never fetched.
        failed = set(storage.read_parquet(out.rejects_url, ["uid"]).column("uid").to_pylist())
        rows = _read_rows(storage, input_dir)
        if rows is not None:
            rows = rows.filter(pc.is_in(rows.column("uid"), value_set=pa.array(sorted(failed), pa.string())))
        if rows is None or not len(rows):
            log.info("download --retry-failed: no failed samples")
            return _reconcile(out)
        pass_columns = [c for c in PASS_COLUMNS if c in rows.column_names]
    else:
        pass_columns = _prepare_input(balance_dir, out, s)
        if not _has_rows(storage, input_dir):
            log.info("download: every URL was refused by the URL policy; nothing to fetch")
            return _reconcile(out)
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
