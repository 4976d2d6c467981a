"""WebDataset shard writer: atomic per shard, resumable by shard, safe member names.

Why this and not ``webdataset.ShardWriter``: we need (a) a final ``NNNNNN.tar`` name that never
holds a truncated tar (write ``NNNNNN.tar.tmp``, then rename — a crash leaves only ``*.tmp``),
(b) resume: a re-run skips shards whose final tar exists, (c) keys that cannot escape the output
folder nor confuse webdataset (which splits a member name at the first dot), and (d) open_clip's
``sizes.json`` plus a ``manifest.parquet`` listing every sample.

A sample is a dict ``{"key": str, "jpg": bytes, "txt": str, "json": dict}``; the json dict
carries uid, url, entry_ids, entries, phash (16 hex digits) and p_keep (the shard contract).
Shard ``n`` holds samples ``[n*S, (n+1)*S)`` of the (deterministic) input order, so resuming
re-reads the input and only encodes the missing shards.
"""
from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curation.storage import Storage

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema([
    ("shard", pa.string()), ("key", pa.string()), ("uid", pa.string()), ("url", pa.string()),
    ("phash", pa.uint64()), ("p_keep", pa.float64()), ("bytes", pa.int64()),
])
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_KEY = 120


def _url_to_fs(url: str, storage: Storage | None):
    return (storage or Storage.from_env()).fs(url)


def sanitize_key(key: str) -> str:
    """A member-name-safe key: only ``[A-Za-z0-9_-]`` (no ``/``, ``..``, dots, absolute paths)."""
    safe = _UNSAFE.sub("_", str(key))[:_MAX_KEY]
    return safe or "_"


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


@dataclass
class ShardResult:
    shards: list[str]      # basenames of every shard of this write (written or skipped)
    written: list[str]     # basenames written now
    skipped: list[str]     # basenames found complete and skipped
    samples: int           # samples in all shards


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = "metacurate"
    tar.addfile(info, io.BytesIO(data))


def _write_one_shard(fs, out_path: str, index: int,
                     samples: list[dict[str, Any]]) -> None:
    """Write shard ``index`` atomically: manifest part, then ``.tar.tmp`` renamed to the final name."""
    name = shard_name(index)
    final = f"{out_path}/{name}"
    tmp = final + ".tmp"
    rows: dict[str, list] = {f.name: [] for f in MANIFEST_SCHEMA}
    seen: set[str] = set()
    with fs.open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            key = sanitize_key(s["key"])
            base, n = key, 1
            while key in seen:  # keys must be unique inside a shard
                key, n = f"{base}_{n}", n + 1
            seen.add(key)
            meta = dict(s.get("json") or {})
            jpg = bytes(s["jpg"])
            _add_member(tar, f"{key}.jpg", jpg)
            _add_member(tar, f"{key}.txt", str(s.get("txt") or "").encode("utf-8"))
            _add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            rows["shard"].append(name)
            rows["key"].append(key)
            rows["uid"].append(meta.get("uid"))
            rows["url"].append(meta.get("url"))
            ph = meta.get("phash")
            rows["phash"].append(int(ph, 16) if isinstance(ph, str) and ph else ph)
            rows["p_keep"].append(meta.get("p_keep"))
            rows["bytes"].append(len(jpg))
    part = f"{out_path}/_manifest/{index:06d}.parquet"
    with fs.open(part + ".tmp", "wb") as f:
        pq.write_table(pa.table(rows, schema=MANIFEST_SCHEMA), f)
    fs.mv(part + ".tmp", part)
    fs.mv(tmp, final)  # last: the final name appears only once the tar is complete


def _chunks(it: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    buf: list[dict[str, Any]] = []
    for s in it:
        buf.append(s)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def write_shards(samples: Iterable[dict[str, Any]], out_dir: str, samples_per_shard: int,
                 start_shard: int = 0, storage: Storage | None = None) -> ShardResult:
    """Write samples to ``out_dir/{000000..N}.tar`` + ``sizes.json`` + ``manifest.parquet``.

    Shards whose final tar exists are skipped (their samples are consumed, not re-encoded);
    stale ``*.tmp`` files from an interrupted write are overwritten.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    fs, out_path = _url_to_fs(out_dir, storage)
    fs.makedirs(out_path, exist_ok=True)
    fs.makedirs(f"{out_path}/_manifest", exist_ok=True)
    existing = {p.rsplit("/", 1)[-1] for p in fs.glob(f"{out_path}/*.tar")}
    result = ShardResult([], [], [], 0)
    for i, chunk in enumerate(_chunks(samples, samples_per_shard)):
        index = start_shard + i
        name = shard_name(index)
        result.shards.append(name)
        if name in existing and fs.exists(f"{out_path}/_manifest/{index:06d}.parquet"):
            result.skipped.append(name)
            continue
        _write_one_shard(fs, out_path, index, chunk)
        result.written.append(name)
        log.info("wrote shard %s (%d samples)", name, len(chunk))
    finalize(out_dir, result.shards, storage)
    sizes = json.loads(fs.cat_file(f"{out_path}/sizes.json"))
    result.samples = sum(sizes.values())
    return result


def finalize(out_dir: str, shards: list[str] | None = None, storage: Storage | None = None) -> None:
    """(Re)build ``sizes.json`` and ``manifest.parquet`` from the per-shard manifest parts."""
    fs, out_path = _url_to_fs(out_dir, storage)
    if shards is None:
        shards = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{out_path}/*.tar"))
    tables = []
    for name in shards:
        with fs.open(f"{out_path}/_manifest/{name[:-4]}.parquet", "rb") as f:
            tables.append(pq.read_table(f))
    manifest = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    sizes: dict[str, int] = {name: 0 for name in shards}
    for name in manifest.column("shard").to_pylist():
        sizes[name] += 1
    with fs.open(f"{out_path}/manifest.parquet.tmp", "wb") as f:
        pq.write_table(manifest, f)
    fs.mv(f"{out_path}/manifest.parquet.tmp", f"{out_path}/manifest.parquet")
    with fs.open(f"{out_path}/sizes.json.tmp", "w") as f:
        json.dump(sizes, f, indent=1)
    fs.mv(f"{out_path}/sizes.json.tmp", f"{out_path}/sizes.json")


def read_tar_samples(path: str, storage: Storage | None = None) -> Iterator[dict[str, Any]]:
    """Group a webdataset tar's members by key (first dot) -> {"__key__", ext: bytes, ...}.

    Why our own reader: the dedup stage and the audit stream img2dataset/our tars without
    torch; member names with ``/`` or ``..`` are refused (never trusted as paths).
    """
    fs, p = _url_to_fs(path, storage)
    with fs.open(p, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        current: dict[str, Any] | None = None
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            if name.startswith("/") or ".." in name.split("/"):
                log.warning("%s: skipping unsafe member name %r", path, name)
                continue
            base = name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = data
        if current is not None:
            yield current
