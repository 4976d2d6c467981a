"""The one storage layer: every read and write of the project goes through a :class:`Storage`.

A ``Storage`` binds fsspec options (S3 endpoint, keys, region) once; it is a small picklable
object, so Spark tasks, DataLoader workers and the driver all reach ``s3://`` with the same
settings and none of them depends on ``AWS_*`` variables being set in its own environment.
Local paths and ``file://`` URLs never get the options (they mean nothing there).

Writes are atomic: local files are written to a temporary name in the same folder and renamed;
on object stores a single PUT is already all-or-nothing, and stages write their ``_SUCCESS``
marker last (see ARCHITECTURE.md, "The stage contract").
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import uuid
from typing import Any, Iterator, Mapping

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import InputError

#: Variables s3fs does not read by itself but users of other AWS tools set.
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
#: A local atomic write goes to ``.tmp-<32 hex>-<name>`` first, then is renamed to ``name``.
TEMPORARY_PREFIX = ".tmp-"
_TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r"[0-9a-f]{32}-")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (where writes go through a temporary file and a rename)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def is_remote(url: str) -> bool:
    """True for ``proto://...`` URLs other than ``file://``."""
    return "://" in url and not url.startswith("file://")


def absolute(url: str) -> str:
    """A URL unchanged, a local path made absolute (resolved here, on the driver, so that Spark
    tasks running in another working directory open the same files)."""
    if is_remote(url):
        return url.rstrip("/") or url
    path = url[len("file://"):] if url.startswith("file://") else url
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for URLs (always ``/``) and local paths (the OS separator)."""
    if is_remote(base):
        proto, rest = base.split("://", 1)
        return proto + "://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def relative(url: str, base: str) -> str:
    """``url`` relative to ``base`` when it lies under it (what a run stores instead of absolute
    paths, so a run directory can be copied or moved); else ``url`` unchanged."""
    b = base.rstrip("/") + "/"
    if url.startswith(b):
        return url[len(b):]
    if not is_remote(url) and not is_remote(base):
        try:
            rel = os.path.relpath(url, base)
        except ValueError:
            return url
        return url if rel.startswith("..") else rel.replace(os.sep, "/")
    return url


def _with_protocol(template_url: str, path: str) -> str:
    """Re-attach the protocol of ``template_url`` to a path an fsspec filesystem returned."""
    if is_remote(template_url):
        return template_url.split("://", 1)[0] + "://" + path
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps_json(obj: Any) -> bytes:
    """The project's JSON file form: indented, keys sorted, numpy scalars as numbers."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()


class Storage:
    """fsspec access with one set of options (``endpoint_url``, ``key``, ``secret``,
    ``client_kwargs``) for remote URLs."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = dict(options or {})

    @classmethod
    def from_env(cls, options: Mapping[str, Any] | None = None) -> "Storage":
        """Explicit options, else what the environment says: ``AWS_ENDPOINT_URL`` (which s3fs does
        not read itself); keys and region are left to s3fs's own credential chain."""
        opts = dict(options or {})
        endpoint = next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
        return cls(opts)

    def __repr__(self) -> str:
        shown = {k: ("***" if k in ("key", "secret", "token") and v else v) for k, v in self.options.items()}
        return f"Storage({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.options == self.options

    def __hash__(self) -> int:
        return hash(json.dumps(self.options, sort_keys=True, default=str))

    # ------------------------------------------------------------------ filesystem
    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """(filesystem, path without protocol) for a URL or local path."""
        return fsspec.core.url_to_fs(url, **(self.options if is_remote(url) else {}))

    def exists(self, url: str) -> bool:
        fs, path = self.fs(url)
        return fs.exists(path)

    def isdir(self, url: str) -> bool:
        fs, path = self.fs(url)
        return fs.isdir(path)

    def isfile(self, url: str) -> bool:
        fs, path = self.fs(url)
        return fs.isfile(path)

    def size(self, url: str) -> int:
        fs, path = self.fs(url)
        return int(fs.size(path))

    def stamp(self, url: str) -> tuple[str, int | None, str]:
        """``(url, size, version)`` with version = ETag on object stores, else the mtime: cheap,
        and it changes whenever the file is rewritten (what fingerprints use)."""
        fs, path = self.fs(url)
        try:
            info = fs.info(path)
        except FileNotFoundError as exc:
            raise InputError(f"input file not found: {url}") from exc
        version = (info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
                   or info.get("created") or "")
        return url, info.get("size"), str(version)

    def ukey(self, url: str) -> str:
        fs, path = self.fs(url)
        return str(fs.ukey(path))

    def ls(self, url: str) -> list[str]:
        """Direct children (URLs with the protocol kept), sorted."""
        fs, path = self.fs(url)
        return sorted(_with_protocol(url, p.rstrip("/")) for p in fs.ls(path, detail=False))

    def glob(self, url: str, pattern: str | None = None) -> list[str]:
        """Matches of ``url`` (a glob) or of ``url/pattern``, sorted, protocol kept."""
        fs, path = self.fs(url)
        full = f"{path.rstrip('/')}/{pattern}" if pattern else path
        return [_with_protocol(url, p) for p in sorted(fs.glob(full))]

    def list_files(self, url: str, suffix: str = ".parquet") -> list[str]:
        """A file, or every ``*suffix`` file under a folder (recursive), sorted; names and folders
        starting with ``_`` or ``.`` (markers, side files, temporaries) are skipped, as Spark and
        Arrow skip them."""
        fs, path = self.fs(url)
        if not fs.exists(path):
            raise InputError(f"input not found: {url}")
        if fs.isfile(path):
            return [url]
        root = path.rstrip("/")
        found = []
        for p in fs.find(root):
            rel = p[len(root):].lstrip("/")
            if any(part.startswith((".", "_")) for part in rel.split("/")) or not p.endswith(suffix):
                continue
            found.append(_with_protocol(url, p))
        return sorted(found)

    def expand(self, spec: str) -> list[str]:
        """Shard-style specs: brace patterns (``{000000..000009}``, ``{a,b}``, ``{0..8..2}``),
        several sources joined by ``::`` (open_clip's and webdataset's notation), globs and
        folders (every ``*.tar`` in it). Missing files are an error naming them."""
        from braceexpand import braceexpand

        urls: list[str] = []
        missing: list[str] = []
        for source in spec.split("::"):
            source = source.strip()
            if not source:
                continue
            for pattern in braceexpand(source):
                fs, path = self.fs(pattern)
                if any(ch in path for ch in "*?["):
                    urls.extend(_with_protocol(pattern, p) for p in sorted(fs.glob(path)))
                elif fs.isdir(path):
                    urls.extend(self.glob(pattern, "*.tar"))
                elif fs.exists(path):
                    urls.append(pattern)
                else:
                    missing.append(pattern)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{missing[0]} does not exist{more}; give existing files, a folder, a glob "
                             "or a brace pattern such as 'DIR/{000000..000009}.tar'")
        if not urls:
            raise InputError(f"nothing matches {spec!r}")
        return urls

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def open(self, url: str, mode: str = "rb") -> Iterator[Any]:
        fs, path = self.fs(url)
        with fs.open(path, mode) as f:
            yield f

    def read_bytes(self, url: str) -> bytes:
        fs, path = self.fs(url)
        return fs.cat_file(path)

    def read_json(self, url: str) -> Any:
        return json.loads(self.read_bytes(url).decode("utf-8"))

    @contextlib.contextmanager
    def parquet_file(self, url: str) -> Iterator[pq.ParquetFile]:
        with self.open(url, "rb") as f:
            yield pq.ParquetFile(f)

    def read_parquet(self, url: str, columns: list[str] | None = None) -> pa.Table:
        """One parquet file, or every part under a folder (``list_files`` rules) concatenated."""
        fs, path = self.fs(url)
        if not fs.isdir(path):
            with fs.open(path, "rb") as f:
                return pq.read_table(f, columns=columns)
        tables = [self.read_parquet(f, columns) for f in self.list_files(url, ".parquet")]
        if not tables:
            raise InputError(f"{url}: no parquet files")
        return pa.concat_tables(tables, promote_options="default")

    # ------------------------------------------------------------------ writing
    def makedirs(self, url: str) -> None:
        fs, path = self.fs(url)
        fs.makedirs(path, exist_ok=True)

    def remove(self, url: str) -> None:
        fs, path = self.fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def write_bytes(self, url: str, data: bytes) -> None:
        """Atomic: local = temporary file (removed on failure) + fsync + rename; object stores = one PUT."""
        fs, path = self.fs(url)
        if _is_local(fs):
            folder = os.path.dirname(path) or "."
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with fs.open(path, "wb") as f:
                f.write(data)

    def remove_temporaries(self, url: str) -> int:
        """Delete the temporary files of :meth:`write_bytes` under the folder ``url`` (recursive)
        that a killed writer left behind, before its rename; returns how many. Object stores get
        one PUT per file and have none."""
        fs, path = self.fs(url)
        if not _is_local(fs) or not os.path.isdir(path):
            return 0
        removed = 0
        for folder, _, files in os.walk(path):
            for name in files:
                if _TEMPORARY.match(name):
                    try:
                        os.remove(os.path.join(folder, name))
                        removed += 1
                    except FileNotFoundError:  # its writer finished (renamed) or cleaned it meanwhile
                        pass
        return removed

    def write_json(self, url: str, obj: Any) -> None:
        self.write_bytes(url, dumps_json(obj))

    def write_parquet(self, table: pa.Table, url: str, *, use_dictionary: bool | list[str] = True,
                      write_statistics: bool = True) -> None:
        """zstd parquet, written atomically."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", use_dictionary=use_dictionary,
                       write_statistics=write_statistics)
        self.write_bytes(url, buf.getvalue())

    def copy(self, src: str, dst: str) -> None:
        """One file, possibly across filesystems (read here, written atomically there)."""
        self.write_bytes(dst, self.read_bytes(src))

    def put_file(self, local_path: str, url: str) -> None:
        fs, path = self.fs(url)
        fs.put_file(local_path, path)

    def get_file(self, url: str, local_path: str) -> None:
        fs, path = self.fs(url)
        fs.get_file(path, local_path)

    def upload_folder(self, local_dir: str, url: str) -> list[str]:
        """Every file of a local folder (flat) to ``url/``; returns the names copied. For tools
        that write only through their own filesystem set-up (they write locally, the files then
        travel with these options)."""
        names = []
        for name in sorted(os.listdir(local_dir)):
            src = os.path.join(local_dir, name)
            if os.path.isfile(src):
                self.put_file(src, join(url, name))
                names.append(name)
        return names

    def appender(self, url: str, keep: bool = True) -> "Appender":
        """A file written a piece at a time (a log, an event file); see :class:`Appender`.
        ``keep``: an existing file's content stays in front of what is written."""
        return Appender(self, url, keep)


class Appender:
    """A file grown a piece at a time. On a local disk each piece is appended and flushed at once
    (what a crash leaves is readable). Object stores cannot append: the pieces are kept in memory
    and the whole file is rewritten at every :meth:`flush` and at :meth:`close`."""

    def __init__(self, storage: Storage, url: str, keep: bool = True) -> None:
        self.storage, self.url = storage, url
        self._pieces: list[bytes] = []
        self._fh = None
        if is_remote(url):
            if keep and storage.exists(url):
                self._pieces.append(storage.read_bytes(url))
        else:
            storage.makedirs(os.path.dirname(url) or ".")
            self._fh = open(url, "ab" if keep else "wb")

    def write(self, data: bytes) -> None:
        if self._fh is not None:
            self._fh.write(data)
            self._fh.flush()
        else:
            self._pieces.append(data)

    def flush(self) -> None:
        """Nothing to do locally (every write is flushed); on an object store, rewrite the file."""
        if self._fh is None:
            self.storage.write_bytes(self.url, b"".join(self._pieces))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        else:
            self.flush()
