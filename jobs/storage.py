"""Paths that may be local or ``s3://`` (fsspec), with atomic writes.

Spark here has no S3 connector (no hadoop-aws jars), so every read and write of row data happens
inside tasks with pyarrow + fsspec, and the driver only lists files. That also works on any cluster
without connector jars. ``storage_options`` (endpoint, key, secret) travel to tasks as a small dict.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import InputError


def storage_options_from_env(options: dict | None = None) -> dict:
    """Explicit options win; otherwise s3fs reads AWS_* variables. AWS_ENDPOINT_URL is honoured."""
    opts = dict(options or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
        opts["endpoint_url"] = endpoint
    return opts


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def get_fs(url: str, storage_options: dict | None = None):
    """(filesystem, path-without-protocol) for a URL or local path."""
    opts = storage_options if is_remote(url) else {}
    fs, path = fsspec.core.url_to_fs(url, **(opts or {}))
    return fs, path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        proto, rest = base.split("://", 1)
        return proto + "://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = get_fs(url, storage_options)
    return fs.exists(path)


def _with_protocol(template_url: str, path: str) -> str:
    if is_remote(template_url):
        return template_url.split("://", 1)[0] + "://" + path
    return path


def list_files(url: str, suffix: str = ".parquet", storage_options: dict | None = None) -> list[str]:
    """A file, or every ``*suffix`` file under a directory (recursive), sorted; hidden and
    ``_``-prefixed files (markers, temporaries) skipped."""
    fs, path = get_fs(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"input not found: {url}")
    if fs.isfile(path):
        return [url]
    found = []
    for p in fs.find(path):
        name = posixpath.basename(p)
        if name.startswith((".", "_")) or not name.endswith(suffix):
            continue
        found.append(_with_protocol(url, p))
    return sorted(found)


def remove(url: str, storage_options: dict | None = None) -> None:
    fs, path = get_fs(url, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def makedirs(url: str, storage_options: dict | None = None) -> None:
    fs, path = get_fs(url, storage_options)
    fs.makedirs(path, exist_ok=True)


def write_bytes_atomic(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Local: temp file + rename. Object stores: a single PUT is already all-or-nothing."""
    fs, path = get_fs(url, storage_options)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def write_parquet_atomic(table: pa.Table, url: str, storage_options: dict | None = None) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes_atomic(url, buf.getvalue(), storage_options)


def read_parquet(url: str, storage_options: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    fs, path = get_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def write_json_atomic(url: str, obj: Any, storage_options: dict | None = None) -> None:
    write_bytes_atomic(url, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode(),
                       storage_options)


def read_json(url: str, storage_options: dict | None = None) -> Any:
    fs, path = get_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def with_protocol(template_url: str, path: str) -> str:
    """Re-attach the protocol of ``template_url`` to a path an fsspec filesystem returned."""
    return _with_protocol(template_url, path)


def glob(url: str, pattern: str, storage_options: dict | None = None) -> list[str]:
    """``url/pattern`` matches (non-recursive glob), sorted, with the protocol of ``url``."""
    fs, path = get_fs(url, storage_options)
    return [_with_protocol(url, p) for p in sorted(fs.glob(f"{path.rstrip('/')}/{pattern}"))]


def read_parquet_any(url: str, storage_options: dict | None = None,
                     columns: list[str] | None = None) -> pa.Table:
    """One parquet file, or every part under a folder (``list_files`` rules) concatenated."""
    fs, path = get_fs(url, storage_options)
    if not fs.isdir(path):
        return read_parquet(url, storage_options, columns)
    tables = [read_parquet(f, storage_options, columns) for f in list_files(url, ".parquet", storage_options)]
    if not tables:
        raise InputError(f"{url}: no parquet files")
    return pa.concat_tables(tables, promote_options="default")


def copy_tree_to(local_dir: str, url: str, storage_options: dict | None = None) -> list[str]:
    """Upload every file of a local folder (flat) to ``url/``; returns the names copied.

    Used where a tool (img2dataset) only writes through its own filesystem setup: it writes
    locally, then the files travel with our storage options."""
    names = []
    for name in sorted(os.listdir(local_dir)):
        src = os.path.join(local_dir, name)
        if os.path.isfile(src):
            fs, path = get_fs(join(url, name), storage_options)
            fs.put_file(src, path)
            names.append(name)
    return names
