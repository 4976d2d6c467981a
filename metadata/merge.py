"""Merge the sources into one entry list and write it atomically (DESIGN §2).

MetaCLIP's list is WordNet, then Wikipedia unigrams, bigrams and titles, with exact-string dedup
(the first source that brings a string keeps it) and a cap per source. Its 500k list is
86,654 + 251,465 + 100,646 + 61,235 = 500,000 entries, so the caps count the *new* strings a
source contributes: we dedup first, then take the best ``cap`` of what is left.

Determinism: inside a source candidates are ordered by score descending, then the string
(Python's code-point order) ascending, so equal scores never depend on partitioning. Same
inputs -> byte-identical ``entries.parquet``, ``metadata.json`` and ``report.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import InputError
from metadata.lint import lint_entries

log = logging.getLogger(__name__)

SOURCE_ORDER = ("wordnet", "unigram", "bigram", "title")
DEFAULT_CAPS: dict[str, int | None] = {"wordnet": None, "unigram": 251_465, "bigram": 100_646, "title": 61_235}

ENTRIES_SCHEMA = pa.schema([
    pa.field("entry_id", pa.int32(), nullable=False),
    pa.field("entry", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("score", pa.float64()),
])


@dataclass
class SourceCandidates:
    """One source's candidates after its thresholds: ``(entry, score)`` pairs.

    ``total`` is how many candidates passed the thresholds; it may exceed ``len(candidates)``
    when the caller only fetched the best ``cap + len(earlier entries)`` (enough to fill the cap
    whatever the overlap, without bringing every candidate to the driver).
    """

    source: str
    candidates: list[tuple[str, float]]
    total: int | None = None
    stats: dict = field(default_factory=dict)


def rank(candidates: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Score descending, then the string ascending: the deterministic order of a source."""
    return sorted(candidates, key=lambda es: (-es[1], es[0]))


def merge_sources(sources: Sequence[SourceCandidates], caps: dict[str, int | None] | None = None
                  ) -> tuple[list[tuple[str, str, float]], dict]:
    """Merge in the given order; return ``[(entry, source, score)]`` and per-source stats."""
    caps = {**DEFAULT_CAPS, **(caps or {})}
    seen: set[str] = set()
    merged: list[tuple[str, str, float]] = []
    stats: dict[str, dict] = {}
    for src in sources:
        cap = caps.get(src.source)
        total = src.total if src.total is not None else len(src.candidates)
        kept = dup = 0
        for entry, score in rank(src.candidates):
            if entry in seen:
                dup += 1
                continue
            if cap is not None and kept >= cap:
                continue
            seen.add(entry)
            merged.append((entry, src.source, float(score)))
            kept += 1
        stats[src.source] = {
            **src.stats,
            "candidates": total,
            "duplicates_of_earlier": dup,
            "new_before_cap": total - dup,
            "cap": cap,
            "kept": kept,
            "over_cap": total - dup - kept,
        }
        log.info("%s: %d candidates, %d already present, %d kept (cap %s)", src.source, total, dup, kept, cap)
    return merged, stats


def entries_table(merged: Sequence[tuple[str, str, float | None]]) -> pa.Table:
    """``entries.parquet`` rows: the id is the position in the list."""
    if len(merged) >= 2**31:
        raise InputError(f"{len(merged)} entries do not fit int32 entry ids")
    return pa.table({
        "entry_id": pa.array(range(len(merged)), pa.int32()),
        "entry": pa.array([m[0] for m in merged], pa.string()),
        "source": pa.array([m[1] for m in merged], pa.string()),
        "score": pa.array([None if m[2] is None or (isinstance(m[2], float) and math.isnan(m[2]))
                           else m[2] for m in merged], pa.float64()),
    }, schema=ENTRIES_SCHEMA)


def build_report(merged: Sequence[tuple[str, str, float | None]], source_stats: dict, extra: dict | None = None
                 ) -> dict:
    """The ``report.json`` content: per-source counts, lint findings, and the caller's extras."""
    entries = [m[0] for m in merged]
    per_source: dict[str, int] = {}
    for m in merged:
        per_source[m[1]] = per_source.get(m[1], 0) + 1
    report = {
        "entries": len(entries),
        "entries_per_source": per_source,
        "sources": source_stats,
        "lint": lint_entries(entries, [m[1] for m in merged]),
    }
    report.update(extra or {})
    return report


def _dumps(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def fingerprint(obj) -> str:
    """A stable hash of a JSON-able description of the inputs and settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _json_files(merged: Sequence[tuple[str, str, float | None]], report: dict, summary: dict) -> dict[str, bytes]:
    return {
        "metadata.json": _dumps([m[0] for m in merged]),
        "report.json": _dumps(report),
        "summary.json": _dumps(summary),
    }


def write_outputs(out_dir: str, merged: Sequence[tuple[str, str, float | None]], report: dict,
                  summary: dict, config_fingerprint: str) -> None:
    """Write ``entries.parquet``, ``metadata.json``, ``report.json``, ``summary.json``, ``_SUCCESS``.

    Local: everything goes into a hidden sibling temp dir that is renamed onto ``out_dir`` at the
    end, so a crash never leaves a complete-looking folder. Object stores (``s3://`` …): files are
    written in place with any old ``_SUCCESS`` removed first and the new one written last.
    """
    table = entries_table(merged)
    success = _dumps({"stage": "metadata", "fingerprint": config_fingerprint})
    if "://" in out_dir and not out_dir.startswith("file://"):
        _write_remote(out_dir, table, _json_files(merged, report, summary), success)
        return
    out = Path(out_dir.removeprefix("file://"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        pq.write_table(table, tmp / "entries.parquet", compression="zstd")
        for name, data in _json_files(merged, report, summary).items():
            (tmp / name).write_bytes(data)
        (tmp / "_SUCCESS").write_bytes(success)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "prev")
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d entries to %s", len(merged), out)


def _write_remote(out_dir: str, table: pa.Table, files: dict[str, bytes], success: bytes) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(out_dir)
    root = root.rstrip("/")
    if fs.exists(f"{root}/_SUCCESS"):
        fs.rm(f"{root}/_SUCCESS")
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/entries.parquet", "wb") as f:
        pq.write_table(table, f, compression="zstd")
    for name, data in files.items():
        with fs.open(f"{root}/{name}", "wb") as f:
            f.write(data)
    with fs.open(f"{root}/_SUCCESS", "wb") as f:
        f.write(success)
