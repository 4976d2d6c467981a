"""The curation job: match -> count -> balance (DESIGN §2-§4) as Spark stages.

Design (why it looks like this):
* **Work units.** The driver lists the pool's parquet files and reads only their footers; a unit is
  a range of row groups of one file. Each task reads its unit with pyarrow + fsspec, writes its
  own part files (atomically) and returns a few counters. That works for local paths and ``s3://``
  alike (this Spark has no S3 connector) and keeps the driver free of row data.
* **Idempotent, resumable.** Part names derive from the unit id, a unit writes its reject part,
  then its output part, then ``_units/<id>.json`` last. A retried task overwrites the same names;
  a re-run after a crash keeps units whose marker exists and redoes the rest: no duplicates, no
  holes. A stage whose ``_SUCCESS`` carries the same fingerprint is skipped.
* **Heavy objects once.** The driver compiles the matcher (cached by metadata fingerprint) and
  ships the file with ``addFile``; each Python worker memory-maps it on first use and keeps it
  (workers are reused), never pickled per task.
* **Counts on executors.** Per-unit sparse counts are summed by a DataFrame aggregation; only the
  per-entry table (<= number of entries) reaches the driver. ``p`` is broadcast as float32.
* **Reconciliation.** Every stage asserts ``in == out + sum(rejected)`` before marking success.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import balancing
from curation.errors import InputError
from curation.fastmatch import COMPILED_FORMAT, FastMatcher
from curation.matching import entries_fingerprint, load_metadata_json
from jobs import storage

log = logging.getLogger(__name__)

JOB_VERSION = "1"
REJECT_SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string()), ("detail", pa.string())])
MATCH_CORE = ("uid", "url", "text", "entry_ids")


@dataclass
class CurateParams:
    """Everything the curate stages need; the config file maps onto this."""
    pool: str
    metadata: str
    out: str
    t: float | None = 20_000.0
    target_size: int | None = None
    seed: int = 0
    max_text_bytes: int = 65_536
    rows_per_unit: int = 250_000
    on_bad_file: str = "fail"  # or "skip": record a file-level reject and go on
    sweep_points: int = 40
    storage_options: dict = field(default_factory=dict)
    balance_mode: str = "metaclip"  # or "random": the same p_keep = target_size / matched for every row
    check_duplicate_uids: bool = True  # reject later repeats of a uid among matched rows (one shuffle)

    def validate(self) -> None:
        if self.balance_mode not in ("metaclip", "random"):
            raise InputError(f"balance mode must be 'metaclip' or 'random', got {self.balance_mode!r}")
        if self.balance_mode == "random" and self.target_size is None:
            raise InputError("balance mode 'random' needs `target_size` (the number of rows to keep)")
        if (self.t is None) == (self.target_size is None):
            raise InputError("set exactly one of `t` (e.g. 20000) or `target_size` (rows to keep)")
        if self.t is not None and not self.t > 0:
            raise InputError(f"`t` must be > 0, got {self.t}")
        if self.target_size is not None and self.target_size <= 0:
            raise InputError(f"`target_size` must be > 0, got {self.target_size}")
        if self.max_text_bytes <= 0:
            raise InputError("`max_text_bytes` must be > 0")
        if self.on_bad_file not in ("fail", "skip"):
            raise InputError(f"`on_bad_file` must be 'fail' or 'skip', got {self.on_bad_file!r}")

    def check_inputs(self) -> None:
        """The match stage's inputs exist: checked before a Spark session starts, so a wrong path
        fails in a second with the key to fix instead of after the session's start-up."""
        for what, url in (("pool", self.pool), ("metadata", self.metadata)):
            if not url:
                raise InputError(f"no {what} given: set `{what}.path` in the config (or --{what})")
            if not storage.exists(url, self.storage_options):
                raise InputError(f"{what} not found: {url} (`{what}.path` in the config, or --{what})")


# =========================================================================== helpers
def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


#: Stage name -> folder under the run directory (DESIGN §2 names the shard output `shards/`).
STAGE_DIRS = {"shard": "shards"}


def stage_dir(p: CurateParams, stage: str) -> str:
    return storage.join(p.out, STAGE_DIRS.get(stage, stage))


def rejects_dir(p: CurateParams, stage: str) -> str:
    return storage.join(p.out, "rejects", stage)


def read_success(p: CurateParams, stage: str) -> dict | None:
    url = storage.join(stage_dir(p, stage), "_SUCCESS")
    try:
        return storage.read_json(url, p.storage_options)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def _begin_stage(p: CurateParams, stage: str, fingerprint: str, keep: tuple[str, ...] = ()) -> bool:
    """True if the stage must run. Cleans a stage started with another fingerprint, except the
    files named in ``keep`` (inputs that live in the stage folder, e.g. dedup's eval hashes)."""
    done = read_success(p, stage)
    if done and done.get("fingerprint") == fingerprint:
        log.info("%s: already complete (fingerprint %s), skipping", stage, fingerprint)
        return False
    started_url = storage.join(stage_dir(p, stage), "_STARTED")
    try:
        started = storage.read_json(started_url, p.storage_options)
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        started = None
    if done or not started or started.get("fingerprint") != fingerprint:
        # Stale or different work: start from scratch.
        kept = {}
        for name in keep:
            url = storage.join(stage_dir(p, stage), name)
            if storage.exists(url, p.storage_options):
                fs, path = storage.get_fs(url, p.storage_options)
                kept[name] = fs.cat_file(path)
        storage.remove(stage_dir(p, stage), p.storage_options)
        for name, data in kept.items():
            storage.write_bytes_atomic(storage.join(stage_dir(p, stage), name), data, p.storage_options)
        storage.remove(rejects_dir(p, stage), p.storage_options)
        storage.makedirs(stage_dir(p, stage), p.storage_options)
        storage.write_json_atomic(started_url, {"fingerprint": fingerprint}, p.storage_options)
    else:
        log.info("%s: resuming an interrupted run (fingerprint %s)", stage, fingerprint)
    return True


def _finish_stage(p: CurateParams, stage: str, fingerprint: str, summary: dict) -> dict:
    rejected = sum(summary["rejected"].values())
    if summary["in"] != summary["out"] + rejected:
        raise RuntimeError(f"{stage}: reconciliation failed: in={summary['in']} != out={summary['out']}"
                           f" + rejected={rejected} ({summary['rejected']})")
    summary = {"stage": stage, **summary, "reconciled": True}
    storage.write_json_atomic(storage.join(stage_dir(p, stage), "summary.json"), summary, p.storage_options)
    storage.write_json_atomic(storage.join(stage_dir(p, stage), "_SUCCESS"),
                              {"fingerprint": fingerprint, "stage": stage, "version": JOB_VERSION,
                               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                              p.storage_options)
    storage.remove(storage.join(stage_dir(p, stage), "_STARTED"), p.storage_options)
    return summary


class _PhaseClock:
    """Task time by phase, from ``perf_counter`` laps (a handful per unit, so it costs nothing).

    Units report it and the stage summary sums it (``task_seconds``): where a stage's time goes
    (reading, hashing uids, matching, writing, ...) is then visible in ``metacurate inspect`` for
    any run, not only under a profiler."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
        self._t = now

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


_ARROW_COMPUTE_READY = False


def _arrow_compute_ready(clock: _PhaseClock) -> None:
    """The first Arrow compute call of a process builds Arrow's kernel registry (0.3-0.6 s here).
    Done once per worker process and timed as ``worker_start``, so it is not charged to whichever
    phase happens to call Arrow first (on a small run that phase looked like 85% of the work)."""
    global _ARROW_COMPUTE_READY
    if not _ARROW_COMPUTE_READY:
        pc.binary_length(pa.array([""]))
        _ARROW_COMPUTE_READY = True
        clock.lap("worker_start")


def _merge_summaries(units: list[dict]) -> dict:
    total = {"in": 0, "out": 0, "rejected": {}}
    phases: dict[str, float] = {}
    for u in units:
        total["in"] += u["in"]
        total["out"] += u["out"]
        for k, v in u["rejected"].items():
            total["rejected"][k] = total["rejected"].get(k, 0) + v
        for k, v in u.get("phases", {}).items():  # absent in markers of runs before phases existed
            phases[k] = phases.get(k, 0.0) + v
    total["rejected"] = dict(sorted(total["rejected"].items()))
    if phases:
        total["task_seconds"] = {k: round(v, 3) for k, v in phases.items()}  # JSON sorts the keys anyway
    return total


def _unit_marker(p: CurateParams, stage: str, unit_id: int) -> str:
    return storage.join(stage_dir(p, stage), "_units", f"{unit_id:06d}.json")


def _done_units(p: CurateParams, stage: str) -> dict[int, dict]:
    url = storage.join(stage_dir(p, stage), "_units")
    if not storage.exists(url, p.storage_options):
        return {}
    done = {}
    for f in storage.list_files(url, ".json", p.storage_options):
        d = storage.read_json(f, p.storage_options)
        done[int(d["unit"])] = d
    return done


def _run_units(spark, p: CurateParams, stage: str, units: list[dict], task, ctx: dict) -> list[dict]:
    """Run ``task(unit, ctx)`` for units not yet done (one Spark task per unit)."""
    done = _done_units(p, stage)
    todo = [u for u in units if u["unit"] not in done]
    if done:
        log.info("%s: %d of %d units already done", stage, len(units) - len(todo), len(units))
    results = list(done.values())
    if todo:
        log.info("%s: running %d units", stage, len(todo))
        from jobs.spark import progress

        rdd = spark.sparkContext.parallelize(todo, len(todo))
        with progress(spark.sparkContext, stage):
            results += rdd.mapPartitions(lambda it: [task(u, ctx) for u in it]).collect()
    wanted = {u["unit"] for u in units}
    return sorted([r for r in results if r["unit"] in wanted], key=lambda r: r["unit"])


def _throttle() -> None:
    """Failure-injection tests slow units down (env set only on their test cluster / driver)."""
    delay = float(os.environ.get("METACURATE_UNIT_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


# =========================================================================== planning
def _is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or str(t) in ("string_view", "binary_view"))


def _plain_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """Dictionary-encoded (e.g. categorical) and view-typed string columns as plain string/binary
    arrays: the matcher and the Arrow kernels below take those only."""
    for name in names:
        if name not in table.column_names:
            continue
        col = table.column(name)
        t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        if str(t) in ("string_view", "binary_view"):
            t = pa.string() if str(t) == "string_view" else pa.binary()
        if t != col.type:
            table = table.set_column(table.column_names.index(name), name, col.cast(t))
    return table


def plan_units(p: CurateParams) -> tuple[list[dict], list[dict]]:
    """Work units from the pool's footers (driver reads metadata only). Returns (units, bad_files)."""
    files = storage.list_files(p.pool, ".parquet", p.storage_options)
    if not files:
        raise InputError(f"no .parquet files found under pool {p.pool}")

    def footer(path: str):
        fs, fpath = storage.get_fs(path, p.storage_options)
        try:
            with fs.open(fpath, "rb") as f:
                md = pq.ParquetFile(f).metadata
                schema = md.schema.to_arrow_schema()
                return path, md, schema, None
        except Exception as exc:  # malformed / truncated parquet
            return path, None, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(16) as ex:
        footers = list(ex.map(footer, files))
    units, bad = [], []
    for file_idx, (path, md, schema, err) in enumerate(footers):
        if err is not None:
            if p.on_bad_file == "fail":
                raise InputError(f"pool file {path} is not readable parquet ({err}); fix or remove it, "
                                 "or set on_bad_file: skip to record it as a reject and continue")
            bad.append({"path": path, "error": err})
            continue
        missing = [c for c in ("url", "text") if c not in schema.names]
        if missing:
            raise InputError(f"pool file {path} lacks column(s) {missing}; it has {schema.names}. "
                             "The pool needs `url` and `text` (and optionally `uid`)")
        for col in ("url", "text", "uid"):
            if col in schema.names and not _is_text_type(schema.field(col).type):
                raise InputError(f"pool file {path}: column `{col}` is {schema.field(col).type}; it must hold "
                                 "strings (string or binary, plain or dictionary-encoded)")
        rg_start, rows = 0, 0
        for rg in range(md.num_row_groups):
            rows += md.row_group(rg).num_rows
            if rows >= p.rows_per_unit or rg == md.num_row_groups - 1:
                units.append({"unit": len(units), "path": path, "file": file_idx,
                              "rg_start": rg_start, "rg_end": rg + 1, "rows": rows})
                rg_start, rows = rg + 1, 0
    return units, bad


def pool_fingerprint(p: CurateParams) -> str:
    files = storage.list_files(p.pool, ".parquet", p.storage_options)
    infos = []
    for f in files:
        fs, path = storage.get_fs(f, p.storage_options)
        info = fs.info(path)
        infos.append((f, info.get("size"), str(info.get("ETag") or info.get("mtime") or "")))
    return _fingerprint(infos)


# =========================================================================== match
def _executor_matcher(ctx: dict):
    """The per-process matcher: the driver's compiled file, mapped on first use and reused by later
    tasks in this Python worker (the driver's local path on its own host, else the shipped copy)."""
    from curation.fastmatch import load_fast_matcher

    local = ctx["matcher_local"]
    if not os.path.exists(local):
        from pyspark import SparkFiles

        local = SparkFiles.get(ctx["matcher_name"])
    return load_fast_matcher(local, ctx["metadata_fingerprint"])


#: Reject reasons of the match stage, by code (0 = the row is fine). Rows are classified with numpy
#: arrays of these codes, never with per-row Python.
MATCH_REASONS = ("", "invalid_utf8", "null_text", "empty_text", "text_too_long", "null_url", "no_match")
_R = {name: code for code, name in enumerate(MATCH_REASONS)}
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHA_CHUNK = 8192


def _fast_sha224():
    """CPython's built-in SHA-224 (``_sha2`` from 3.12, ``_sha256`` before) when present: the same
    digest as ``hashlib.sha224`` without OpenSSL's per-call context set-up, which is most of the
    cost for a URL-sized input (0.55 -> 0.39 us per row measured here)."""
    for module in ("_sha2", "_sha256"):
        try:
            return getattr(__import__(module), "sha224")
        except (ImportError, AttributeError):
            continue
    return hashlib.sha224


_SHA224 = _fast_sha224()


def _texts_and_reasons(text_col: pa.Array, max_bytes: int) -> tuple[pa.Array, np.ndarray, dict[int, str]]:
    """Valid texts (a string array, null where invalid), a reason code per row (int8, 0 = valid) and
    a detail string for the few rows that carry one (row index -> detail)."""
    n = len(text_col)
    codes = np.zeros(n, dtype=np.int8)
    details: dict[int, str] = {}
    if pa.types.is_binary(text_col.type) or pa.types.is_large_binary(text_col.type):
        as_bytes = text_col
    else:
        try:
            text_col.validate(full=True)
            as_bytes = None
        except pa.ArrowInvalid:
            as_bytes = text_col.view(pa.binary() if pa.types.is_string(text_col.type) else pa.large_binary())
    if as_bytes is not None:  # rare: decode row by row to find the bad ones
        values = []
        for i, b in enumerate(as_bytes.to_pylist()):
            if b is None:
                values.append(None)
                continue
            try:
                values.append(b.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(None)
                codes[i] = _R["invalid_utf8"]
                details[i] = f"byte {exc.start}: {b[max(0, exc.start - 8):exc.start + 8]!r}"
        text_col = pa.array(values, type=pa.string())
    nulls = pc.is_null(text_col).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.binary_length(text_col), 0).to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text_col)), 0), False).to_numpy(
        zero_copy_only=False)
    codes[nulls & (codes == 0)] = _R["null_text"]
    codes[blank & ~nulls] = _R["empty_text"]
    too_long = np.flatnonzero(lengths > max_bytes)
    codes[too_long] = _R["text_too_long"]
    for i in too_long.tolist():
        details[i] = f"{int(lengths[i])} bytes > max_text_bytes={max_bytes}"
    if (codes != 0).any():
        text_col = pc.if_else(pa.array(codes != 0), pa.scalar(None, pa.string()), text_col.cast(pa.string()))
    return text_col.cast(pa.string()), codes, details


def _sha224_uids(urls: pa.Array) -> pa.Array:
    """``sha224(url)[:24]`` (hex) for every row of a string/binary array with no nulls.

    The hashing is one C call per row; the hex encoding and the Arrow array are built with numpy
    from one joined digest buffer (no per-row ``hexdigest``/slicing/str objects)."""
    n = len(urls)
    if n == 0:
        return pa.array([], pa.string())
    raw = urls.view(pa.binary()) if pa.types.is_string(urls.type) else urls.cast(pa.binary())
    sha = _SHA224
    # In slices: 250k live bytes objects at once made CPython map fresh arenas for every unit
    # (page faults were a fifth of this function's time); 8k at a time reuses the same ones.
    digests = b"".join([b"".join([sha(b).digest() for b in raw.slice(i, _SHA_CHUNK).to_pylist()])
                        for i in range(0, n, _SHA_CHUNK)])
    first12 = np.frombuffer(digests, dtype=np.uint8).reshape(n, 28)[:, :12]
    hexed = np.empty((n, 24), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[first12 >> 4]
    hexed[:, 1::2] = _HEX[first12 & 15]
    offsets = np.arange(n + 1, dtype=np.int32) * 24
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(hexed))


def _pool_relative(path: str, p: CurateParams) -> str:
    """A pool file's path relative to the pool (its name when the pool is one file): what
    position-based uids hash, so they do not change when the pool is moved or mounted elsewhere."""
    root = storage.get_fs(p.pool, p.storage_options)[1].rstrip("/")
    fpath = storage.get_fs(path, p.storage_options)[1]
    if fpath.startswith(root + "/"):
        return fpath[len(root) + 1:]
    return fpath.rsplit("/", 1)[-1]


def _uids(table: pa.Table, file_path: str, first_row: int) -> tuple[pa.Array, np.ndarray]:
    """The uid of every row (given ``uid`` column, else ``sha224(url)[:24]``, else a position-based id)
    and a mask of rows without a URL."""
    url_col = table.column("url").combine_chunks()
    if pa.types.is_binary(url_col.type) or pa.types.is_large_binary(url_col.type):
        url_col = url_col.cast(pa.binary())
    else:
        url_col = url_col.cast(pa.string())
    null_url = pc.fill_null(pc.equal(pc.binary_length(url_col), 0), True).to_numpy(zero_copy_only=False)
    from_url = _sha224_uids(pc.fill_null(url_col, pa.scalar(b"" if pa.types.is_binary(url_col.type) else "",
                                                                url_col.type)))
    if "uid" in table.column_names:
        given = table.column("uid").combine_chunks().cast(pa.string())
        has_given = pc.fill_null(pc.greater(pc.binary_length(given), 0), False)
        uids = pc.if_else(has_given, given, from_url)
        need_pos = null_url & ~has_given.to_numpy(zero_copy_only=False)
    else:
        uids = from_url
        need_pos = null_url
    if need_pos.any():  # neither a uid nor a URL: a stable id from the row's position in the pool
        fixed = uids.to_pylist()
        for i in np.flatnonzero(need_pos).tolist():
            fixed[i] = "row-" + hashlib.sha224(f"{file_path}#{first_row + i}".encode()).hexdigest()[:20]
        uids = pa.array(fixed, pa.string())
    return uids, null_url


def _labels(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """A string column from small integer codes (dictionary decode in Arrow, no per-row Python)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(list(names))).cast(pa.string())


def _rejects_table(uids: pa.Array, stage: str, codes: np.ndarray, names: tuple[str, ...],
                   details: dict[int, str] | list[str] | pa.Array | None = None,
                   rows: np.ndarray | None = None) -> pa.Table:
    """Reject rows ``uid, stage, reason, detail``. ``details`` maps a row of ``rows`` (by position in
    ``rows``) to its detail, or is a full column; rows without one get ``""``."""
    n = len(uids)
    if details is None or (isinstance(details, dict) and not details):
        detail = _labels(np.zeros(n, np.int8), ("",))
    elif isinstance(details, dict):
        col = [""] * n
        for i, d in details.items():
            col[i] = d
        detail = pa.array(col, pa.string())
    else:
        detail = pa.array(details, pa.string()) if not isinstance(details, pa.Array) else details
    return pa.Table.from_arrays([uids, _labels(np.zeros(n, np.int8), (stage,)), _labels(codes, names), detail],
                                schema=REJECT_SCHEMA)


def _write_part(table: pa.Table, url: str, storage_options: dict) -> None:
    """Part files: zstd, dictionary encoding only where it pays (long unique strings such as uid, url
    and text made pyarrow try and abandon a dictionary: ~25% of the write time), no column
    statistics (min/max of captions and URLs serve no reader: ~15% of the write time)."""
    import io

    buf = io.BytesIO()
    small = [f.name for f in table.schema if f.name in ("stage", "reason", "entry_ids")]
    pq.write_table(table, buf, compression="zstd", use_dictionary=small or False, write_statistics=False)
    storage.write_bytes_atomic(url, buf.getvalue(), storage_options)


def _reason_counts(codes: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    binc = np.bincount(codes.astype(np.int64), minlength=len(names))
    return {names[c]: int(binc[c]) for c in range(1, len(names)) if binc[c]}


def _match_unit(unit: dict, ctx: dict) -> dict:
    p = CurateParams(**ctx["params"])
    _throttle()
    clock = _PhaseClock()
    _arrow_compute_ready(clock)
    fs, path = storage.get_fs(unit["path"], p.storage_options)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        table = pf.read_row_groups(list(range(unit["rg_start"], unit["rg_end"])))
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(unit["rg_start"]))
    table = _plain_columns(table, ("url", "text", "uid"))
    n = table.num_rows
    clock.lap("read")
    uids, null_url = _uids(table, _pool_relative(unit["path"], p), first_row)
    clock.lap("uid")
    texts, codes, details = _texts_and_reasons(table.column("text").combine_chunks(), p.max_text_bytes)
    codes[(codes == 0) & null_url] = _R["null_url"]
    valid_idx = np.flatnonzero(codes == 0)
    valid_texts = texts.take(pa.array(valid_idx)) if len(valid_idx) < n else texts
    matcher = _executor_matcher(ctx)
    clock.lap("validate")
    matched = matcher.match_arrow(valid_texts)
    clock.lap("match")
    lengths = pc.list_value_length(matched).to_numpy(zero_copy_only=False)
    codes[valid_idx[lengths == 0]] = _R["no_match"]
    keep_local = lengths > 0
    keep_rows = pa.array(valid_idx[keep_local])

    passthrough = [c for c in table.column_names if c not in MATCH_CORE]
    out = pa.table({
        "uid": uids.take(keep_rows),
        "url": table.column("url").take(keep_rows).cast(pa.string()),
        "text": texts.take(keep_rows),
        "entry_ids": matched.filter(pa.array(keep_local)).cast(pa.list_(pa.int32())),
        **{c: table.column(c).take(keep_rows) for c in passthrough},
    })
    rej_rows = np.flatnonzero(codes != 0)
    pos = {int(r): j for j, r in enumerate(rej_rows.tolist())} if details else {}
    rejects = _rejects_table(uids.take(pa.array(rej_rows)), "match", codes[rej_rows], MATCH_REASONS,
                             {pos[i]: d for i, d in details.items()})
    clock.lap("assemble")
    name = f"part-{unit['unit']:06d}.parquet"
    _write_part(rejects, storage.join(rejects_dir(p, "match"), name), p.storage_options)
    part_url = storage.join(stage_dir(p, "match"), name)
    _write_part(out, part_url, p.storage_options)
    if p.check_duplicate_uids:  # pass 1 of the duplicate check reads these 8 bytes per row
        _write_uid_hashes(out.column("uid").combine_chunks(), _uid_hash_url(part_url), p.storage_options)
    clock.lap("write")
    summary = {"unit": unit["unit"], "in": n, "out": out.num_rows, "rejected": _reason_counts(codes, MATCH_REASONS),
               "phases": clock.as_dict()}
    storage.write_json_atomic(_unit_marker(p, "match", unit["unit"]), summary, p.storage_options)
    return summary


# ----------------------------------------------------------------- duplicate uids
def _dedup_marker(p: CurateParams, unit_id: int) -> str:
    return storage.join(stage_dir(p, "match"), "_dedup", f"{unit_id:06d}.json")


def _drop_duplicates_in_part(unit_id: int, rows: np.ndarray, details: list[str], p: CurateParams) -> int:
    """Remove the later occurrences ``rows`` from one match part. Order: the reject file, then the
    marker, then the rewritten part — a re-run after a crash anywhere finds the same rows again (the
    first occurrence of a uid is never removed), so it redoes the same work, never more."""
    name = f"part-{unit_id:06d}.parquet"
    part_url = storage.join(stage_dir(p, "match"), name)
    table = storage.read_parquet(part_url, p.storage_options)
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[rows] = True
    dropped = table.filter(pa.array(drop))
    rejects = _rejects_table(dropped.column("uid").combine_chunks(), "match", np.ones(len(rows), np.int8),
                             ("", "duplicate_uid"), pa.array(details, pa.string()))
    _write_part(rejects, storage.join(rejects_dir(p, "match"), f"dup-{unit_id:06d}.parquet"), p.storage_options)
    storage.write_json_atomic(_dedup_marker(p, unit_id), {"unit": unit_id, "duplicate_uid": int(len(rows))},
                              p.storage_options)
    _write_part(table.filter(pa.array(~drop)), part_url, p.storage_options)
    return int(len(rows))


def _uid_hash_url(part_url: str) -> str:
    """``match/_uidhash/part-N.npy`` beside ``match/part-N.parquet``."""
    name = os.path.basename(part_url)[:-len(".parquet")] + ".npy"
    return storage.join(os.path.dirname(part_url), "_uidhash", name)


def _write_uid_hashes(uids: pa.Array, url: str, storage_options: dict) -> None:
    """The sorted 64-bit hashes of a part's uids, written by the match task that has them in memory
    (pass 1 of the duplicate check then reads 8 bytes per row instead of re-reading and re-hashing
    the uid column). A part rewritten later by pass 2 keeps its old file: stale hashes only add
    candidates, which pass 2 compares exactly."""
    import io

    from curation.hashing import string_hash64

    buf = io.BytesIO()
    np.save(buf, np.sort(string_hash64(uids)), allow_pickle=False)
    storage.write_bytes_atomic(url, buf.getvalue(), storage_options)


def _sorted_uid_hashes(path: str, storage_options: dict) -> np.ndarray:
    """Sorted uid hashes of one match part: from its side file, else (older runs) from the part."""
    import io

    try:
        fs, fpath = storage.get_fs(_uid_hash_url(path), storage_options)
        return np.load(io.BytesIO(fs.cat_file(fpath)), allow_pickle=False)
    except (FileNotFoundError, OSError, ValueError):
        return np.sort(_part_uid_hashes(path, storage_options)[2])


def _part_uid_hashes(path: str, storage_options: dict) -> tuple[int, pa.Array, np.ndarray]:
    from curation.hashing import string_hash64

    unit_id = int(os.path.basename(path)[len("part-"):-len(".parquet")])
    uid = storage.read_parquet(path, storage_options, ["uid"]).column("uid").combine_chunks()
    return unit_id, uid, string_hash64(uid)


def _hash_range_starts(n_buckets: int) -> np.ndarray:
    """Lowest hash of each of ``n_buckets`` equal ranges of the 64-bit hash space (bucket b holds
    ``starts[b] <= h < starts[b + 1]``)."""
    return np.array([-(-(b << 64) // n_buckets) for b in range(n_buckets)], dtype=np.uint64)


def _hash_buckets(path: str, n_buckets: int, storage_options: dict) -> list[tuple[int, np.ndarray]]:
    """Pass 1 of the duplicate check: one part's uid hashes split by bucket (8 bytes per row).

    Buckets are ranges of the hash space, so a part's sorted hashes split into contiguous, still
    sorted runs with one ``searchsorted`` (a modulo bucket needed an argsort per part: ~0.4 s of
    the 4M-row check on one core)."""
    h = _sorted_uid_hashes(path, storage_options)
    if h.size == 0:
        return []
    cuts = np.searchsorted(h, _hash_range_starts(n_buckets), side="left").tolist() + [len(h)]
    return [(b, h[cuts[b]:cuts[b + 1]]) for b in range(n_buckets) if cuts[b + 1] > cuts[b]]


def _repeated_hashes(arrays) -> list[np.ndarray]:
    """Hash values seen more than once among some buckets' hashes (candidates; strings are compared
    later). Equal hashes share a bucket, so any set of whole buckets can be checked together."""
    arrays = list(arrays)
    if not arrays:
        return []
    h = np.concatenate(arrays)
    if h.size < 2:
        return []
    h.sort()
    rep = np.unique(h[1:][h[1:] == h[:-1]])
    return [rep] if rep.size else []


def _uid_buckets(path: str, n_buckets: int, storage_options: dict,
                 candidates: np.ndarray | None = None) -> list[tuple[int, tuple]]:
    """Pass 2: one part's uids (only those whose hash is a candidate, when given) split by bucket:
    ``(bucket, (unit, rows, uids))`` records."""
    unit_id, uid, h = _part_uid_hashes(path, storage_options)
    if len(uid) == 0:
        return []
    rows_all = np.arange(len(uid))
    if candidates is not None:
        pos = np.searchsorted(candidates, h)
        hit = (pos < len(candidates)) & (candidates[np.minimum(pos, len(candidates) - 1)] == h)
        rows_all = rows_all[hit]
        h = h[hit]
        if rows_all.size == 0:
            return []
    bucket = (h % np.uint64(n_buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")  # rows stay ascending within a bucket
    cuts = np.flatnonzero(np.diff(bucket[order])) + 1
    out = []
    for sel in np.split(order, cuts):
        rows = rows_all[sel]
        out.append((int(bucket[sel[0]]), (unit_id, rows.astype(np.int32), uid.take(pa.array(rows)))))
    return out


#: Above this many candidate hashes the exact pass runs over every row instead of broadcasting them.
MAX_BROADCAST_CANDIDATES = 5_000_000


def _later_occurrences(groups) -> list[tuple[int, tuple]]:
    """Within some whole buckets: every occurrence of a uid after its first (pool order = unit, row),
    as ``(unit, (rows, unit_of_first))`` records. Strings are compared exactly (Arrow hash group-by)."""
    if not groups:
        return []
    groups = sorted(groups, key=lambda g: g[0])
    uids = pa.chunked_array([g[2] for g in groups], pa.string()).combine_chunks()
    units = np.concatenate([np.full(len(g[1]), g[0], np.int32) for g in groups])
    rows = np.concatenate([g[1] for g in groups])
    codes = pc.dictionary_encode(uids).indices.to_numpy(zero_copy_only=False)
    _, first_idx, counts = np.unique(codes, return_index=True, return_counts=True)
    if not (counts > 1).any():
        return []
    is_later = np.ones(len(codes), dtype=bool)
    is_later[first_idx] = False
    first_unit_of_code = units[first_idx]  # dictionary codes are 0..k-1, as np.unique returns them
    later = np.flatnonzero(is_later)
    lu, lr, lf = units[later], rows[later], first_unit_of_code[codes[later]]
    out = []
    for u in np.unique(lu).tolist():
        sel = lu == u
        out.append((int(u), (lr[sel], lf[sel])))
    return out


def _bucket_partition(key: int) -> int:
    """Integer keys (bucket or unit ids) go to partition ``key % n`` (Spark takes the modulo)."""
    return key


def _apply_partition_drops(records, p: CurateParams) -> list[int]:
    """One reduce partition's ``(unit, (rows, firsts))`` records, applied part by part."""
    by_unit: dict[int, list] = {}
    for unit_id, piece in records:
        by_unit.setdefault(unit_id, []).append(piece)
    return [_apply_duplicate_drops(u, pieces, p) for u, pieces in sorted(by_unit.items())]


def _apply_duplicate_drops(unit_id: int, pieces, p: CurateParams) -> int:
    rows = np.concatenate([r for r, _ in pieces])
    firsts = np.concatenate([f for _, f in pieces])
    order = np.argsort(rows)
    rows, firsts = rows[order], firsts[order]
    details = [f"repeat of a uid kept in match/part-{int(f):06d}.parquet" for f in firsts.tolist()]
    return _drop_duplicates_in_part(unit_id, rows, details, p)


def _remove_duplicate_uids(spark, p: CurateParams, matched_rows: int) -> int:
    """Keep the first occurrence (pool order: file, then row) of every uid among matched rows and
    reject the others as ``duplicate_uid`` (detail: the part holding the kept one).

    Done with Python RDD shuffles of numpy/Arrow arrays, not a JVM group-by of strings (which cost
    ~2x the match stage itself here). Pass 1 shuffles only a vectorised 64-bit hash per row, bucketed,
    and finds hash values seen twice; with none (the usual pool) the check ends there. Pass 2 sends
    the candidate rows' uid strings to their bucket, compares them exactly, and sends the later
    occurrences back to their parts, which executors rewrite. The driver receives the candidate
    hashes (only when there are at most MAX_BROADCAST_CANDIDATES; else pass 2 takes every row) and
    per-part counters."""
    files = _part_files(p, "match")
    if not files:
        return 0
    sc = spark.sparkContext
    opts = p.storage_options
    n_tasks = max(1, min(len(files), sc.defaultParallelism * 2))
    n_buckets = max(sc.defaultParallelism * 2, matched_rows // 2_000_000)
    params = asdict(p)
    n_reduce = min(n_buckets, max(n_tasks, 1) * 4)
    # Pass 1: 64-bit hashes only. The usual pool has no repeats: then this is the whole check.
    # partitionBy + mapPartitions, not groupByKey: its ExternalMerger measures the worker's whole
    # RSS (the mapped matcher, the heap kept from matching) against spark.python.worker.memory and
    # spilled every record to disk: 3.4 s instead of ~0.9 s for 4M rows.
    cands = (sc.parallelize(files, n_tasks)
             .flatMap(lambda path: _hash_buckets(path, n_buckets, opts))
             .partitionBy(n_reduce, _bucket_partition)
             .mapPartitions(lambda records: _repeated_hashes(h for _, h in records))
             .persist())
    try:
        n_cand = int(cands.map(len).sum())
        if n_cand == 0:
            return 0
        log.info("match: %s uid hash values repeat; comparing those uids exactly", f"{n_cand:,}")
        cand_bc = None
        if n_cand <= MAX_BROADCAST_CANDIDATES:
            cand_bc = sc.broadcast(np.unique(np.concatenate(cands.collect())))
    finally:
        cands.unpersist()
    # Pass 2: exact string comparison of the candidate rows (all rows if the candidates are too many).
    later = (sc.parallelize(files, n_tasks)
             .flatMap(lambda path: _uid_buckets(path, n_buckets, opts, cand_bc.value if cand_bc else None))
             .partitionBy(n_reduce, _bucket_partition)
             .mapPartitions(lambda records: _later_occurrences([g for _, g in records])))
    done = (later.partitionBy(n_tasks, _bucket_partition)
            .mapPartitions(lambda records: _apply_partition_drops(records, CurateParams(**params)))
            .collect())
    return int(sum(done))


def _dedup_counts(p: CurateParams) -> int:
    url = storage.join(stage_dir(p, "match"), "_dedup")
    if not storage.exists(url, p.storage_options):
        return 0
    return sum(int(storage.read_json(f, p.storage_options)["duplicate_uid"])
               for f in storage.list_files(url, ".json", p.storage_options))


def _ship_metadata_local(p: CurateParams) -> dict:
    """The compiled FastMatcher for the run's metadata, as a local file on the driver (cached under
    the temp dir by content fingerprint and format).

    The matcher is compiled once, here, and shipped as a file: every worker maps it in
    milliseconds instead of building it (~1 s and ~0.5 GB of scratch per worker process for 500k
    entries), and workers on one host share its pages."""
    entries = load_metadata_json(p.metadata, p.storage_options)
    fp = entries_fingerprint(entries)
    local_dir = os.path.join(tempfile.gettempdir(), "metacurate-metadata")
    os.makedirs(local_dir, exist_ok=True)
    name = f"matcher-{fp}-v{COMPILED_FORMAT}.bin"
    local = os.path.join(local_dir, name)
    if not os.path.exists(local):
        t0 = time.perf_counter()
        FastMatcher(entries, fingerprint=fp).save(local)
        log.info("match: compiled the matcher for %s entries in %.1fs", f"{len(entries):,}", time.perf_counter() - t0)
    return {"metadata_fingerprint": fp, "n_entries": len(entries), "matcher_name": name, "matcher_local": local}


def _ship_metadata(spark, p: CurateParams) -> dict:
    shipped = _ship_metadata_local(p)
    spark.sparkContext.addFile(shipped["matcher_local"])
    return shipped


def run_match(spark, p: CurateParams) -> dict:
    meta = _ship_metadata(spark, p)
    fingerprint = _fingerprint("match", JOB_VERSION, pool_fingerprint(p), meta["metadata_fingerprint"],
                               p.max_text_bytes, p.rows_per_unit, p.on_bad_file, p.check_duplicate_uids)
    if not _begin_stage(p, "match", fingerprint):
        return storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)
    units, bad = plan_units(p)
    if bad:
        log.warning("match: skipping %d unreadable pool file(s): %s", len(bad), [b["path"] for b in bad])
        storage.write_parquet_atomic(pa.table({
            "uid": [""] * len(bad), "stage": ["match"] * len(bad), "reason": ["unreadable_file"] * len(bad),
            "detail": [f"{b['path']}: {b['error']}" for b in bad]}, schema=REJECT_SCHEMA),
            storage.join(rejects_dir(p, "match"), "files.parquet"), p.storage_options)
    ctx = {"params": asdict(p), **meta}
    t0 = time.perf_counter()
    results = _run_units(spark, p, "match", units, _match_unit, ctx)
    seconds = {"units": round(time.perf_counter() - t0, 3)}
    summary = _merge_summaries(results)
    if p.check_duplicate_uids:
        t0 = time.perf_counter()
        found = _remove_duplicate_uids(spark, p, summary["out"])
        seconds["duplicate_check"] = round(time.perf_counter() - t0, 3)
        dups = _dedup_counts(p)  # includes parts rewritten by an interrupted earlier attempt
        if dups:
            log.warning("match: %s rows repeat an earlier uid; rejected as duplicate_uid (%s found now)",
                        f"{dups:,}", f"{found:,}")
            summary["out"] -= dups
            summary["rejected"] = dict(sorted({**summary["rejected"], "duplicate_uid": dups}.items()))
    summary.update(units=len(units), files_skipped=[b["path"] for b in bad], n_entries=meta["n_entries"],
                   metadata_fingerprint=meta["metadata_fingerprint"], seconds=seconds)
    return _finish_stage(p, "match", fingerprint, summary)


# =========================================================================== count
def _bincount_files(paths: list[str], n_entries: int, storage_options: dict) -> np.ndarray:
    """Per-entry occurrence counts over the ``entry_ids`` of some part files (dense int64)."""
    acc = np.zeros(n_entries, dtype=np.int64)
    for path in paths:
        ids = storage.read_parquet(path, storage_options, ["entry_ids"]).column("entry_ids")
        _, flat = _csr(ids)
        if flat.size == 0:
            continue
        if int(flat.max()) >= n_entries or int(flat.min()) < 0:
            raise InputError(f"{path} has entry ids outside the metadata's {n_entries:,} entries; "
                             "the metadata changed since the match stage ran: re-run match")
        acc += np.bincount(flat, minlength=n_entries)
    return acc


def _counts_array(spark, files: list[str], n_entries: int, storage_options: dict) -> np.ndarray:
    """Counts aggregated on executors: a dense bincount per partition, combined by ``treeReduce``.

    Only one entries-sized array reaches the driver (never rows). This replaced a DataFrame
    ``groupBy``, whose JVM shuffle cost ~7 s per 1M rows in local mode for an entries-sized result."""
    if not files:
        return np.zeros(n_entries, dtype=np.int64)
    n = max(1, min(len(files), spark.sparkContext.defaultParallelism * 2))
    rdd = spark.sparkContext.parallelize(files, n)
    return rdd.mapPartitions(lambda it: [_bincount_files(list(it), n_entries, storage_options)]).treeReduce(
        np.add, depth=2)


def _part_files(p: CurateParams, stage: str) -> list[str]:
    d = stage_dir(p, stage)
    return [f for f in storage.list_files(d, ".parquet", p.storage_options)
            if os.path.basename(f).startswith("part-")]


def run_count(spark, p: CurateParams) -> dict:
    match_done = read_success(p, "match")
    if not match_done:
        raise InputError(f"the match stage has not completed under {p.out}; run it first")
    fingerprint = _fingerprint("count", JOB_VERSION, match_done["fingerprint"])
    if not _begin_stage(p, "count", fingerprint):
        return storage.read_json(storage.join(stage_dir(p, "count"), "summary.json"), p.storage_options)
    entries = load_metadata_json(p.metadata, p.storage_options)
    files = _part_files(p, "match")
    counts = _counts_array(spark, files, len(entries), p.storage_options)
    sources = _entry_sources(p, len(entries))
    nz = np.flatnonzero(counts)
    table = pa.table({
        "entry_id": pa.array(nz.astype(np.int32)),
        "entry": pa.array([entries[i] for i in nz], pa.string()),
        "source": pa.array([sources[i] for i in nz], pa.string()),
        "count": pa.array(counts[nz], pa.int64()),
    })
    storage.write_parquet_atomic(table, storage.join(stage_dir(p, "count"), "entry_counts.parquet"),
                                 p.storage_options)
    match_summary = storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)
    # Counting turns matched rows into per-entry counts; every matched row is accounted for.
    summary = {"in": match_summary["out"], "out": match_summary["out"], "rejected": {},
               "entries_matched": int(nz.size), "entries_total": len(entries),
               "occurrences": int(counts.sum()), "max_count": int(counts.max()) if counts.size else 0}
    return _finish_stage(p, "count", fingerprint, summary)


def _entry_sources(p: CurateParams, n: int) -> list[str]:
    """Per-entry source from ``entries.parquet`` next to the metadata.json, else 'unknown'."""
    base = p.metadata.rsplit("/", 1)[0] if "/" in p.metadata else "."
    url = storage.join(base, "entries.parquet")
    try:
        t = storage.read_parquet(url, p.storage_options, ["entry_id", "source"])
    except (FileNotFoundError, OSError):
        return ["unknown"] * n
    sources = ["unknown"] * n
    for i, s in zip(t.column("entry_id").to_pylist(), t.column("source").to_pylist()):
        if 0 <= i < n:
            sources[i] = s
    return sources


def load_counts(p: CurateParams, n_entries: int) -> np.ndarray:
    t = storage.read_parquet(storage.join(stage_dir(p, "count"), "entry_counts.parquet"), p.storage_options)
    counts = np.zeros(n_entries, dtype=np.int64)
    counts[t.column("entry_id").to_numpy()] = t.column("count").to_numpy()
    return counts


# =========================================================================== balance
def _csr(list_col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = list_col.combine_chunks() if isinstance(list_col, pa.ChunkedArray) else list_col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    flat = arr.values.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = flat[offsets[0]:offsets[-1]]
    return offsets - offsets[0], flat


def _expected_unit(path: str, ctx: dict) -> list[float]:
    counts = ctx["counts_bc"].value
    t = storage.read_parquet(path, ctx["storage_options"], ["entry_ids"])
    offsets, flat = _csr(t.column("entry_ids"))
    return balancing.expected_kept_for_ts(offsets, flat, counts, ctx["ts"]).tolist()


def _expected_kept(spark, files: list[str], counts_bc, ts: np.ndarray, storage_options: dict) -> np.ndarray:
    ctx = {"counts_bc": counts_bc, "ts": [float(t) for t in ts], "storage_options": storage_options}
    rdd = spark.sparkContext.parallelize(files, max(1, len(files)))
    per_file = rdd.map(lambda f: _expected_unit(f, ctx)).collect()
    return np.sum(np.array(per_file, dtype=np.float64).reshape(len(files), len(ts)), axis=0)


def _balance_unit(unit: dict, ctx: dict) -> dict:
    p = CurateParams(**ctx["params"])
    _throttle()
    clock = _PhaseClock()
    _arrow_compute_ready(clock)
    prob = ctx["p_bc"].value
    counts = ctx["counts_bc"].value
    table = storage.read_parquet(unit["path"], p.storage_options)
    offsets, flat = _csr(table.column("entry_ids"))
    clock.lap("read")
    if ctx.get("uniform_p") is not None:  # the random-subset control: entries ignored
        pk = np.full(table.num_rows, ctx["uniform_p"], dtype=np.float64)
    else:
        pk = balancing.p_keep_csr(offsets, flat, prob)
    uid_col = table.column("uid").combine_chunks()
    u = balancing.uniform_from_uid_array(p.seed, uid_col)
    keep = u < pk
    clock.lap("draw")
    kept = table.filter(pa.array(keep)).append_column("p_keep", pa.array(pk[keep], pa.float64()))
    drop = np.flatnonzero(~keep)
    drop_arr = pa.array(drop)
    # "p_keep=<p> u=<u>" built by Arrow (shortest round-trip float text), not per-row f-strings.
    detail = pc.binary_join_element_wise("p_keep=", pa.array(pk).take(drop_arr).cast(pa.string()), " u=",
                                         pa.array(u).take(drop_arr).cast(pa.string()), "")
    rejects = _rejects_table(uid_col.take(drop_arr), "balance", np.ones(len(drop), np.int8),
                             ("", "balanced_out"), detail)
    clock.lap("assemble")
    name = f"part-{unit['unit']:06d}.parquet"
    _write_part(rejects, storage.join(rejects_dir(p, "balance"), name), p.storage_options)
    _write_part(kept, storage.join(stage_dir(p, "balance"), name), p.storage_options)
    clock.lap("write")
    sweep = balancing.expected_kept_for_ts(offsets, flat, counts, ctx["ts"]).tolist()
    clock.lap("t_sweep")
    summary = {"unit": unit["unit"], "in": table.num_rows, "out": kept.num_rows,
               "rejected": {"balanced_out": int(len(drop))} if len(drop) else {},
               "expected_kept": float(pk.sum()), "sweep": sweep, "phases": clock.as_dict()}
    storage.write_json_atomic(_unit_marker(p, "balance", unit["unit"]), summary, p.storage_options)
    return summary


def run_balance(spark, p: CurateParams) -> dict:
    count_done = read_success(p, "count")
    if not count_done:
        raise InputError(f"the count stage has not completed under {p.out}; run it first")
    fingerprint = _fingerprint("balance", JOB_VERSION, count_done["fingerprint"], p.t, p.target_size, p.seed,
                               p.sweep_points, p.balance_mode)
    if not _begin_stage(p, "balance", fingerprint):
        return storage.read_json(storage.join(stage_dir(p, "balance"), "summary.json"), p.storage_options)
    match_summary = storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)
    n_entries = int(match_summary["n_entries"])  # recorded by match: no second parse of the metadata
    counts = load_counts(p, n_entries)
    files = _part_files(p, "match")
    sc = spark.sparkContext
    counts_bc = sc.broadcast(counts.astype(np.float32))
    max_count = int(counts.max()) if counts.size else 1
    t = p.t
    uniform_p = None
    if p.balance_mode == "random":
        matched_rows = storage.read_json(storage.join(stage_dir(p, "match"), "summary.json"), p.storage_options)["out"]
        uniform_p = min(1.0, p.target_size / max(matched_rows, 1))
        t = float(max_count)  # reported only; every row gets uniform_p
        log.info("balance: random mode, p_keep = %.6g for every matched row", uniform_p)
    elif p.target_size is not None:
        log.info("balance: solving t for target_size=%s", f"{p.target_size:,}")
        t = float(balancing.solve_t(lambda ts: _expected_kept(spark, files, counts_bc, ts, p.storage_options),
                                    p.target_size, max_count))
        log.info("balance: t = %s", t)
    prob = balancing.entry_probabilities(counts, t).astype(np.float32)
    p_bc = sc.broadcast(prob)
    ts = sorted(set(np.unique(np.geomspace(1, max(max_count, 2), p.sweep_points).round()).tolist()) | {float(t)})
    units = [{"unit": i, "path": f} for i, f in enumerate(files)]
    ctx = {"params": asdict(p), "p_bc": p_bc, "counts_bc": counts_bc, "ts": ts, "uniform_p": uniform_p}
    t0 = time.perf_counter()
    results = _run_units(spark, p, "balance", units, _balance_unit, ctx)
    seconds = {"units": round(time.perf_counter() - t0, 3)}
    total = _merge_summaries(results)
    sweep = np.sum([r["sweep"] for r in results], axis=0) if results else np.zeros(len(ts))
    storage.write_json_atomic(storage.join(stage_dir(p, "balance"), "t_sweep.json"),
                              {"t": ts, "expected_kept": sweep.tolist(), "chosen_t": t}, p.storage_options)
    kept_counts = _counts_array(spark, _part_files(p, "balance"), n_entries, p.storage_options)
    nz = np.flatnonzero(kept_counts)
    storage.write_parquet_atomic(pa.table({"entry_id": pa.array(nz.astype(np.int32)),
                                           "kept": pa.array(kept_counts[nz], pa.int64())}),
                                 storage.join(stage_dir(p, "balance"), "kept_counts.parquet"), p.storage_options)
    matched = counts > 0
    summary = {**total, "t": t, "target_size": p.target_size, "seed": p.seed, "mode": p.balance_mode,
               "pool": match_summary["in"], "matched": total["in"],
               "expected_kept": float(sum(r["expected_kept"] for r in results)),
               "kept": total["out"],
               "head_entries": int((counts > t).sum()), "tail_entries": int((matched & (counts <= t)).sum()),
               "seconds": seconds}
    return _finish_stage(p, "balance", fingerprint, summary)


# =========================================================================== all
STAGES = {"match": run_match, "count": run_count, "balance": run_balance}


def run_curate(spark, p: CurateParams, stages: list[str] | None = None) -> dict[str, dict]:
    p.validate()
    out = {}
    for name in stages or list(STAGES):
        t0 = time.time()
        out[name] = STAGES[name](spark, p)
        log.info("%s: done in %.1fs: in=%s out=%s rejected=%s", name, time.time() - t0,
                 out[name]["in"], out[name]["out"], out[name]["rejected"])
    return out
