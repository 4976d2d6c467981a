"""The run directory: where each stage keeps its data, markers and summary (ARCHITECTURE.md,
"The run directory").

A run directory is a local path or an object-store URL bound to a :class:`~curation.storage.Storage`.
Every stage owns one folder (``RUN/<folder>/``) and one reject folder (``RUN/rejects/<stage>/``).
Inside a stage folder, data files are plain parquet of one schema; everything else is
``_``-prefixed, which pandas, pyarrow, Spark and DuckDB all skip:

* ``_STARTED``      the fingerprint of the work in progress (resume keeps its units),
* ``_units/N.json`` one marker per finished work unit (written last by the unit),
* ``_summary.json`` in / out / rejected-by-reason and the stage's own figures,
* ``_SUCCESS``      written last, with the fingerprint: the stage is complete.

Nothing absolute is stored inside a run, so a run directory can be copied or moved.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from curation.errors import InputError
from curation.storage import Storage, absolute, join

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
STARTED = "_STARTED"
SUMMARY = "_summary.json"
UNITS = "_units"
REJECTS = "rejects"

REJECT_SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string()), ("detail", pa.string())])


def fingerprint(*parts: Any) -> str:
    """A short stable digest of JSON-able parts (config values, upstream fingerprints, input stamps)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StageDir:
    """One stage's folder and reject folder, with its markers."""

    def __init__(self, url: str, storage: Storage, rejects_url: str | None = None, name: str = "") -> None:
        self.url = url
        self.storage = storage
        self.rejects_url = rejects_url
        self.name = name

    def __repr__(self) -> str:
        return f"StageDir({self.url!r})"

    def path(self, *parts: str) -> str:
        return join(self.url, *parts)

    def rejects(self, *parts: str) -> str:
        if self.rejects_url is None:
            raise ValueError(f"{self.url} has no reject folder")
        return join(self.rejects_url, *parts)

    # ------------------------------------------------------------------ markers
    def _read_marker(self, name: str) -> dict | None:
        """A JSON marker; None when absent. An empty or unreadable marker counts as absent (with
        a warning): a zero-byte file left by a crashed copy must not crash the run."""
        url = self.path(name)
        try:
            raw = self.storage.read_bytes(url)
        except (FileNotFoundError, OSError):
            return None
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s is not a marker this tool wrote (%d bytes of non-JSON); ignoring it", url, len(raw))
            return None
        return obj if isinstance(obj, dict) else None

    def success(self) -> dict | None:
        return self._read_marker(SUCCESS)

    def started(self) -> dict | None:
        return self._read_marker(STARTED)

    def summary(self) -> dict | None:
        return self._read_marker(SUMMARY)

    def is_complete(self) -> bool:
        return self.success() is not None

    def mark_started(self, fp: str) -> None:
        self.storage.write_json(self.path(STARTED), {"fingerprint": fp, "started_at": utc_now()})

    def write_summary(self, summary: dict) -> None:
        self.storage.write_json(self.path(SUMMARY), summary)

    def write_success(self, fp: str, **extra: Any) -> None:
        self.storage.write_json(self.path(SUCCESS), {"fingerprint": fp, "finished_at": utc_now(), **extra})
        self.storage.remove(self.path(STARTED))

    def remove_temporaries(self) -> int:
        """Delete what writers killed mid-write left in the stage folder and its reject folder
        (``Storage.remove_temporaries``); returns how many files."""
        n = self.storage.remove_temporaries(self.url)
        if self.rejects_url:
            n += self.storage.remove_temporaries(self.rejects_url)
        return n

    def reset(self, keep: Sequence[str] = ()) -> None:
        """Empty the stage folder and its reject folder (files named in ``keep`` survive)."""
        kept = {}
        for name in keep:
            url = self.path(name)
            if self.storage.exists(url):
                kept[name] = self.storage.read_bytes(url)
        self.storage.remove(self.url)
        if self.rejects_url:
            self.storage.remove(self.rejects_url)
        self.storage.makedirs(self.url)
        for name, data in kept.items():
            self.storage.write_bytes(self.path(name), data)

    # ------------------------------------------------------------------ work units
    def unit_marker(self, unit_id: int) -> str:
        return self.path(UNITS, f"{unit_id:06d}.json")

    def write_unit(self, unit_id: int, summary: dict) -> None:
        self.storage.write_json(self.unit_marker(unit_id), summary)

    def done_units(self) -> dict[int, dict]:
        """Markers of finished units (an unreadable one is ignored: that unit runs again)."""
        url = self.path(UNITS)
        if not self.storage.exists(url):
            return {}
        done = {}
        for f in self.storage.list_files(url, ".json"):
            try:
                d = json.loads(self.storage.read_bytes(f).decode("utf-8"))
                done[int(d["unit"])] = d
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                log.warning("%s is unreadable; its unit runs again", f)
        return done

    def reject_rows(self) -> int:
        """Rows in the stage's reject folder (footers only)."""
        if not self.rejects_url or not self.storage.exists(self.rejects_url):
            return 0
        return parquet_rows(self.storage, self.storage.list_files(self.rejects_url, ".parquet"))

    def part_files(self, prefix: str = "part-") -> list[str]:
        """The stage's data part files (``part-*.parquet``), sorted."""
        if not self.storage.exists(self.url):
            return []
        return [f for f in self.storage.list_files(self.url, ".parquet")
                if f.rsplit("/", 1)[-1].startswith(prefix)]


def parquet_rows(storage: Storage, urls: Sequence[str]) -> int:
    """Total rows of some parquet files, from their footers (no data is read)."""
    from concurrent.futures import ThreadPoolExecutor

    def rows(url: str) -> int:
        with storage.parquet_file(url) as pf:
            return pf.metadata.num_rows

    if not urls:
        return 0
    with ThreadPoolExecutor(min(16, len(urls))) as ex:
        return sum(ex.map(rows, urls))


class RunDir:
    """A run directory bound to its storage. The URL is made absolute here, once, on the driver."""

    def __init__(self, url: str, storage: Storage | None = None) -> None:
        if not url:
            raise InputError("no run directory given (config key `run_dir`, or --out)")
        self.storage = storage or Storage.from_env()
        self.url = absolute(url)

    def __repr__(self) -> str:
        return f"RunDir({self.url!r})"

    def path(self, *parts: str) -> str:
        return join(self.url, *parts)

    def stage(self, name: str, folder: str | None = None) -> StageDir:
        return StageDir(self.path(folder or name), self.storage, self.path(REJECTS, name), name)

    def exists(self) -> bool:
        return self.storage.exists(self.url)


# --------------------------------------------------------------------------- reject rows
def _labels(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    """A string column from small integer codes (Arrow dictionary decode, no per-row Python)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(list(names))).cast(pa.string())


def reject_table(uids: pa.Array, stage: str, codes: np.ndarray, names: Sequence[str],
                 details: dict[int, str] | Sequence[str] | pa.Array | None = None) -> pa.Table:
    """Reject rows ``uid, stage, reason, detail``: ``reason = names[code]`` per row. ``details``
    is a full column, or a map row -> detail for the few rows that carry one ("" elsewhere)."""
    n = len(uids)
    if details is None or (isinstance(details, dict) and not details):
        detail = _labels(np.zeros(n, np.int8), ("",))
    elif isinstance(details, dict):
        col = [""] * n
        for i, d in details.items():
            col[i] = d
        detail = pa.array(col, pa.string())
    else:
        detail = details if isinstance(details, pa.Array) else pa.array(list(details), pa.string())
    return pa.Table.from_arrays([uids, _labels(np.zeros(n, np.int8), (stage,)), _labels(codes, names), detail],
                                schema=REJECT_SCHEMA)


def reject_rows(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Reject rows from dicts (for stages with few rejects, e.g. per image)."""
    return pa.Table.from_pylist(list(rows), schema=REJECT_SCHEMA)


def reason_counts(codes: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """``{reason: rows}`` of the non-zero codes."""
    binc = np.bincount(codes.astype(np.int64), minlength=len(names))
    return {names[c]: int(binc[c]) for c in range(1, len(names)) if binc[c]}


# --------------------------------------------------------------------------- the run lock
LOCK = "_LOCK"


class RunLocked(InputError):
    """Another live process holds the run directory."""


class RunLock:
    """A lease on a run directory, so two jobs never write into one run at the same time.

    ``RUN/_LOCK`` holds the owner (a random id), host, pid, command, when it started and a
    heartbeat refreshed every ``heartbeat_s`` by a thread. A lease whose heartbeat is older than
    ``stale_after_s`` belongs to a process that died (killed, lost its machine): it is taken over,
    with a warning naming the old owner. Local paths create the lock file exclusively
    (``O_EXCL``); object stores have no compare-and-swap for plain writes, so the lease is written,
    then read back after a moment, and whoever's id is there owns it (a tie between two jobs that
    start within that moment goes to one of them, the other stops). Used as a context manager.
    """

    def __init__(self, run: RunDir, command: str = "", heartbeat_s: float = 15.0, stale_after_s: float = 90.0,
                 settle_s: float = 0.5) -> None:
        import os
        import socket
        import uuid

        self.run = run
        self.url = run.path(LOCK)
        self.owner = uuid.uuid4().hex
        self.info = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "command": command,
                     "started_at": utc_now()}
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.settle_s = settle_s
        self._stop = None
        self._thread = None

    # ------------------------------------------------------------------ lease file
    def _read(self) -> dict | None:
        try:
            raw = self.run.storage.read_bytes(self.url)
        except (FileNotFoundError, OSError):
            return None
        try:
            obj = json.loads(raw.decode("utf-8"))
            return obj if isinstance(obj, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}  # an unreadable lease counts as stale

    def _lease(self) -> bytes:
        return json.dumps({**self.info, "heartbeat": time.time()}, sort_keys=True).encode()

    def _age(self, lease: dict) -> float:
        """Seconds since the lease was refreshed; infinite when its process is known to be gone
        (same host, and no process with its pid)."""
        import os

        if lease.get("host") == self.info["host"] and isinstance(lease.get("pid"), int):
            try:
                os.kill(lease["pid"], 0)
            except ProcessLookupError:
                return float("inf")
            except PermissionError:
                pass  # alive, another user's
        try:
            return time.time() - float(lease.get("heartbeat", 0))
        except (TypeError, ValueError):
            return float("inf")

    def _create_exclusive(self) -> bool:
        """Local: create the lock file only if absent. Remote: True (see the class doc)."""
        import os

        storage = self.run.storage
        storage.makedirs(self.run.url)
        fs, path = storage.fs(self.url)
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if "file" not in protocols and "local" not in protocols:
            storage.write_bytes(self.url, self._lease())
            return True
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._lease())
        return True

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "RunLock":
        try:
            return self._acquire()
        except PermissionError as exc:
            raise InputError(f"cannot write to the run directory {self.run.url} ({exc.strerror or exc}); "
                             "choose a run_dir you can write to") from None

    def _acquire(self) -> "RunLock":
        for _ in range(3):
            lease = self._read()
            if lease is not None and lease.get("owner") != self.owner:
                age = self._age(lease)
                if age <= self.stale_after_s:
                    raise RunLocked(
                        f"run directory {self.run.url} is in use by pid {lease.get('pid')} on "
                        f"{lease.get('host')} (`{lease.get('command') or 'metacurate'}`, started "
                        f"{lease.get('started_at')}, alive {age:.0f}s ago). Wait for it to finish, or use "
                        f"another run_dir; a lease not refreshed for {self.stale_after_s:.0f}s is taken over")
                log.warning("taking over the lease of %s from pid %s on %s: %s", self.run.url, lease.get("pid"),
                            lease.get("host"), "that process is gone" if age == float("inf")
                            else f"it stopped refreshing it {age:.0f}s ago")
                self.run.storage.remove(self.url)
            if not self._create_exclusive():
                continue  # another process created it between our read and our create: look again
            time.sleep(self.settle_s)
            lease = self._read()
            if lease is not None and lease.get("owner") == self.owner:
                self._start_heartbeat()
                return self
            if lease is None:
                continue
            raise RunLocked(f"run directory {self.run.url} was locked at the same moment by pid "
                            f"{lease.get('pid')} on {lease.get('host')}; use another run_dir or try again")
        raise RunLocked(f"could not take the lock of {self.run.url}: it keeps changing hands")

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    lease = self._read()
                    if lease is not None and lease.get("owner") not in (self.owner, None):
                        log.error("the lease of %s was taken over by pid %s on %s", self.run.url,
                                  lease.get("pid"), lease.get("host"))
                        return
                    self.run.storage.write_bytes(self.url, self._lease())
                except Exception as exc:  # a failed refresh must not kill the job; the next may work
                    log.warning("could not refresh the lease of %s: %s", self.run.url, exc)

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def holds(self) -> bool:
        lease = self._read()
        return lease is not None and lease.get("owner") == self.owner

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._stop = None
        try:
            if self.holds():
                self.run.storage.remove(self.url)
        except Exception as exc:  # the lease then simply goes stale
            log.warning("could not remove the lease of %s: %s", self.run.url, exc)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
