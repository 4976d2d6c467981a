"""Stage `match`: every pool row's set of matched entry ids (MetaCLIP's substring rule).

* **Work units.** The driver lists the pool's parquet files and reads only their footers; a unit
  is a range of row groups of one file (``pool.rows_per_unit`` rows at most). Each Spark task
  reads its unit, writes its own part files and then its unit marker, and returns a few counters:
  no row ever reaches the driver, and any filesystem fsspec reaches works (no Hadoop connector).
* **The matcher once.** The driver compiles the FastMatcher for the metadata (cached by content
  fingerprint) and ships the file with ``addFile``; each Python worker memory-maps it on first use
  and keeps it for later tasks: never pickled per task.
* **Rejects.** Rows are classified with numpy arrays of reason codes (``REASONS``), never per-row
  Python; a row with no matched entry is a ``no_match`` reject.
* **Duplicate uids** (``pool.check_duplicate_uids``): later repeats of a uid among matched rows are
  rejected as ``duplicate_uid``; see :func:`remove_duplicate_uids`.

Output ``RUN/match/part-N.parquet``: uid, url, text, entry_ids (list<int32>) and the pool's other
columns passed through.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import InputError
from curation.fastmatch import COMPILED_FORMAT, FastMatcher
from curation.hashing import string_hash64
from curation.matching import matcher_fingerprint
from curation.textrules import DEFAULT_RULE, RULES
from curation.rundir import StageDir, parquet_rows, reason_counts, reject_table
from curation.pool import PoolConfig, plan_units
from curation.settings import setting
from curation.storage import Storage
from jobs.stages import lid, metadata
from jobs.stages.base import (
    PhaseClock,
    Stage,
    StageContext,
    arrow_compute_ready,
    merge_unit_summaries,
    run_units,
    throttle,
)

log = logging.getLogger(__name__)

CORE_COLUMNS = ("uid", "url", "text", "entry_ids")
#: Reject reasons, by code (0 = the row is fine).
REASONS = ("", "invalid_utf8", "null_text", "empty_text", "text_too_long", "null_url", "no_match",
           "no_language_metadata", "invalid_url")
_R = {name: code for code, name in enumerate(REASONS)}
UNREADABLE_FILES = "files.parquet"


@dataclass
class MatchConfig:
    rule: str = setting("metaclip1", "matching rule: 'metaclip1' (MetaCLIP: every entry padded with spaces) or "
                                     "'metaclip2' (MetaCLIP 2 worldwide: captions stripped; an entry side whose "
                                     "edge is punctuation or a CJK/Thai/Lao/Burmese/Khmer/Tibetan character is not "
                                     "padded)", choices=RULES, flag="--match-rule")


class MatchStage(Stage):
    name = "match"
    help = "substring-match pool captions against the metadata entries"
    upstream = (metadata.MetadataStage, lid.LidStage)
    section = "pool"
    Config = PoolConfig
    section_doc = "the input pool and how the match stage reads it"
    extra_sections = {"match": (MatchConfig, "substring matching")}
    failure_reasons = ("unreadable_file", "unreadable_rows")

    def check(self, ctx: StageContext) -> None:
        s = ctx.settings(self)
        if not s.path:
            raise InputError("no pool given: set `pool.path` in the config (or --pool)")
        if not ctx.storage.exists(s.path):
            raise InputError(f"pool not found: {s.path} (`pool.path` in the config, or --pool)")

    def inputs(self, ctx: StageContext) -> list:
        st = ctx.storage
        return [st.stamp(f) for f in st.list_files(ctx.settings(self).path, ".parquet")]

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s: PoolConfig = ctx.settings(self)
        by_lang = ctx.settings(lid.LidStage).enabled
        if not by_lang:
            langs = lid.metadata_languages(ctx.dir(metadata.MetadataStage))
            if len(langs) > 1:
                log.warning("match: the metadata has entries in %d languages (%s) but lid.enabled is off: every "
                            "caption is matched against every language's entries (switch lid on for MetaCLIP 2's "
                            "per-language matching)", len(langs), ", ".join(langs))
        meta = ship_language_matchers(ctx, ctx.cfg.match.rule) if by_lang else ship_matcher(ctx, ctx.cfg.match.rule)
        units, bad = plan_units(s, ctx.storage)
        if bad:
            log.warning("match: skipping %d unreadable pool file(s): %s", len(bad), [b["path"] for b in bad])
            ctx.storage.write_parquet(reject_table(
                pa.array([""] * len(bad), pa.string()), self.name, np.ones(len(bad), np.int8),
                ("", "unreadable_file"), [f"{b['path']}: {b['error']}" for b in bad]),
                out.rejects(UNREADABLE_FILES))
        task_ctx = {"settings": asdict(s), "settings_columns": list(s.columns().values()),
                    "pool_root": ctx.storage.fs(s.path)[1].rstrip("/"),
                    "storage": ctx.storage, "out": out.url, "rejects": out.rejects_url,
                    "lid": ctx.dir(lid.LidStage).url if by_lang else None, **meta}
        t0 = time.perf_counter()
        results = run_units(ctx, out, units, _match_unit, task_ctx, self.name)
        seconds = {"units": round(time.perf_counter() - t0, 3)}
        summary = merge_unit_summaries(results)
        if s.check_duplicate_uids:
            t0 = time.perf_counter()
            found = remove_duplicate_uids(ctx, out, summary["out"])
            seconds["duplicate_check"] = round(time.perf_counter() - t0, 3)
            dups = _duplicates_removed(out)  # includes parts rewritten by an interrupted earlier attempt
            if dups:
                log.warning("match: %s rows repeat an earlier uid; rejected as duplicate_uid (%s found now)",
                            f"{dups:,}", f"{found:,}")
                summary["out"] -= dups
                summary["rejected"] = dict(sorted({**summary["rejected"], "duplicate_uid": dups}.items()))
        if bad:  # an unreadable file counts as one input, rejected (its one reject row names it)
            summary["in"] += len(bad)
            summary["rejected"] = dict(sorted({**summary["rejected"], "unreadable_file": len(bad)}.items()))
        # entries the rule can never match (e.g. "a.b" under metaclip1: captions are split at ".")
        summary.update(units=len(units), files_skipped=[b["path"] for b in bad], n_entries=meta["n_entries"],
                       rule=meta["rule"], entries_never_match=meta["n_never_match"],
                       metadata_fingerprint=meta["metadata_fingerprint"], seconds=seconds)
        return summary


    def output_rows(self, ctx: StageContext, out: StageDir) -> int:
        return parquet_rows(ctx.storage, out.part_files())


STAGE = MatchStage()


# =========================================================================== columns
def _canonical_columns(table: pa.Table, s: PoolConfig) -> pa.Table:
    """The pool's url / text / uid columns under those names (pool.url_col, ... say which they are)."""
    names = {v: k for k, v in s.columns().items() if k != v}
    if not names:
        return table
    return table.rename_columns([names.get(c, c) for c in table.column_names])


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


# =========================================================================== the matcher
def ship_matcher(ctx: StageContext, rule: str = DEFAULT_RULE) -> dict:
    """Compile the FastMatcher for the run's metadata once, on the driver, and ship the file to the
    executors: every worker then maps it in milliseconds instead of building it (about a second and
    half a GB of scratch per worker for 500k entries), and workers on one host share its pages."""
    meta = compile_matcher(metadata.load_entries(ctx.dir(metadata.MetadataStage)), rule)
    ctx.spark.sparkContext.addFile(meta["matcher_local"])
    return meta


def ship_language_matchers(ctx: StageContext, rule: str) -> dict:
    """One compiled matcher per metadata language (each over that language's entries only) and,
    broadcast once, each language's map from its local ids to the global entry ids."""
    table = metadata.entries_table_of(ctx.dir(metadata.MetadataStage), ["entry_id", "entry", "lang"])
    ids = table.column("entry_id").to_numpy()
    langs = np.asarray(table.column("lang").to_pylist(), dtype=object)
    entries = table.column("entry").to_pylist()
    matchers, id_maps = {}, {}
    for lang in sorted(set(langs.tolist())):
        pick = np.flatnonzero(langs == lang)
        pick = pick[np.argsort(ids[pick], kind="stable")]  # local order = global id order
        meta = compile_matcher([entries[i] for i in pick], rule)
        ctx.spark.sparkContext.addFile(meta["matcher_local"])
        matchers[lang] = meta
        id_maps[lang] = ids[pick].astype(np.int32)
    return {"lang_matchers": matchers, "id_maps": ctx.spark.sparkContext.broadcast(id_maps),
            "n_entries": len(entries), "metadata_fingerprint": fingerprint_of(matchers), "rule": rule,
            "n_never_match": sum(m["n_never_match"] for m in matchers.values())}


def fingerprint_of(matchers: dict) -> str:
    from curation.rundir import fingerprint

    return fingerprint({lang: m["metadata_fingerprint"] for lang, m in sorted(matchers.items())})


def compile_matcher(entries: list[str], rule: str = DEFAULT_RULE) -> dict:
    """The compiled matcher file for ``entries`` under ``rule`` (cached in the temp dir by content
    fingerprint and format) and what tasks need to find it."""
    fp = matcher_fingerprint(entries, rule)
    local_dir = os.path.join(tempfile.gettempdir(), "metacurate-metadata")
    os.makedirs(local_dir, exist_ok=True)
    name = f"matcher-{fp}-v{COMPILED_FORMAT}.bin"
    local = os.path.join(local_dir, name)
    if not os.path.exists(local):
        t0 = time.perf_counter()
        matcher = FastMatcher(entries, fingerprint=fp, rule=rule)
        matcher.save(local)
        log.info("match: compiled the matcher for %s entries in %.1fs", f"{len(entries):,}", time.perf_counter() - t0)
    else:
        matcher = FastMatcher.load(local, fp, rule)  # memory-mapped: milliseconds
    return {"metadata_fingerprint": fp, "n_entries": len(entries), "matcher_name": name, "matcher_local": local,
            "rule": rule, "n_never_match": int(matcher.n_never_match)}


def _executor_matcher(task_ctx: dict):
    """The per-process matcher: the driver's compiled file, mapped on first use and reused by later
    tasks in this Python worker (the driver's path on its own host, else the shipped copy)."""
    from curation.fastmatch import load_fast_matcher

    local = task_ctx["matcher_local"]
    if not os.path.exists(local):
        from pyspark import SparkFiles

        local = SparkFiles.get(task_ctx["matcher_name"])
    return load_fast_matcher(local, task_ctx["metadata_fingerprint"], rule=task_ctx.get("rule", DEFAULT_RULE))


# =========================================================================== one unit
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHA_CHUNK = 8192


def _fast_sha224():
    """CPython's built-in SHA-224 (``_sha2`` from 3.12, ``_sha256`` before) when present: the same
    digest as ``hashlib.sha224`` without OpenSSL's per-call set-up, most of the cost for a URL."""
    for module in ("_sha2", "_sha256"):
        try:
            return getattr(__import__(module), "sha224")
        except (ImportError, AttributeError):
            continue
    return hashlib.sha224


_SHA224 = _fast_sha224()


def texts_and_reasons(text_col: pa.Array, max_bytes: int) -> tuple[pa.Array, np.ndarray, dict[int, str]]:
    """Valid texts (null where invalid), a reason code per row (int8, 0 = valid) and a detail string
    for the few rows that carry one (row index -> detail)."""
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


_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def valid_urls(url_col: pa.Array) -> tuple[pa.Array, dict[int, str]]:
    """The URL column as strings, and the rows whose URL cannot be fetched as it stands (row ->
    detail): bytes that are not UTF-8, or ASCII control characters (a URL with a newline or NUL
    makes HTTP clients fail the request, and used to fail a whole img2dataset shard with it)."""
    bad: dict[int, str] = {}
    if pa.types.is_binary(url_col.type) or pa.types.is_large_binary(url_col.type):
        raw = url_col
    else:
        url_col = url_col.cast(pa.string()) if not pa.types.is_string(url_col.type) else url_col
        try:
            url_col.validate(full=True)
            raw = None
        except pa.ArrowInvalid:
            raw = url_col.view(pa.binary())
    if raw is not None:  # rare: find the rows that are not UTF-8
        values = []
        for i, b in enumerate(raw.to_pylist()):
            try:
                values.append(None if b is None else b.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(None)
                bad[i] = f"URL not UTF-8 at byte {exc.start}: {b[max(0, exc.start - 8):exc.start + 8]!r}"
        url_col = pa.array(values, pa.string())
    ctrl = pc.fill_null(pc.match_substring_regex(url_col, r"[\x00-\x1f\x7f]"), False).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(ctrl).tolist():
        u = url_col[i].as_py()
        m = _URL_CONTROL.search(u)
        bad[i] = f"URL has control character {m.group()!r} at {m.start()}: {u[max(0, m.start() - 20):m.start() + 20]!r}"
    return url_col, bad


def sha224_uids(urls: pa.Array) -> pa.Array:
    """``sha224(url)[:24]`` (hex, MetaCLIP's uid) for every row of a string/binary array without
    nulls: one C call per row, the hex text and the Arrow array built with numpy."""
    n = len(urls)
    if n == 0:
        return pa.array([], pa.string())
    raw = urls.view(pa.binary()) if pa.types.is_string(urls.type) else urls.cast(pa.binary())
    sha = _SHA224
    # In slices: many live bytes objects at once made CPython map fresh arenas for every unit.
    digests = b"".join([b"".join([sha(b).digest() for b in raw.slice(i, _SHA_CHUNK).to_pylist()])
                        for i in range(0, n, _SHA_CHUNK)])
    first12 = np.frombuffer(digests, dtype=np.uint8).reshape(n, 28)[:, :12]
    hexed = np.empty((n, 24), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[first12 >> 4]
    hexed[:, 1::2] = _HEX[first12 & 15]
    offsets = np.arange(n + 1, dtype=np.int32) * 24
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(hexed))


def _pool_relative(path: str, pool_root: str, storage: Storage) -> str:
    """A pool file's path relative to the pool (its name when the pool is one file): what
    position-based uids hash, so they do not change when the pool is moved or mounted elsewhere."""
    fpath = storage.fs(path)[1]
    if fpath.startswith(pool_root + "/"):
        return fpath[len(pool_root) + 1:]
    return fpath.rsplit("/", 1)[-1]


def row_uids(table: pa.Table, file_path: str, first_row: int) -> tuple[pa.Array, np.ndarray]:
    """The uid of every row (the ``uid`` column, else ``sha224(url)[:24]``, else an id from the row's
    position in the pool) and a mask of rows without a URL."""
    url_col = table.column("url").combine_chunks()
    if pa.types.is_binary(url_col.type) or pa.types.is_large_binary(url_col.type):
        url_col = url_col.cast(pa.binary())
    else:
        url_col = url_col.cast(pa.string())
    null_url = pc.fill_null(pc.equal(pc.binary_length(url_col), 0), True).to_numpy(zero_copy_only=False)
    from_url = sha224_uids(pc.fill_null(url_col, pa.scalar(b"" if pa.types.is_binary(url_col.type) else "",
                                                               url_col.type)))
    if "uid" in table.column_names:
        given = table.column("uid").combine_chunks().cast(pa.string())
        has_given = pc.fill_null(pc.greater(pc.binary_length(given), 0), False)
        uids = pc.if_else(has_given, given, from_url)
        need_pos = null_url & ~has_given.to_numpy(zero_copy_only=False)
    else:
        uids = from_url
        need_pos = null_url
    if need_pos.any():
        fixed = uids.to_pylist()
        for i in np.flatnonzero(need_pos).tolist():
            fixed[i] = "row-" + hashlib.sha224(f"{file_path}#{first_row + i}".encode()).hexdigest()[:20]
        uids = pa.array(fixed, pa.string())
    return uids, null_url


def write_part(table: pa.Table, url: str, storage: Storage) -> None:
    """Part files: zstd; dictionary encoding only for the small columns (long unique strings such as
    uid, url and text made pyarrow try and abandon a dictionary); no column statistics (min/max of
    captions and URLs serve no reader)."""
    small = [f.name for f in table.schema if f.name in ("stage", "reason", "entry_ids")]
    storage.write_parquet(table, url, use_dictionary=small or False, write_statistics=False)


def _part_name(unit_id: int) -> str:
    return f"part-{unit_id:06d}.parquet"


def _match_unit(unit: dict, task_ctx: dict) -> dict:
    s = PoolConfig(**task_ctx["settings"])
    storage: Storage = task_ctx["storage"]
    out = StageDir(task_ctx["out"], storage, task_ctx["rejects"])
    throttle()
    clock = PhaseClock()
    arrow_compute_ready(clock)
    rel_path = _pool_relative(unit["path"], task_ctx["pool_root"], storage)
    try:
        with storage.parquet_file(unit["path"]) as pf:
            first_row = sum(pf.metadata.row_group(i).num_rows for i in range(unit["rg_start"]))
            table = pf.read_row_groups(list(range(unit["rg_start"], unit["rg_end"])))
    except (OSError, ValueError, pa.ArrowException) as exc:  # a corrupt page, a truncated file
        where = f"{unit['path']} (row groups {unit['rg_start']}-{unit['rg_end'] - 1})"
        why = f"{type(exc).__name__}: " + " ".join(repr(str(exc))[1:-1].split())  # one line, no control chars
        if s.on_bad_file != "skip":
            raise InputError(f"pool file {where} cannot be read: {why}; fix or remove it, or set "
                             "pool.on_bad_file: skip to record its rows as rejects and continue") from None
        return _unreadable_unit(unit, task_ctx, out, rel_path, f"{where}: {why}")
    table = _plain_columns(_canonical_columns(table, s), ("url", "text", "uid"))
    n = table.num_rows
    clock.lap("read")
    uids, null_url = row_uids(table, rel_path, first_row)
    clock.lap("uid")
    texts, codes, details = texts_and_reasons(table.column("text").combine_chunks(), s.max_text_bytes)
    codes[(codes == 0) & null_url] = _R["null_url"]
    urls, bad_urls = valid_urls(table.column("url").combine_chunks())
    for i, why in bad_urls.items():
        if codes[i] == 0:
            codes[i] = _R["invalid_url"]
            details[i] = why
    langs = None
    if task_ctx.get("lid"):  # each caption against its own language's entries (MetaCLIP 2)
        langs = lid.unit_langs(StageDir(task_ctx["lid"], storage), unit["unit"])
        if len(langs) != n:
            raise InputError(f"the lid stage labelled {len(langs):,} rows of unit {unit['unit']} but it holds {n:,}; "
                             "the pool changed since: run `metacurate lid` again")
        no_meta = ~np.isin(np.asarray(langs.to_pylist(), dtype=object), list(task_ctx["lang_matchers"]))
        codes[(codes == 0) & no_meta] = _R["no_language_metadata"]
    valid_idx = np.flatnonzero(codes == 0)
    valid_texts = texts.take(pa.array(valid_idx)) if len(valid_idx) < n else texts
    clock.lap("validate")
    if langs is None:
        matched = _executor_matcher(task_ctx).match_arrow(valid_texts)
    else:
        matched = _match_by_language(valid_texts, langs.take(pa.array(valid_idx)), task_ctx)
    clock.lap("match")
    lengths = pc.list_value_length(matched).to_numpy(zero_copy_only=False)
    codes[valid_idx[lengths == 0]] = _R["no_match"]
    keep_local = lengths > 0
    keep_rows = pa.array(valid_idx[keep_local])
    passthrough = [c for c in table.column_names if c not in CORE_COLUMNS]
    rows = pa.table({
        "uid": uids.take(keep_rows),
        "url": urls.take(keep_rows),
        "text": texts.take(keep_rows),
        "entry_ids": matched.filter(pa.array(keep_local)).cast(pa.list_(pa.int32())),
        **({"lang": langs.take(keep_rows)} if langs is not None else {}),
        **{c: table.column(c).take(keep_rows) for c in passthrough if not (langs is not None and c == "lang")},
    })
    rej_rows = np.flatnonzero(codes != 0)
    pos = {int(r): j for j, r in enumerate(rej_rows.tolist())} if details else {}
    rejects = reject_table(uids.take(pa.array(rej_rows)), MatchStage.name, codes[rej_rows], REASONS,
                           {pos[i]: d for i, d in details.items()})
    clock.lap("assemble")
    name = _part_name(unit["unit"])
    write_part(rejects, out.rejects(name), storage)
    part_url = out.path(name)
    write_part(rows, part_url, storage)
    if s.check_duplicate_uids:  # pass 1 of the duplicate check reads these 8 bytes per row
        _write_uid_hashes(rows.column("uid").combine_chunks(), _uid_hash_url(out, name), storage)
    clock.lap("write")
    summary = {"unit": unit["unit"], "in": n, "out": rows.num_rows, "rejected": reason_counts(codes, REASONS),
               "phases": clock.as_dict()}
    out.write_unit(unit["unit"], summary)
    return summary


def _match_by_language(texts: pa.Array, langs: pa.Array, task_ctx: dict) -> pa.ListArray:
    """Each text matched with its language's matcher, local ids mapped to global ids; the rows'
    order is kept (every text's language has a matcher here: the others were rejected before)."""
    from curation.fastmatch import load_fast_matcher

    n = len(texts)
    lang_of = np.asarray(langs.to_pylist(), dtype=object)
    lengths = np.zeros(n, dtype=np.int64)
    pieces_rows, pieces_vals = [], []
    for lang in sorted(set(lang_of.tolist())):
        rows = np.flatnonzero(lang_of == lang)
        meta = task_ctx["lang_matchers"][lang]
        local = meta["matcher_local"]
        if not os.path.exists(local):
            from pyspark import SparkFiles

            local = SparkFiles.get(meta["matcher_name"])
        matched = load_fast_matcher(local, meta["metadata_fingerprint"], rule=meta.get("rule", DEFAULT_RULE)) \
            .match_arrow(texts.take(pa.array(rows)))
        offsets = matched.offsets.to_numpy().astype(np.int64)
        values = matched.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
        lens = np.diff(offsets)
        lengths[rows] = lens
        pieces_rows.append(np.repeat(rows, lens))
        pieces_vals.append(task_ctx["id_maps"].value[lang][values])  # monotone map: ids stay sorted
    if pieces_rows:
        row_of = np.concatenate(pieces_rows)
        vals = np.concatenate(pieces_vals)[np.argsort(row_of, kind="stable")]
    else:
        vals = np.zeros(0, np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(vals.astype(np.int32), pa.int32()))


def _unreadable_unit(unit: dict, task_ctx: dict, out: StageDir, rel_path: str, detail: str) -> dict:
    """A unit whose rows cannot be read (``pool.on_bad_file: skip``): every row it should hold
    (the footer says how many) becomes an ``unreadable_rows`` reject with a position-based uid."""
    storage: Storage = task_ctx["storage"]
    with storage.parquet_file(unit["path"]) as pf:
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(unit["rg_start"]))
        schema = pf.schema_arrow
    n = unit["rows"]
    uids = pa.array(["row-" + hashlib.sha224(f"{rel_path}#{first_row + i}".encode()).hexdigest()[:20]
                     for i in range(n)], pa.string())
    codes = np.ones(n, np.int8)
    write_part(reject_table(uids, MatchStage.name, codes, ("", "unreadable_rows"), [detail[:500]] * n),
               out.rejects(_part_name(unit["unit"])), storage)
    rows = pa.table({"uid": pa.array([], pa.string()), "url": pa.array([], pa.string()),
                     "text": pa.array([], pa.string()), "entry_ids": pa.array([], pa.list_(pa.int32())),
                     **{c: pa.array([], schema.field(c).type) for c in schema.names
                        if c not in CORE_COLUMNS and c not in task_ctx.get("settings_columns", ())}})
    write_part(rows, out.path(_part_name(unit["unit"])), storage)
    summary = {"unit": unit["unit"], "in": n, "out": 0, "rejected": {"unreadable_rows": n} if n else {},
               "phases": {}}
    out.write_unit(unit["unit"], summary)
    return summary


# =========================================================================== duplicate uids
_UIDHASH = "_uidhash"
_DEDUP = "_dedup"
#: Above this many candidate hashes the exact pass runs over every row instead of broadcasting them.
MAX_BROADCAST_CANDIDATES = 5_000_000


def _uid_hash_url(out: StageDir, part_name: str) -> str:
    """``match/_uidhash/part-N.npy`` beside ``match/part-N.parquet``."""
    return out.path(_UIDHASH, part_name[:-len(".parquet")] + ".npy")


def _write_uid_hashes(uids: pa.Array, url: str, storage: Storage) -> None:
    """The sorted 64-bit hashes of a part's uids, written by the match task that has them in memory
    (pass 1 of the duplicate check then reads 8 bytes per row instead of the uid column). A part
    rewritten later by pass 2 keeps its old file: stale hashes only add candidates, which pass 2
    compares exactly."""
    buf = io.BytesIO()
    np.save(buf, np.sort(string_hash64(uids)), allow_pickle=False)
    storage.write_bytes(url, buf.getvalue())


def _unit_of(path: str) -> int:
    return int(path.rsplit("/", 1)[-1][len("part-"):-len(".parquet")])


def _sorted_uid_hashes(out: StageDir, path: str) -> np.ndarray:
    """Sorted uid hashes of one match part: from its side file, else from the part."""
    try:
        return np.load(io.BytesIO(out.storage.read_bytes(_uid_hash_url(out, path.rsplit("/", 1)[-1]))),
                       allow_pickle=False)
    except (FileNotFoundError, OSError, ValueError):
        return np.sort(_part_uid_hashes(out, path)[2])


def _part_uid_hashes(out: StageDir, path: str) -> tuple[int, pa.Array, np.ndarray]:
    uid = out.storage.read_parquet(path, ["uid"]).column("uid").combine_chunks()
    return _unit_of(path), uid, string_hash64(uid)


def hash_range_starts(n_buckets: int) -> np.ndarray:
    """Lowest hash of each of ``n_buckets`` equal ranges of the 64-bit hash space (bucket b holds
    ``starts[b] <= h < starts[b + 1]``)."""
    return np.array([-(-(b << 64) // n_buckets) for b in range(n_buckets)], dtype=np.uint64)


def hash_buckets(out: StageDir, path: str, n_buckets: int) -> list[tuple[int, np.ndarray]]:
    """Pass 1: one part's uid hashes split by bucket. Buckets are ranges of the hash space, so a
    part's sorted hashes split into contiguous, still sorted runs with one ``searchsorted``."""
    h = _sorted_uid_hashes(out, path)
    if h.size == 0:
        return []
    cuts = np.searchsorted(h, hash_range_starts(n_buckets), side="left").tolist() + [len(h)]
    return [(b, h[cuts[b]:cuts[b + 1]]) for b in range(n_buckets) if cuts[b + 1] > cuts[b]]


def repeated_hashes(arrays) -> list[np.ndarray]:
    """Hash values seen more than once among some buckets' hashes (candidates; the strings are
    compared later). Equal hashes share a bucket, so whole buckets can be checked together."""
    arrays = list(arrays)
    if not arrays:
        return []
    h = np.concatenate(arrays)
    if h.size < 2:
        return []
    h.sort()
    rep = np.unique(h[1:][h[1:] == h[:-1]])
    return [rep] if rep.size else []


def _uid_buckets(out: StageDir, path: str, n_buckets: int,
                 candidates: np.ndarray | None = None) -> list[tuple[int, tuple]]:
    """Pass 2: one part's uids (only those whose hash is a candidate, when given) split by bucket:
    ``(bucket, (unit, rows, uids))`` records."""
    unit_id, uid, h = _part_uid_hashes(out, path)
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
    found = []
    for sel in np.split(order, cuts):
        rows = rows_all[sel]
        found.append((int(bucket[sel[0]]), (unit_id, rows.astype(np.int32), uid.take(pa.array(rows)))))
    return found


def later_occurrences(groups) -> list[tuple[int, tuple]]:
    """Within some whole buckets: every occurrence of a uid after its first (pool order = unit,
    row), as ``(unit, (rows, unit_of_first))`` records; strings compared exactly."""
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
    found = []
    for u in np.unique(lu).tolist():
        sel = lu == u
        found.append((int(u), (lr[sel], lf[sel])))
    return found


def _bucket_partition(key: int) -> int:
    """Integer keys (bucket or unit ids) go to partition ``key % n`` (Spark takes the modulo)."""
    return key


def _drop_in_part(out: StageDir, unit_id: int, rows: np.ndarray, details: list[str]) -> int:
    """Remove the later occurrences ``rows`` from one match part. Order: the reject file, the
    marker, then the rewritten part; a re-run after a crash anywhere finds the same rows again
    (the first occurrence of a uid is never removed), so it redoes the same work, never more."""
    name = _part_name(unit_id)
    part_url = out.path(name)
    table = out.storage.read_parquet(part_url)
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[rows] = True
    dropped = table.filter(pa.array(drop))
    rejects = reject_table(dropped.column("uid").combine_chunks(), MatchStage.name, np.ones(len(rows), np.int8),
                           ("", "duplicate_uid"), pa.array(details, pa.string()))
    write_part(rejects, out.rejects(f"dup-{unit_id:06d}.parquet"), out.storage)
    out.storage.write_json(out.path(_DEDUP, f"{unit_id:06d}.json"), {"unit": unit_id, "duplicate_uid": int(len(rows))})
    write_part(table.filter(pa.array(~drop)), part_url, out.storage)
    return int(len(rows))


def _apply_partition_drops(records, out: StageDir) -> list[int]:
    by_unit: dict[int, list] = {}
    for unit_id, piece in records:
        by_unit.setdefault(unit_id, []).append(piece)
    done = []
    for unit_id, pieces in sorted(by_unit.items()):
        rows = np.concatenate([r for r, _ in pieces])
        firsts = np.concatenate([f for _, f in pieces])
        order = np.argsort(rows)
        rows, firsts = rows[order], firsts[order]
        details = [f"repeat of a uid kept in match/{_part_name(int(f))}" for f in firsts.tolist()]
        done.append(_drop_in_part(out, unit_id, rows, details))
    return done


def remove_duplicate_uids(ctx: StageContext, out: StageDir, matched_rows: int) -> int:
    """Keep the first occurrence (pool order: file, then row) of every uid among matched rows and
    reject the others as ``duplicate_uid`` (detail: the part holding the kept one).

    Python RDD shuffles of numpy/Arrow arrays, not a JVM group-by of strings. Pass 1 shuffles one
    64-bit hash per row (from the side files the match tasks wrote), bucketed by hash range, and
    finds hash values seen twice; with none (the usual pool) the check ends there. Pass 2 sends
    only the candidate rows' uid strings to their bucket, compares them exactly, and sends the
    later occurrences back to their parts, which executors rewrite. The driver receives the
    candidate hashes (at most ``MAX_BROADCAST_CANDIDATES``; beyond, pass 2 takes every row) and
    per-part counters."""
    files = out.part_files()
    if not files:
        return 0
    sc = ctx.spark.sparkContext
    n_tasks = max(1, min(len(files), sc.defaultParallelism * 2))
    n_buckets = max(sc.defaultParallelism * 2, matched_rows // 2_000_000)
    n_reduce = min(n_buckets, max(n_tasks, 1) * 4)
    # partitionBy + mapPartitions rather than groupByKey: its external merger measures the worker's
    # whole RSS (the mapped matcher included) against spark.python.worker.memory and spills early.
    cands = (sc.parallelize(files, n_tasks)
             .flatMap(lambda path: hash_buckets(out, path, n_buckets))
             .partitionBy(n_reduce, _bucket_partition)
             .mapPartitions(lambda records: repeated_hashes(h for _, h in records))
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
    later = (sc.parallelize(files, n_tasks)
             .flatMap(lambda path: _uid_buckets(out, path, n_buckets, cand_bc.value if cand_bc else None))
             .partitionBy(n_reduce, _bucket_partition)
             .mapPartitions(lambda records: later_occurrences([g for _, g in records])))
    done = (later.partitionBy(n_tasks, _bucket_partition)
            .mapPartitions(lambda records: _apply_partition_drops(records, out))
            .collect())
    return int(sum(done))


def _duplicates_removed(out: StageDir) -> int:
    url = out.path(_DEDUP)
    if not out.storage.exists(url):
        return 0
    return sum(int(out.storage.read_json(f)["duplicate_uid"]) for f in out.storage.list_files(url, ".json"))
