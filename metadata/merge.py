"""Merge the sources into one entry list and write it (entries.parquet, metadata.json, _report.json).

MetaCLIP's list is WordNet, then Wikipedia unigrams, bigrams and titles, with exact-string dedup
(the first source that brings a string keeps it) and a cap per source. Its 500k list is
86,654 + 251,465 + 100,646 + 61,235 = 500,000 entries, so the caps count the *new* strings a
source contributes: we dedup first, then take the best ``cap`` of what is left.

Determinism: inside a source candidates are ordered by score descending, then the string
(Python's code-point order) ascending, so equal scores never depend on partitioning. Same
inputs -> byte-identical ``entries.parquet``, ``metadata.json`` and ``_report.json``.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pyarrow as pa

from curation.errors import InputError
from curation.storage import Storage, join
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


def write_outputs(out_dir: str, merged: Sequence[tuple[str, str, float | None]], report: dict,
                  storage: Storage) -> None:
    """Write ``entries.parquet``, ``metadata.json`` (the list, MetaCLIP's format) and ``_report.json``.

    Each file is written atomically; the folder counts as complete once the stage writes its
    ``_SUCCESS`` marker after these (ARCHITECTURE.md, "The stage contract")."""
    storage.write_parquet(entries_table(merged), join(out_dir, "entries.parquet"))
    storage.write_bytes(join(out_dir, "metadata.json"), _dumps([m[0] for m in merged]))
    storage.write_bytes(join(out_dir, "_report.json"), _dumps(report))
    log.info("wrote %d entries to %s", len(merged), out_dir)
