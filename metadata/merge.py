"""Merge the sources into one entry list and write it (entries.parquet, metadata.json, _report.json).

MetaCLIP's list is WordNet, then Wikipedia unigrams, bigrams and titles, with exact-string dedup
(the first source that brings a string keeps it) and a cap per source. Its 500k list is
86,654 + 251,465 + 100,646 + 61,235 = 500,000 entries, so the caps count the *new* strings a
source contributes: we dedup first, then take the best ``cap`` of what is left.

Several languages (MetaCLIP 2): each language is merged on its own, in that order of sources, so
dedup and caps are per language and the same string in two languages is two entries; the lists
are concatenated in the configured language order, so ids stay global positions in
``metadata.json``, and ``entries.parquet`` says each entry's ``lang``. MetaCLIP 2 caps a source of
a language at a share of its candidates too (:func:`effective_cap`).

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
    # ISO 639-1 code ("en", "zh"); last, so a reader of the first four columns sees what it always did
    pa.field("lang", pa.string(), nullable=False),
])
LISTS = "_lists"


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


def effective_cap(cap: int | None, share: float | None, candidates: int) -> int | None:
    """``min(cap, floor(share * candidates))``: MetaCLIP 2 keeps at most a share of a language's
    candidates (10% of unigrams, 76% of titles), never more than the English cap. None: no cap."""
    if share is None:
        return cap
    by_share = int(math.floor(share * candidates + 1e-9))  # 0.29 * 100 is 28.999...: still 29
    return by_share if cap is None else min(cap, by_share)


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


def entries_table(merged: Sequence[tuple[str, str, float | None]], langs: Sequence[str] | str = "en") -> pa.Table:
    """``entries.parquet`` rows: the id is the position in the list; ``langs``: each entry's
    language, or one code for all."""
    if len(merged) >= 2**31:
        raise InputError(f"{len(merged)} entries do not fit int32 entry ids")
    langs = [langs] * len(merged) if isinstance(langs, str) else list(langs)
    if len(langs) != len(merged):
        raise ValueError(f"{len(langs)} languages for {len(merged)} entries")
    return pa.table({
        "entry_id": pa.array(range(len(merged)), pa.int32()),
        "entry": pa.array([m[0] for m in merged], pa.string()),
        "source": pa.array([m[1] for m in merged], pa.string()),
        "score": pa.array([None if m[2] is None or (isinstance(m[2], float) and math.isnan(m[2]))
                           else m[2] for m in merged], pa.float64()),
        "lang": pa.array(langs, pa.string()),
    }, schema=ENTRIES_SCHEMA)


def build_report(merged: Sequence[tuple[str, str, float | None]], source_stats: dict, extra: dict | None = None,
                 ids: Sequence[int] | None = None) -> dict:
    """The ``report.json`` content of one language: per-source counts, lint findings, and the
    caller's extras; ``ids``: the entries' global ids (default: their positions)."""
    entries = [m[0] for m in merged]
    per_source: dict[str, int] = {}
    for m in merged:
        per_source[m[1]] = per_source.get(m[1], 0) + 1
    report = {
        "entries": len(entries),
        "entries_per_source": per_source,
        "sources": source_stats,
        "lint": lint_entries(entries, [m[1] for m in merged], ids=ids),
    }
    report.update(extra or {})
    return report


#: Per-source counts that add up over languages (``cap`` and the source's own stats do not).
_ADDITIVE = ("candidates", "duplicates_of_earlier", "new_before_cap", "kept", "over_cap")


def combine_reports(blocks: dict[str, dict], extra: dict | None = None) -> dict:
    """The report of a list holding several languages: each language's :func:`build_report`
    block under ``languages``, and the totals over them at the top. Lint findings stay per
    language (the same string in two languages is two entries, not a duplicate); the top-level
    ``lint`` adds them up. A one-language report also keeps that language's block at the top
    level, exactly as a report before languages existed."""
    langs = list(blocks)
    if len(langs) == 1:
        report = dict(blocks[langs[0]])
    else:
        per_source: dict[str, int] = {}
        sources: dict[str, dict] = {}
        for b in blocks.values():
            for src, n in b["entries_per_source"].items():
                per_source[src] = per_source.get(src, 0) + n
            for src, st in b["sources"].items():
                acc = sources.setdefault(src, {k: 0 for k in _ADDITIVE if k in st})
                for k in acc:
                    acc[k] += st.get(k, 0)
        report = {"entries": sum(b["entries"] for b in blocks.values()), "entries_per_source": per_source,
                  "sources": sources, "lint": combine_lints({k: b["lint"] for k, b in blocks.items()})}
    report["entries_per_lang"] = {k: b["entries"] for k, b in blocks.items()}
    report["languages"] = blocks
    report.update(extra or {})
    return report


def combine_lints(lints: dict[str, dict], max_examples: int = 20) -> dict:
    """Per-language lint reports added up; each example names its language."""
    first = next(iter(lints.values()))
    counts = {k: 0 for k in first["counts"]}
    examples: dict[str, list] = {k: [] for k in first["examples"]}
    by_source: dict[str, dict[str, int]] = {}
    for lang, lint in lints.items():
        for k, n in lint["counts"].items():
            counts[k] = counts.get(k, 0) + n
        for k, exs in lint["examples"].items():
            room = max_examples - len(examples.setdefault(k, []))
            examples[k].extend({**e, "lang": lang} for e in exs[:max(room, 0)])
        for src, c in lint.get("by_source", {}).items():
            acc = by_source.setdefault(src, {})
            for k, n in c.items():
                acc[k] = acc.get(k, 0) + n
    out = {"entries": sum(x["entries"] for x in lints.values()),
           "never_match": sum(x["never_match"] for x in lints.values()), "counts": counts, "examples": examples}
    if any("by_source" in x for x in lints.values()):
        out["by_source"] = {s: dict(sorted(c.items())) for s, c in sorted(by_source.items())}
    return out


def _dumps(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def list_path(out_dir: str, lang: str) -> str:
    """``_lists/<lang>.json``: one language's entry strings, in global id order."""
    return join(out_dir, LISTS, f"{lang}.json")


def write_outputs(out_dir: str, merged: Sequence[tuple[str, str, float | None]], report: dict,
                  storage: Storage, langs: Sequence[str] | str = "en") -> None:
    """Write ``entries.parquet``, ``metadata.json`` (the list, MetaCLIP's format: every language,
    id = position), ``_lists/<lang>.json`` (one language's strings in id order) and ``_report.json``.

    Each file is written atomically; the folder counts as complete once the stage writes its
    ``_SUCCESS`` marker after these (ARCHITECTURE.md, "The stage contract")."""
    table = entries_table(merged, langs)
    storage.write_parquet(table, join(out_dir, "entries.parquet"))
    storage.write_bytes(join(out_dir, "metadata.json"), _dumps([m[0] for m in merged]))
    per_lang: dict[str, list[str]] = {}
    for m, lang in zip(merged, table.column("lang").to_pylist()):
        per_lang.setdefault(lang, []).append(m[0])
    for lang, entries in per_lang.items():
        storage.write_bytes(list_path(out_dir, lang), _dumps(entries))
    storage.write_bytes(join(out_dir, "_report.json"), _dumps(report))
    log.info("wrote %d entries (%s) to %s", len(merged), ", ".join(f"{k} {len(v)}" for k, v in per_lang.items()),
             out_dir)
