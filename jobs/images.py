"""Image stages as plain functions: download (img2dataset), dedup (pHash vs eval sets), shard.

Each function takes explicit paths (local or fsspec URLs), writes its outputs and reject rows,
and returns the stage summary ``{"stage", "in", "out", "rejected": {reason: n}}`` with
``in == out + sum(rejected)`` asserted. The stage framework (``_SUCCESS``, fingerprints, config)
wraps them.

Layout inside ``download/``: img2dataset's own output (``NNNNN.tar``, ``NNNNN.parquet`` with
status/error_message per sample, ``NNNNN_stats.json``) plus ``_input/`` (the rows handed to it).
img2dataset's incremental mode globs ``download/*.json`` and parses the shard number from every
name, so this module keeps foreign ``*.json`` files (a stale ``summary.json``) out of the way
while img2dataset runs.

``dedup/``: ``eval_hashes.parquet`` (dataset, key, phash:uint64, source), ``hashes/`` (one part per
downloaded tar: uid, tar, key, phash:uint64, status, detail), ``overlap.parquet`` (uid, dataset,
key, hamming, eval_phash, phash, tar, pool_key), ``params.json`` (k, phash_mode).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.neardup import NearDupIndex
from curation.phash import hash_to_hex, phash_bytes_batch
from curation.shards import read_tar_samples, sanitize_key, write_shards
from jobs import storage

log = logging.getLogger(__name__)

REJECT_SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                           ("detail", pa.string())])
EVAL_SCHEMA = pa.schema([("dataset", pa.string()), ("key", pa.string()), ("phash", pa.uint64()),
                         ("source", pa.string())])
HASH_SCHEMA = pa.schema([("uid", pa.string()), ("tar", pa.string()), ("key", pa.string()),
                         ("phash", pa.uint64()), ("status", pa.string()), ("detail", pa.string())])
OVERLAP_SCHEMA = pa.schema([("uid", pa.string()), ("dataset", pa.string()), ("key", pa.string()),
                            ("hamming", pa.int32()), ("eval_phash", pa.uint64()), ("phash", pa.uint64()),
                            ("tar", pa.string()), ("pool_key", pa.string())])
PASS_COLUMNS = ("uid", "entry_ids", "p_keep")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


# ----------------------------------------------------------------------------- small I/O helpers
# All I/O goes through jobs.storage with the run's ``storage_options`` (the config's `storage:`
# section), so an s3:// run works without AWS_* variables in any process.
def _fs(url: str, so: dict | None) -> tuple[Any, str]:
    return storage.get_fs(url, so)


def _write_parquet(table: pa.Table, url: str, so: dict | None) -> None:
    storage.write_parquet_atomic(table, url, so)


def _read_parquet(url: str, so: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    return storage.read_parquet_any(url, so, columns)


def _write_json(obj: Any, url: str, so: dict | None) -> None:
    storage.write_json_atomic(url, obj, so)


def _rejects_table(rows: list[dict[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def _summary(stage: str, n_in: int, n_out: int, rejected: dict[str, int], **extra: Any) -> dict:
    total = n_out + sum(rejected.values())
    assert n_in == total, f"{stage}: counts do not reconcile: in={n_in} != out+rejected={total} ({rejected})"
    return {"stage": stage, "in": int(n_in), "out": int(n_out),
            "rejected": {k: int(v) for k, v in sorted(rejected.items())}, **extra}


def expand_braces(pattern: str) -> list[str]:
    """``X/{00000..00009}.tar`` and ``{a,b}`` expansion (webdataset/open_clip shard notation)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo)
        options = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    out: list[str] = []
    for opt in options:
        out.extend(expand_braces(pattern[: m.start()] + opt + pattern[m.end():]))
    return out


def list_tars(spec: str, storage_options: dict | None = None) -> list[str]:
    """Tar URLs from a folder, a glob, or a brace pattern; sorted, protocol kept."""
    urls: list[str] = []
    for pat in expand_braces(spec):
        fs, path = _fs(pat, storage_options)
        if fs.isdir(path):
            urls.extend(storage.glob(pat, "*.tar", storage_options))
        elif any(ch in path for ch in "*?["):
            urls.extend(storage.with_protocol(pat, p) for p in sorted(fs.glob(path)))
        elif fs.exists(path):
            urls.append(pat)
        else:
            raise InputError(f"shard {pat} does not exist")
    return urls


# ----------------------------------------------------------------------------- download
def classify_download_error(status: str | None, message: str | None) -> str:
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


def _balanced_files(balance_dir: str, so: dict | None) -> list[str]:
    fs, path = _fs(balance_dir, so)
    files = sorted(fs.glob(f"{path}/*.parquet")) if fs.isdir(path) else [path]
    out = []
    for p in files:
        with fs.open(p, "rb") as f:
            names = pq.read_schema(f).names
        if "url" in names and "uid" in names:
            out.append(storage.with_protocol(balance_dir, p))
    if not out:
        raise InputError(f"{balance_dir}: no parquet part with `uid` and `url` columns (run `balance` first)")
    return out


def _prepare_input(balance_dir: str, input_dir: str, so: dict | None) -> list[str]:
    """Copy the balanced rows (uid,url,text,entry_ids,p_keep) to img2dataset's input folder.

    Returns the pass-through columns present (img2dataset copies them into each sample's json).
    """
    storage.remove(input_dir, so)
    storage.makedirs(input_dir, so)
    present = set(PASS_COLUMNS)
    for i, src in enumerate(_balanced_files(balance_dir, so)):
        t = _read_parquet(src, so)
        cols = [c for c in ("uid", "url", "text", *PASS_COLUMNS[1:]) if c in t.column_names]
        present &= set(cols)
        t = t.select(cols)
        if "text" not in t.column_names:
            t = t.append_column("text", pa.array([""] * len(t), pa.string()))
        _write_parquet(t, storage.join(input_dir, f"part-{i:05d}.parquet"), so)
    return [c for c in PASS_COLUMNS if c in present]


def _run_img2dataset(input_dir: str, output_dir: str, *, pass_columns: list[str], image_size: int,
                     resize_mode: str, processes: int, threads: int, timeout: int,
                     min_image_size: int, samples_per_shard: int, spark: Any,
                     incremental_mode: str = "incremental") -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import (
        download,  # imported late: heavy, and reads the env var above
    )

    download(
        url_list=input_dir, input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=pass_columns, output_format="webdataset",
        output_folder=output_dir, processes_count=processes, thread_count=threads,
        timeout=timeout, image_size=image_size, resize_mode=resize_mode,
        min_image_size=min_image_size, number_sample_per_shard=samples_per_shard,
        distributor="pyspark" if spark is not None else "multiprocessing",
        incremental_mode=incremental_mode, enable_wandb=False, extract_exif=False,
        compute_hash="sha256", retries=0,
    )


def _move_foreign_json(out_dir: str, so: dict | None) -> None:
    """Remove our own *.json (e.g. a stale summary.json) that would crash img2dataset's glob."""
    fs, path = _fs(out_dir, so)
    for p in fs.glob(f"{path}/*.json"):
        if not re.fullmatch(r"\d+_stats\.json", p.rsplit("/", 1)[-1]):
            log.info("removing %s before img2dataset runs (it is rewritten at the end)", p)
            fs.rm(p)


def _download_status(out_dir: str, so: dict | None) -> pa.Table:
    """Per-uid final status over all img2dataset shard parquets (a success anywhere wins)."""
    fs, path = _fs(out_dir, so)
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


def _reconcile_download(input_dir: str, out_dir: str, rejects_dir: str, so: dict | None) -> dict:
    inputs = _read_parquet(input_dir, so, columns=["uid"]).column("uid")
    status = _download_status(out_dir, so)
    by_uid = {u: (s, e) for u, s, e in zip(*(status.column(c).to_pylist() for c in ("uid", "status", "error_message")))}
    rejects, n_ok = [], 0
    for uid in inputs.to_pylist():
        st, err = by_uid.get(uid, (None, None))
        if st == "success":
            n_ok += 1
        elif st is None:
            rejects.append({"uid": uid, "stage": "download", "reason": "shard_failed",
                            "detail": "img2dataset wrote no status for this sample (its shard failed)"})
        else:
            rejects.append({"uid": uid, "stage": "download", "reason": classify_download_error(st, err),
                            "detail": err or st})
    _write_parquet(_rejects_table(rejects), f"{rejects_dir.rstrip('/')}/part-00000.parquet", so)
    counts = Counter(r["reason"] for r in rejects)
    return _summary("download", len(inputs), n_ok, dict(counts))


def download_stage(balance_dir: str, out_dir: str, rejects_dir: str, *, image_size: int = 256,
                   resize_mode: str = "center_crop", processes: int = 2, threads: int = 32,
                   timeout: int = 10, min_image_size: int = 0, spark: Any = None,
                   retry_failed: bool = False, samples_per_shard: int = 10_000,
                   storage_options: dict | None = None) -> dict:
    """Download the balanced rows with img2dataset; failed samples become reject rows.

    ``spark`` given -> img2dataset's pyspark distributor runs on that session (cluster);
    otherwise its multiprocessing distributor. ``retry_failed`` re-downloads only the samples in
    ``rejects_dir`` into new shards (numbered after the existing ones) and re-reconciles.

    img2dataset opens its paths with its own fsspec setup (no storage options). So for an
    object-store ``out_dir`` with the local distributor it reads and writes a local scratch folder
    and the files are uploaded with ``storage_options``; with the pyspark distributor it must
    write the remote folder itself (executors need credentials from their environment).
    """
    so = storage_options
    out_dir, rejects_dir = out_dir.rstrip("/"), rejects_dir.rstrip("/")
    input_dir = f"{out_dir}/_input"
    storage.makedirs(out_dir, so)
    kw = dict(pass_columns=list(PASS_COLUMNS), image_size=image_size, resize_mode=resize_mode,
              processes=processes, threads=threads, timeout=timeout, min_image_size=min_image_size,
              samples_per_shard=samples_per_shard, spark=spark)
    _move_foreign_json(out_dir, so)
    if retry_failed:
        if not storage.exists(input_dir, so):
            raise InputError(f"{out_dir}: nothing to retry, run `download` first")
        failed = set(_read_parquet(rejects_dir, so, columns=["uid"]).column("uid").to_pylist())
        if not failed:
            log.info("download --retry-failed: no failed samples")
            return _reconcile_download(input_dir, out_dir, rejects_dir, so)
        rows = _read_parquet(input_dir, so)
        kw["pass_columns"] = [c for c in PASS_COLUMNS if c in rows.column_names]
        rows = rows.filter(pc.is_in(rows.column("uid"), value_set=pa.array(sorted(failed), pa.string())))
    else:
        kw["pass_columns"] = _prepare_input(balance_dir, input_dir, so)
    staged = storage.is_remote(out_dir) and spark is None
    scratch = tempfile.mkdtemp(prefix="metacurate-download-") if staged or retry_failed else None
    try:
        if not retry_failed:
            if staged:  # img2dataset works locally; inputs down, outputs up, with our options
                local_in = os.path.join(scratch, "input")
                os.makedirs(local_in)
                for f in storage.list_files(input_dir, ".parquet", so):
                    fs, path = _fs(f, so)
                    fs.get_file(path, os.path.join(local_in, f.rsplit("/", 1)[-1]))
                local_out = os.path.join(scratch, "out")
                _run_img2dataset(local_in, local_out, **kw)
                storage.copy_tree_to(local_out, out_dir, so)
            else:
                _run_img2dataset(input_dir, out_dir, **kw)
        else:
            # Retries always run in a local scratch folder: img2dataset's "extend" mode numbers new
            # shards after the highest *_stats.json it sees, so a placeholder stats file goes first.
            local_in, local_out = os.path.join(scratch, "input"), os.path.join(scratch, "out")
            os.makedirs(local_in)
            os.makedirs(local_out)
            pq.write_table(rows, os.path.join(local_in, "part-00000.parquet"))
            names = [u.rsplit("/", 1)[-1] for u in storage.glob(out_dir, "*.tar", so)]
            last = max((int(n.split(".")[0]) for n in names), default=-1)
            dummy = os.path.join(local_out, f"{last:05d}_stats.json")
            with open(dummy, "w") as f:
                json.dump({"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0,
                           "duration": 1, "start_time": 0, "end_time": 1, "status_dict": {}}, f)
            _run_img2dataset(local_in, local_out, incremental_mode="extend", **kw)
            os.remove(dummy)
            for name in sorted(os.listdir(local_out)):
                if not re.fullmatch(r"\d+(\.tar|\.parquet|_stats\.json)", name):
                    os.remove(os.path.join(local_out, name))
            storage.copy_tree_to(local_out, out_dir, so)
            log.info("download --retry-failed: retried %d samples", len(rows))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return _reconcile_download(input_dir, out_dir, rejects_dir, so)


# ----------------------------------------------------------------------------- eval-set hashes
def _iter_eval_images(images: str, so: dict | None = None) -> Iterator[tuple[str, bytes, str]]:
    """(key, encoded bytes, source) from a folder, webdataset tars (glob/braces) or a parquet."""
    fs, path = _fs(images, so)
    if images.endswith(".parquet") or (fs.isdir(path) and fs.glob(f"{path}/*.parquet") and not fs.glob(f"{path}/*.tar")):
        t = _read_parquet(images, so)
        col = next((c for c in ("image", "jpg", "png", "bytes", "img") if c in t.column_names), None)
        if col is None:
            raise InputError(f"{images}: parquet needs an image column (image, jpg, png, bytes or img)")
        data = t.column(col)
        if pa.types.is_struct(data.type):  # HF datasets: {"bytes", "path"}
            data = pc.struct_field(data, "bytes")
        keycol = next((c for c in ("key", "id", "path", "filename") if c in t.column_names), None)
        keys = t.column(keycol).to_pylist() if keycol else [str(i) for i in range(len(t))]
        for i, (k, b) in enumerate(zip(keys, data.to_pylist())):
            yield str(k), b or b"", f"parquet:{images}#{i}"
        return
    if fs.isdir(path) and not fs.glob(f"{path}/*.tar"):
        for p in sorted(fs.find(path)):
            ext = p.rsplit(".", 1)[-1].lower()
            if ext in IMAGE_EXTS:
                rel = p[len(path):].lstrip("/")
                yield rel, fs.cat_file(p), f"file:{storage.with_protocol(images, p)}"
        return
    for tar in list_tars(images, so):
        for s in read_tar_samples(tar, storage_options=so):
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            if ext is not None:
                yield s["__key__"], s[ext], f"tar:{tar}#{s['__key__']}.{ext}"


def hash_evalset(name: str, images: str, out_dir: str, *, phash_mode: str = "exact",
                 batch: int = 256, storage_options: dict | None = None) -> dict:
    """Hash an evaluation image set into ``out_dir/eval_hashes.parquet`` (replacing rows of ``name``)."""
    from tqdm import tqdm

    keys, hashes, sources, failed = [], [], [], 0
    buf: list[tuple[str, bytes, str]] = []

    def flush() -> None:
        nonlocal failed
        hs, errs = phash_bytes_batch([b for _, b, _ in buf], mode=phash_mode)
        for (k, _, src), h, e in zip(buf, hs, errs):
            if e is not None:
                failed += 1
                log.warning("eval set %s: %s skipped (%s)", name, k, e)
                continue
            keys.append(k)
            hashes.append(int(h))
            sources.append(src)
        buf.clear()

    so = storage_options
    for item in tqdm(_iter_eval_images(images, so), desc=f"hashing {name}", unit="img", disable=None):
        buf.append(item)
        if len(buf) >= batch:
            flush()
    flush()
    if not keys:
        raise InputError(f"{images}: no decodable images found for eval set {name!r}")
    new = pa.table({"dataset": [name] * len(keys), "key": keys, "phash": pa.array(hashes, pa.uint64()),
                    "source": sources}, schema=EVAL_SCHEMA)
    target = f"{out_dir.rstrip('/')}/eval_hashes.parquet"
    meta_url = f"{out_dir.rstrip('/')}/eval_hashes.json"
    meta: dict[str, Any] = {}
    if storage.exists(target, so):
        old = _read_parquet(target, so)
        old = old.filter(pc.not_equal(old.column("dataset"), name))
        new = pa.concat_tables([old.cast(EVAL_SCHEMA), new])
        if storage.exists(meta_url, so):
            meta = storage.read_json(meta_url, so)
    _write_parquet(new, target, so)
    meta[name] = {"images": images, "hashed": len(keys), "failed": failed, "phash_mode": phash_mode}
    _write_json(meta, meta_url, so)
    return {"dataset": name, "hashed": len(keys), "failed": failed, "path": target}


def eval_hashes_path(evalsets: str, storage_options: dict | None = None) -> str:
    """``eval_hashes.parquet`` given the file, its folder, or a run directory."""
    for cand in (evalsets, f"{evalsets.rstrip('/')}/eval_hashes.parquet",
                 f"{evalsets.rstrip('/')}/dedup/eval_hashes.parquet"):
        fs, p = _fs(cand, storage_options)
        if p.endswith(".parquet") and fs.exists(p):
            return cand
    raise InputError(f"no eval_hashes.parquet under {evalsets}: run `metacurate evalsets hash` first")


def load_eval_hashes(evalsets: str, storage_options: dict | None = None) -> pa.Table:
    return _read_parquet(eval_hashes_path(evalsets, storage_options), storage_options).cast(EVAL_SCHEMA)


# ----------------------------------------------------------------------------- dedup
_INDEX_CACHE: dict[tuple, tuple[NearDupIndex, pa.Table]] = {}


def _eval_index(evalsets: str, k: int, so: dict | None = None) -> tuple[NearDupIndex, pa.Table]:
    """Built once per (executor) process and reused by every task in it."""
    path = eval_hashes_path(evalsets, so)
    fs, p = _fs(path, so)
    key = (path, fs.ukey(p), k)  # ukey changes when the file is rewritten
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        table = load_eval_hashes(evalsets, so)
        _INDEX_CACHE[key] = (NearDupIndex(table.column("phash").to_numpy(), k), table)
    return _INDEX_CACHE[key]


def hash_tar(tar: str, phash_mode: str, storage_options: dict | None = None) -> pa.Table:
    """pHash of every image sample in one tar: rows (uid, tar, key, phash, status, detail)."""
    rows: dict[str, list] = {f.name: [] for f in HASH_SCHEMA}
    samples = list(read_tar_samples(tar, storage_options=storage_options))
    datas = []
    for s in samples:
        ext = next((e for e in IMAGE_EXTS if e in s), None)
        datas.append(s[ext] if ext else b"")
    hashes, errors = phash_bytes_batch(datas, mode=phash_mode)
    for s, h, err in zip(samples, hashes, errors):
        try:
            meta = json.loads(s.get("json", b"{}") or b"{}")
        except ValueError:
            meta = {}
        rows["uid"].append(str(meta.get("uid") or s["__key__"]))
        rows["tar"].append(tar)
        rows["key"].append(s["__key__"])
        rows["phash"].append(int(h))
        rows["status"].append("ok" if err is None else err.reason)
        rows["detail"].append(None if err is None else err.detail)
    return pa.table(rows, schema=HASH_SCHEMA)


def dedup_tar(tar: str, evalsets: str, out_dir: str, rejects_dir: str, k: int, phash_mode: str,
              storage_options: dict | None = None) -> dict:
    """Hash one downloaded tar, find eval near-duplicates, write its hash/overlap/reject parts."""
    so = storage_options
    index, evals = _eval_index(evalsets, k, so)
    hashes = hash_tar(tar, phash_mode, so)
    ok = np.array([s == "ok" for s in hashes.column("status").to_pylist()], dtype=bool)
    ph = hashes.column("phash").to_numpy()
    qi, ei, dist = index.query(ph[ok])
    ok_rows = np.nonzero(ok)[0]
    qi = ok_rows[qi]
    uids = hashes.column("uid").to_pylist()
    keys = hashes.column("key").to_pylist()
    ds, ek, eph = (evals.column(c).to_pylist() for c in ("dataset", "key", "phash"))
    overlap = pa.table({
        "uid": [uids[i] for i in qi], "dataset": [ds[j] for j in ei], "key": [ek[j] for j in ei],
        "hamming": pa.array(dist, pa.int32()), "eval_phash": pa.array([eph[j] for j in ei], pa.uint64()),
        "phash": pa.array(ph[qi], pa.uint64()), "tar": [tar] * len(qi), "pool_key": [keys[i] for i in qi],
    }, schema=OVERLAP_SCHEMA)
    rejects = []
    for i in np.nonzero(~ok)[0]:
        st = hashes.column("status")[int(i)].as_py()
        rejects.append({"uid": uids[i], "stage": "dedup", "reason": "corrupt_image" if st == "corrupt_image" else st,
                        "detail": hashes.column("detail")[int(i)].as_py()})
    best: dict[int, list[int]] = {}
    for n, q in enumerate(qi):
        best.setdefault(int(q), []).append(n)
    for q, ns in best.items():
        ns.sort(key=lambda n: (dist[n], ds[ei[n]], ek[ei[n]]))
        n0 = ns[0]
        more = f" (+{len(ns) - 1} more)" if len(ns) > 1 else ""
        rejects.append({"uid": uids[q], "stage": "dedup", "reason": "eval_overlap",
                        "detail": f"dataset={ds[ei[n0]]} key={ek[ei[n0]]} hamming={int(dist[n0])}{more}"})
    part = re.sub(r"[^A-Za-z0-9_-]", "_", tar.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    tar_tag = hashlib.sha1(tar.encode("utf-8")).hexdigest()[:8]  # keeps parts of same-named tars in different dirs apart
    name = f"{part}-{tar_tag}.parquet"
    _write_parquet(hashes, f"{out_dir}/hashes/{name}", so)
    _write_parquet(overlap, f"{out_dir}/_overlap/{name}", so)
    _write_parquet(_rejects_table(rejects), f"{rejects_dir}/{name}", so)
    reasons = Counter(r["reason"] for r in rejects)
    return {"tar": tar, "in": len(hashes), "out": len(hashes) - sum(reasons.values()), **{f"r_{k_}": v for k_, v in reasons.items()}}


def dedup_stage(spark: Any, download_dir: str, evalsets_dir: str, out_dir: str, rejects_dir: str,
                *, k: int = 8, phash_mode: str = "exact", storage_options: dict | None = None) -> dict:
    """Spark job: one task per downloaded tar hashes its images and queries the eval index.

    The eval index is built once per executor process from ``eval_hashes.parquet`` (read by the
    task, not shipped); only one small summary row per tar returns to the driver, and the
    ``overlap.parquet`` (contamination: few rows) is merged on the driver.
    """
    so = storage_options
    out_dir, rejects_dir = out_dir.rstrip("/"), rejects_dir.rstrip("/")
    load_eval_hashes(evalsets_dir, so)  # fail early, on the driver, with a clear message
    tars = list_tars(download_dir, so)
    for sub in ("hashes", "_overlap"):
        storage.remove(f"{out_dir}/{sub}", so)
    storage.remove(rejects_dir, so)
    storage.makedirs(rejects_dir, so)
    stats: list[dict]
    if spark is None or not tars:
        stats = [dedup_tar(t, evalsets_dir, out_dir, rejects_dir, k, phash_mode, so) for t in tars]
    else:
        def run_part(it: Iterable[Any]) -> Iterator[str]:
            for row in it:
                yield json.dumps(dedup_tar(row, evalsets_dir, out_dir, rejects_dir, k, phash_mode, so))

        from jobs.spark import progress

        rdd = spark.sparkContext.parallelize(tars, len(tars))
        with progress(spark.sparkContext, "dedup"):
            stats = [json.loads(s) for s in rdd.mapPartitions(run_part).collect()]
    tables = [_read_parquet(p, so) for p in storage.glob(f"{out_dir}/_overlap", "*.parquet", so)]
    overlap = pa.concat_tables(tables) if tables else OVERLAP_SCHEMA.empty_table()
    _write_parquet(overlap.sort_by([("uid", "ascending"), ("hamming", "ascending")]), f"{out_dir}/overlap.parquet", so)
    storage.remove(f"{out_dir}/_overlap", so)
    _write_json({"k": k, "phash_mode": phash_mode, "evalsets": evalsets_dir, "download": download_dir},
                f"{out_dir}/params.json", so)
    rejected: Counter = Counter()
    for s in stats:
        rejected.update({key[2:]: v for key, v in s.items() if key.startswith("r_")})
    per_set = Counter(overlap.column("dataset").to_pylist()) if len(overlap) else Counter()
    return _summary("dedup", sum(s["in"] for s in stats), sum(s["out"] for s in stats), dict(rejected),
                    k=k, phash_mode=phash_mode, overlap_pairs=len(overlap), overlap_by_dataset=dict(per_set))


# ----------------------------------------------------------------------------- shard
def _entry_strings(entries_path: str | None, so: dict | None) -> dict[int, str]:
    if entries_path is None:
        return {}
    t = _read_parquet(entries_path, so, columns=["entry_id", "entry"])
    return dict(zip(t.column("entry_id").to_pylist(), t.column("entry").to_pylist()))


def shard_stage(download_dir: str, dedup_dir: str, out_dir: str, rejects_dir: str, *,
                samples_per_shard: int = 1000, entries_path: str | None = None,
                storage_options: dict | None = None) -> dict:
    """Write the surviving samples (downloaded, hashed, not overlapping) as WebDataset shards.

    ``entries_path`` (``RUN/metadata/entries.parquet``; found next to ``dedup_dir`` by default)
    turns entry ids into the entry strings stored in each sample's json.
    """
    so = storage_options
    dedup_dir = dedup_dir.rstrip("/")
    if entries_path is None:
        guess = f"{dedup_dir.rsplit('/', 1)[0]}/metadata/entries.parquet"
        entries_path = guess if storage.exists(guess, so) else None
        if entries_path is None:
            log.warning("no %s: shard json will carry entry ids without entry strings", guess)
    entries = _entry_strings(entries_path, so)
    hashes = _read_parquet(f"{dedup_dir}/hashes", so)
    rejected_uids = set()
    if storage.exists(f"{dedup_dir}/overlap.parquet", so):
        rejected_uids |= set(_read_parquet(f"{dedup_dir}/overlap.parquet", so, columns=["uid"]).column("uid").to_pylist())
    by_tar: dict[str, dict[str, tuple[int, str]]] = {}
    for tar, key, ph, st in zip(*(hashes.column(c).to_pylist() for c in ("tar", "key", "phash", "status"))):
        by_tar.setdefault(tar, {})[key] = (ph, st)
    rejects: list[dict] = []

    def samples() -> Iterator[dict[str, Any]]:
        for tar in list_tars(download_dir, so):
            info = by_tar.get(tar, {})
            for s in read_tar_samples(tar, storage_options=so):
                ph, st = info.get(s["__key__"], (None, "missing_phash"))
                try:
                    meta = json.loads(s.get("json") or b"{}")
                except ValueError:
                    meta = {}
                uid = str(meta.get("uid") or s["__key__"])
                if st == "missing_phash":  # dedup never saw this sample: do not ship it unchecked
                    rejects.append({"uid": uid, "stage": "shard", "reason": "missing_phash",
                                    "detail": f"{tar}#{s['__key__']} has no row in {dedup_dir}/hashes"})
                    continue
                if st != "ok" or uid in rejected_uids:  # already a dedup reject row
                    continue
                if "jpg" not in s:
                    rejects.append({"uid": uid, "stage": "shard", "reason": "malformed_sample",
                                    "detail": f"{tar}#{s['__key__']} has no .jpg member"})
                    continue
                ids = [int(x) for x in (meta.get("entry_ids") or [])]
                yield {"key": sanitize_key(uid), "jpg": s["jpg"], "txt": meta.get("caption") or s.get("txt", b"").decode("utf-8", "replace"),
                       "json": {"uid": uid, "url": meta.get("url"), "entry_ids": ids,
                                "entries": [entries.get(i, "") for i in ids], "phash": hash_to_hex(ph),
                                "p_keep": float(meta["p_keep"]) if meta.get("p_keep") is not None else 1.0}}

    result = write_shards(samples(), out_dir, samples_per_shard, storage_options=so)
    _write_parquet(_rejects_table(rejects), f"{rejects_dir.rstrip('/')}/part-00000.parquet", so)
    n_in = result.samples + len(rejects)
    return _summary("shard", n_in, result.samples, dict(Counter(r["reason"] for r in rejects)),
                    shards=len(result.shards), shards_written=len(result.written),
                    shards_skipped=len(result.skipped), samples_per_shard=samples_per_shard)
