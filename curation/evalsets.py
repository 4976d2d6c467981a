"""Perceptual hashes of evaluation image sets and of WebDataset tars (plain Python, no Spark).

Both the dedup stage and the overlap audit use these, so they live at the bottom.

An eval-hash folder holds one parquet file per evaluation set (``<name>.parquet``: dataset, key,
phash:uint64, source) plus ``_evalsets.json`` (how each set was hashed). ``source`` says where the
image can be fetched again for the audit page: ``file:PATH``, ``tar:URL#MEMBER`` or ``parquet:URL#ROW``.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import InputError
from curation.phash import colour_signatures_bytes, phash_bytes_batch
from curation.shards import read_tar_samples
from curation.storage import Storage, absolute, join

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
EVAL_SCHEMA = pa.schema([("dataset", pa.string()), ("key", pa.string()), ("phash", pa.uint64()),
                         ("source", pa.string()), ("colour", pa.binary())])
#: The columns every eval hash file has; ``colour`` (the second check's signature) came later.
REQUIRED = ("dataset", "key", "phash", "source")
#: One row per sample of a tar: ``tar`` is the name the caller gives (relative to the run).
HASH_SCHEMA = pa.schema([("uid", pa.string()), ("tar", pa.string()), ("key", pa.string()),
                         ("phash", pa.uint64()), ("status", pa.string()), ("detail", pa.string())])
EVALSETS_META = "_evalsets.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _image_member(sample: dict) -> str | None:
    return next((e for e in IMAGE_EXTS if e in sample), None)


def iter_images(images: str, storage: Storage) -> Iterator[tuple[str, bytes, str]]:
    """``(key, encoded bytes, source)`` from a folder (searched recursively), WebDataset tars
    (a folder of tars, a glob or a brace pattern) or a parquet with an image-bytes column."""
    fs, path = storage.fs(images)
    is_dir = fs.isdir(path)
    if images.endswith(".parquet") or (is_dir and fs.glob(f"{path}/*.parquet") and not fs.glob(f"{path}/*.tar")):
        t = storage.read_parquet(images)
        col = next((c for c in ("image", "jpg", "png", "bytes", "img") if c in t.column_names), None)
        if col is None:
            raise InputError(f"{images}: parquet needs an image column (image, jpg, png, bytes or img)")
        data = t.column(col)
        if pa.types.is_struct(data.type):  # Hugging Face datasets: {"bytes", "path"}
            data = pc.struct_field(data, "bytes")
        keycol = next((c for c in ("key", "id", "path", "filename") if c in t.column_names), None)
        keys = t.column(keycol).to_pylist() if keycol else [str(i) for i in range(len(t))]
        for i, (k, b) in enumerate(zip(keys, data.to_pylist())):
            yield str(k), b or b"", f"parquet:{images}#{i}"
        return
    if is_dir and not fs.glob(f"{path}/*.tar"):
        root = path.rstrip("/")
        for p in sorted(fs.find(root)):
            if p.rsplit(".", 1)[-1].lower() in IMAGE_EXTS:
                rel = p[len(root):].lstrip("/")
                yield rel, fs.cat_file(p), f"file:{join(images, rel)}"
        return
    for tar in storage.expand(images):
        for s in read_tar_samples(tar, storage):
            ext = _image_member(s)
            if ext is not None:
                yield s["__key__"], s[ext], f"tar:{tar}#{s['__key__']}.{ext}"


def hash_evalset(name: str, images: str, out_dir: str, storage: Storage, *, phash_mode: str = "exact",
                 batch: int = 256) -> dict:
    """Hash one evaluation set into ``out_dir/<name>.parquet`` (replacing an earlier hashing of it)."""
    from tqdm import tqdm

    if not name or _SAFE.sub("", name) != name:
        raise InputError(f"eval set name {name!r}: use letters, digits, '.', '_' or '-' (it names a file)")
    images = absolute(images)  # sources are stored: they must not depend on the working directory
    keys: list[str] = []
    hashes: list[int] = []
    sources: list[str] = []
    colours: list[bytes] = []
    failed = 0
    buf: list[tuple[str, bytes, str]] = []

    def flush() -> None:
        nonlocal failed
        datas = [b for _, b, _ in buf]
        hs, errs = phash_bytes_batch(datas, mode=phash_mode)
        sigs, _ = colour_signatures_bytes(datas)
        for (k, _, src), h, e, sig in zip(buf, hs, errs, sigs):
            if e is not None:
                failed += 1
                log.warning("eval set %s: %s skipped (%s)", name, k, e)
                continue
            keys.append(k)
            hashes.append(int(h))
            sources.append(src)
            colours.append(sig.tobytes())
        buf.clear()

    for item in tqdm(iter_images(images, storage), desc=f"hashing {name}", unit="img", disable=None):
        buf.append(item)
        if len(buf) >= batch:
            flush()
    flush()
    if not keys:
        raise InputError(f"{images}: no decodable images found for eval set {name!r}")
    table = pa.table({"dataset": [name] * len(keys), "key": keys, "phash": pa.array(hashes, pa.uint64()),
                      "source": sources, "colour": pa.array(colours, pa.binary())}, schema=EVAL_SCHEMA)
    target = join(out_dir, f"{name}.parquet")
    storage.write_parquet(table, target)
    meta_url = join(out_dir, EVALSETS_META)
    meta: dict[str, Any] = storage.read_json(meta_url) if storage.exists(meta_url) else {}
    meta[name] = {"images": images, "hashed": len(keys), "failed": failed, "phash_mode": phash_mode}
    storage.write_json(meta_url, meta)
    return {"dataset": name, "hashed": len(keys), "failed": failed, "path": target}


def eval_hash_files(evalsets: str, storage: Storage) -> list[str]:
    """The hash files of an eval-hash folder (or the one parquet file given)."""
    if not storage.exists(evalsets):
        raise InputError(f"no eval hashes at {evalsets}: run `metacurate evalsets hash --name NAME "
                         f"--images PATH --out {evalsets}` first")
    files = storage.list_files(evalsets, ".parquet")
    if not files:
        raise InputError(f"{evalsets} holds no eval hash files: run `metacurate evalsets hash` first")
    return files


def load_eval_hashes(evalsets: str, storage: Storage) -> pa.Table:
    """Every eval set's hashes (``EVAL_SCHEMA``) from an eval-hash folder or file."""
    tables = []
    for f in eval_hash_files(evalsets, storage):
        t = storage.read_parquet(f)
        missing = [c for c in REQUIRED if c not in t.column_names]
        if missing:
            raise InputError(f"{f} lacks column(s) {missing}; it is not an eval hash file "
                             "(`metacurate evalsets hash` writes them)")
        if "colour" not in t.column_names:  # hashed before the colour check existed: pHash only
            log.warning("%s has no colour signatures: its pairs are not double-checked (hash it again)", f)
            t = t.append_column("colour", pa.nulls(len(t), pa.binary()))
        tables.append(t.select(EVAL_SCHEMA.names).cast(EVAL_SCHEMA))
    return pa.concat_tables(tables)


def hash_tar(tar: str, storage: Storage, phash_mode: str = "exact", name: str | None = None,
             images: list[bytes] | None = None) -> pa.Table:
    """pHash of every sample of one tar: rows ``HASH_SCHEMA``; ``tar`` holds ``name`` (default the
    URL), the uid comes from the sample's json (else its key). ``images``, when given, receives
    each row's encoded image (for a second look at a few of them without reading the tar again)."""
    samples = list(read_tar_samples(tar, storage))
    datas = [s[ext] if (ext := _image_member(s)) else b"" for s in samples]
    if images is not None:
        images.extend(datas)
    hashes, errors = phash_bytes_batch(datas, mode=phash_mode)
    rows: dict[str, list] = {f.name: [] for f in HASH_SCHEMA}
    for s, h, err in zip(samples, hashes, errors):
        try:
            meta = json.loads(s.get("json", b"{}") or b"{}")
        except ValueError:
            meta = {}
        rows["uid"].append(str(meta.get("uid") or s["__key__"]))
        rows["tar"].append(name or tar)
        rows["key"].append(s["__key__"])
        rows["phash"].append(int(h))
        rows["status"].append("ok" if err is None else err.reason)
        rows["detail"].append(None if err is None else err.detail)
    return pa.table(rows, schema=HASH_SCHEMA)
