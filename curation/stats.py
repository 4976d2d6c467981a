"""Distribution statistics of a curation run, computed from small per-entry tables.

Why a separate, Spark-free module: the distribution report and the terminal inspector both need
the same figures (how skewed the raw matches are, what balancing cut, which entries stay whole),
and those figures only need the per-entry aggregates the count / balance stages already wrote
(the count stage's entry counts, the balance stage's kept counts and t sweep) —
at most ~500k rows, never row-sized data. Everything here works on numpy arrays so it can be
unit-tested exactly on hand-made counts.

Vocabulary (ARCHITECTURE.md, "Balancing"):
- ``count[e]``: number of texts whose matched set contains entry ``e``; "matches" = Σ count.
- ``kept[e]``: number of *kept* texts containing ``e`` after balancing.
- head entries: ``count > t`` (sub-sampled); tail entries: ``0 < count <= t`` (kept at 100%).
- tail coverage: share of matched entries (count > 0) that are tail entries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from curation.errors import InputError

__all__ = [
    "EntryStats",
    "sorted_counts",
    "cumulative_share",
    "top_k_share",
    "head_tail_split",
    "tail_coverage",
    "coverage_curve",
    "per_source_breakdown",
    "top_head_entries",
    "kept_fraction_vs_t",
    "distribution_summary",
]


@dataclass(frozen=True)
class EntryStats:
    """Per-entry aligned arrays: one position per entry of ``count/entry_counts.parquet``.

    ``kept`` is aligned to ``entry_id`` (0 where ``kept_counts`` has no row for the entry).
    """

    entry_id: np.ndarray  # int32
    entry: np.ndarray  # object (str)
    source: np.ndarray  # object (str)
    count: np.ndarray  # int64
    kept: np.ndarray  # int64

    @classmethod
    def build(
        cls,
        entry_id: Sequence[int] | np.ndarray,
        entry: Sequence[str] | np.ndarray,
        source: Sequence[str] | np.ndarray,
        count: Sequence[int] | np.ndarray,
        kept_entry_id: Sequence[int] | np.ndarray | None = None,
        kept: Sequence[int] | np.ndarray | None = None,
    ) -> "EntryStats":
        """Align ``kept`` (given by its own entry ids) to the count table.

        Raises InputError when the tables disagree: duplicate entry ids, negative counts, a kept
        entry absent from the count table, or kept > count (balancing only ever removes texts).
        """
        ids = np.asarray(entry_id, dtype=np.int64)
        cnt = np.asarray(count, dtype=np.int64)
        n = len(ids)
        if not (len(entry) == len(source) == len(cnt) == n):
            raise InputError("entry_counts columns have different lengths; rewrite count/entry_counts.parquet")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if n and np.any(sorted_ids[1:] == sorted_ids[:-1]):
            raise InputError("count/entry_counts.parquet has duplicate entry_id values; re-run the count stage")
        if n and cnt.min() < 0:
            raise InputError("count/entry_counts.parquet has negative counts; re-run the count stage")
        aligned = np.zeros(n, dtype=np.int64)
        if kept_entry_id is not None and kept is not None:
            kid = np.asarray(kept_entry_id, dtype=np.int64)
            kval = np.asarray(kept, dtype=np.int64)
            if len(kid) != len(kval):
                raise InputError("the kept counts' columns have different lengths")
            pos = np.searchsorted(sorted_ids, kid)
            pos_clipped = np.minimum(pos, max(n - 1, 0))
            found = (pos < n) & (sorted_ids[pos_clipped] == kid) if n else np.zeros(len(kid), bool)
            if not found.all():
                missing = kid[~found][:5].tolist()
                raise InputError(
                    f"the kept counts have entry ids absent from the entry counts "
                    f"(e.g. {missing}); the balance stage ran on other counts — re-run balance"
                )
            target = order[pos_clipped]
            np.add.at(aligned, target, kval)
            over = aligned > cnt
            if over.any():
                i = int(np.flatnonzero(over)[0])
                raise InputError(
                    f"entry_id {int(ids[i])} has kept={int(aligned[i])} > count={int(cnt[i])}: "
                    f"the kept counts do not belong to these entry counts: re-run balance"
                )
        return cls(
            entry_id=ids.astype(np.int32),
            entry=_object_array(entry),
            source=_object_array(source),
            count=cnt,
            kept=aligned,
        )


def _object_array(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """1-D object array of strings (np.asarray alone would make a 2-D array of tuples, or '<U')."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


# ----------------------------------------------------------------------------- basic curves
def sorted_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Positive counts in descending order (rank 1 first): the x/y of a rank-frequency plot."""
    c = np.asarray(counts, dtype=np.int64)
    c = c[c > 0]
    return np.sort(c)[::-1]


def cumulative_share(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Share of all matches held by the top-k entries, for k = 1..(number of matched entries)."""
    s = sorted_counts(counts)
    total = s.sum()
    if total == 0:
        return np.zeros(0, dtype=np.float64)
    return np.cumsum(s, dtype=np.float64) / float(total)


def top_k_share(counts: Sequence[int] | np.ndarray, k: int) -> float:
    """Share of matches held by the k most frequent entries (1.0 once k covers every entry)."""
    if k <= 0:
        return 0.0
    share = cumulative_share(counts)
    if len(share) == 0:
        return 0.0
    return float(share[min(k, len(share)) - 1])


def head_tail_split(counts: Sequence[int] | np.ndarray, t: float) -> dict[str, float | int]:
    """Entries and matches above t (head, sub-sampled) and at or below t (tail, kept whole)."""
    c = np.asarray(counts, dtype=np.int64)
    matched = c > 0
    head = c > t
    tail = matched & ~head
    total = int(c[matched].sum())
    head_matches = int(c[head].sum())
    return {
        "t": float(t),
        "matched_entries": int(matched.sum()),
        "head_entries": int(head.sum()),
        "tail_entries": int(tail.sum()),
        "matches": total,
        "head_matches": head_matches,
        "tail_matches": total - head_matches,
        "head_match_share": head_matches / total if total else 0.0,
    }


def tail_coverage(counts: Sequence[int] | np.ndarray, t: float) -> float:
    """Share of matched entries (count > 0) that balancing keeps at 100% (count <= t)."""
    c = np.asarray(counts, dtype=np.int64)
    matched = c > 0
    n = int(matched.sum())
    return float((matched & (c <= t)).sum() / n) if n else 0.0


def coverage_curve(counts: Sequence[int] | np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Tail coverage for each threshold x: what share of matched entries would stay whole at t=x."""
    s = np.sort(np.asarray(counts, dtype=np.int64))
    s = s[s > 0]
    x = np.asarray(thresholds, dtype=np.float64)
    if len(s) == 0:
        return np.zeros(len(x), dtype=np.float64)
    return np.searchsorted(s, x, side="right") / float(len(s))


# ----------------------------------------------------------------------------- breakdowns
def per_source_breakdown(
    source: Sequence[str] | np.ndarray,
    count: Sequence[int] | np.ndarray,
    kept: Sequence[int] | np.ndarray,
    t: float,
    metadata_entries: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per metadata source (wordnet, wiki_unigram, ...), largest by matches first.

    ``entries`` is the number of entries of the source in the metadata when ``metadata_entries``
    is given (count tables may omit count-0 entries), else the rows in the count table.
    ``matches`` / ``kept`` are Σ count / Σ kept over the source's entries (entry-text pairs, so a
    text matching entries of two sources counts once for each).
    """
    src = np.asarray(source, dtype=object)
    c = np.asarray(count, dtype=np.int64)
    k = np.asarray(kept, dtype=np.int64)
    rows = []
    for name in sorted(set(src.tolist()) | set((metadata_entries or {}).keys())):
        m = src == name
        cm, km = c[m], k[m]
        matched = int((cm > 0).sum())
        matches = int(cm.sum())
        kept_sum = int(km.sum())
        rows.append({
            "source": str(name),
            "entries": int(metadata_entries[name]) if metadata_entries and name in metadata_entries else int(m.sum()),
            "matched_entries": matched,
            "head_entries": int((cm > t).sum()),
            "tail_entries": int(((cm > 0) & (cm <= t)).sum()),
            "matches": matches,
            "kept": kept_sum,
            "kept_share": kept_sum / matches if matches else 0.0,
            "tail_coverage": float(((cm > 0) & (cm <= t)).sum() / matched) if matched else 0.0,
        })
    rows.sort(key=lambda r: (-r["matches"], r["source"]))
    return rows


def top_head_entries(stats: EntryStats, t: float, k: int = 50) -> list[dict[str, Any]]:
    """The k most matched head entries (count > t) with what balancing did to them.

    Fewer than k when fewer entries exceed t: tail entries are never cut, so never listed.

    ``cap`` = min(count, t) is the number of texts the entry's own probability t/count would
    keep on average; ``kept`` may exceed it because texts also survive through their other,
    rarer entries. Ties in count are broken by entry_id so the list is deterministic.
    """
    order = np.lexsort((stats.entry_id, -stats.count))[:k]
    out = []
    for i in order:
        cnt = int(stats.count[i])
        if cnt <= t:
            break
        kept = int(stats.kept[i])
        out.append({
            "entry_id": int(stats.entry_id[i]),
            "entry": str(stats.entry[i]),
            "source": str(stats.source[i]),
            "count": cnt,
            "kept": kept,
            "cap": float(min(cnt, t)),
            "kept_fraction": kept / cnt,
        })
    return out


def kept_fraction_vs_t(sweep: Mapping[str, Any], matched: int) -> dict[str, Any]:
    """Expected kept fraction of the matched pool for each t of the balance stage's t sweep.

    The sweep gives Σ p_keep (expected kept texts) per t; dividing by the number of matched
    texts turns it into the fraction the report plots. Points are returned sorted by t.
    """
    if "t" not in sweep or "expected_kept" not in sweep:
        raise InputError('the t sweep must hold {"t": [...], "expected_kept": [...]}; re-run balance')
    t = np.asarray(sweep["t"], dtype=np.float64)
    e = np.asarray(sweep["expected_kept"], dtype=np.float64)
    if len(t) != len(e):
        raise InputError(f"the t sweep has {len(t)} t values but {len(e)} expected_kept values")
    order = np.argsort(t, kind="stable")
    t, e = t[order], e[order]
    frac = e / float(matched) if matched > 0 else np.zeros_like(e)
    chosen = sweep.get("chosen_t")
    return {
        "t": t.tolist(),
        "expected_kept": e.tolist(),
        "kept_fraction": frac.tolist(),
        "chosen_t": None if chosen is None else float(chosen),
    }


def _rank_points(n: int) -> list[int]:
    """Ranks 1, 2, 5, 10, 20, 50, ... up to n: where the summary quotes the cumulative share."""
    pts, base = [], 1
    while base <= n:
        for m in (1, 2, 5):
            if base * m <= n:
                pts.append(base * m)
        base *= 10
    return pts


def distribution_summary(
    stats: EntryStats,
    t: float,
    sweep: Mapping[str, Any] | None,
    matched_texts: int,
    metadata_entries: Mapping[str, int] | None = None,
    top_k: int = 50,
) -> dict[str, Any]:
    """Every figure of the report in one JSON-serialisable dict (report/summary.json)."""
    counts = stats.count
    before = cumulative_share(counts)
    after = cumulative_share(stats.kept)
    n = len(before)
    summary: dict[str, Any] = {
        "entries": int(len(counts)),
        "head_tail": head_tail_split(counts, t),
        "tail_coverage": tail_coverage(counts, t),
        "kept_matches": int(stats.kept.sum()),
        "entries_kept_whole": int(((counts > 0) & (stats.kept == counts)).sum()),
        "top_k_share": {str(k): float(before[k - 1]) for k in _rank_points(n)},
        "top_k_share_after": {str(k): float(after[k - 1]) for k in _rank_points(len(after))},
        "top_1pct_share": float(before[max(1, math.ceil(n * 0.01)) - 1]) if n else 0.0,
        "sources": per_source_breakdown(stats.source, counts, stats.kept, t, metadata_entries),
        "top_head": top_head_entries(stats, t, top_k),
    }
    if sweep is not None:
        summary["kept_fraction_vs_t"] = kept_fraction_vs_t(sweep, matched_texts)
    return summary
