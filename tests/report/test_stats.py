"""curation.stats: exact figures on hand-made counts, plus invariants on random ones."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.errors import InputError
from curation.stats import (
    EntryStats,
    coverage_curve,
    cumulative_share,
    distribution_summary,
    head_tail_split,
    kept_fraction_vs_t,
    per_source_breakdown,
    sorted_counts,
    tail_coverage,
    top_head_entries,
    top_k_share,
)

# entry ids 0..6; entry 5 was never matched.
COUNTS = [100, 50, 20, 10, 5, 0, 1]
KEPT = [12, 15, 10, 10, 5, 0, 1]
SOURCES = ["a", "b", "a", "b", "a", "b", "a"]
NAMES = ["dog", "cat", "tree", "car", "house", "zebra", "violin"]
T = 10


def _stats() -> EntryStats:
    return EntryStats.build(range(7), NAMES, SOURCES, COUNTS, range(7), KEPT)


def test_sorted_and_cumulative_share():
    assert sorted_counts(COUNTS).tolist() == [100, 50, 20, 10, 5, 1]
    share = cumulative_share(COUNTS)
    np.testing.assert_allclose(share, np.array([100, 150, 170, 180, 185, 186]) / 186)
    assert top_k_share(COUNTS, 2) == pytest.approx(150 / 186)
    assert top_k_share(COUNTS, 0) == 0.0
    assert top_k_share(COUNTS, 1000) == pytest.approx(1.0)
    assert len(cumulative_share([0, 0])) == 0 and top_k_share([0, 0], 3) == 0.0


def test_head_tail_and_tail_coverage():
    ht = head_tail_split(COUNTS, T)
    assert ht == {"t": 10.0, "matched_entries": 6, "head_entries": 3, "tail_entries": 3, "matches": 186,
                  "head_matches": 170, "tail_matches": 16, "head_match_share": pytest.approx(170 / 186)}
    assert tail_coverage(COUNTS, T) == pytest.approx(0.5)  # 10, 5, 1 of the 6 matched entries
    assert tail_coverage(COUNTS, 9.5) == pytest.approx(2 / 6)
    assert tail_coverage([0, 0], T) == 0.0
    np.testing.assert_allclose(coverage_curve(COUNTS, [0, 1, 5, 10, 50, 1000]),
                               [0, 1 / 6, 2 / 6, 3 / 6, 5 / 6, 1.0])


def test_per_source_breakdown_exact():
    rows = per_source_breakdown(SOURCES, COUNTS, KEPT, T, metadata_entries={"a": 4, "b": 3, "c": 2})
    assert [r["source"] for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert (a["entries"], a["matched_entries"], a["head_entries"], a["tail_entries"]) == (4, 4, 2, 2)
    assert (a["matches"], a["kept"]) == (126, 28)
    assert a["kept_share"] == pytest.approx(28 / 126) and a["tail_coverage"] == pytest.approx(0.5)
    assert (b["entries"], b["matched_entries"], b["head_entries"], b["tail_entries"]) == (3, 2, 1, 1)
    assert (b["matches"], b["kept"]) == (60, 25)
    assert (c["entries"], c["matched_entries"], c["matches"], c["kept"], c["tail_coverage"]) == (2, 0, 0, 0, 0.0)
    # without metadata, entries = rows of the count table
    assert per_source_breakdown(SOURCES, COUNTS, KEPT, T)[1]["entries"] == 3


def test_top_head_entries_count_kept_and_cap():
    top = top_head_entries(_stats(), T, k=3)
    assert [(r["entry"], r["count"], r["kept"], r["cap"]) for r in top] == [
        ("dog", 100, 12, 10.0), ("cat", 50, 15, 10.0), ("tree", 20, 10, 10.0)]
    assert top[1]["kept_fraction"] == pytest.approx(0.3)
    assert top[0]["source"] == "a"
    # only head entries (count > t): car (count == t) and the rest of the tail are never listed
    assert [r["entry"] for r in top_head_entries(_stats(), T, k=50)] == ["dog", "cat", "tree"]
    assert [r["entry"] for r in top_head_entries(_stats(), 0.5, k=50)][-1] == "violin"
    # ties in count: entry_id decides, whatever the input order
    tied = EntryStats.build([7, 3, 5], ["x", "y", "z"], ["s"] * 3, [5, 5, 5])
    assert [r["entry_id"] for r in top_head_entries(tied, 2, k=3)] == [3, 5, 7]


def test_entry_stats_aligns_kept_by_entry_id():
    s = EntryStats.build(range(7), NAMES, SOURCES, COUNTS, [6, 0, 2], [1, 12, 10])
    assert s.kept.tolist() == [12, 0, 10, 0, 0, 0, 1]
    ids = EntryStats.build([40, 10, 30], ["a", "b", "c"], ["s"] * 3, [5, 6, 7], [30, 40], [7, 2])
    assert ids.kept.tolist() == [2, 0, 7]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kept_entry_id=[99], kept=[1]), "absent from the entry counts"),
    (dict(kept_entry_id=[1], kept=[51]), "kept=51 > count=50"),
])
def test_entry_stats_rejects_inconsistent_tables(kwargs, message):
    with pytest.raises(InputError, match=message):
        EntryStats.build(range(7), NAMES, SOURCES, COUNTS, **kwargs)


def test_entry_stats_rejects_duplicate_ids_and_negative_counts():
    with pytest.raises(InputError, match="duplicate entry_id"):
        EntryStats.build([1, 1], ["a", "b"], ["s", "s"], [1, 2])
    with pytest.raises(InputError, match="negative"):
        EntryStats.build([1, 2], ["a", "b"], ["s", "s"], [1, -2])


def test_kept_fraction_vs_t_sorted_and_divided_by_matched():
    curve = kept_fraction_vs_t({"t": [10, 1, 100], "expected_kept": [50, 10, 90], "chosen_t": 10}, matched=100)
    assert curve["t"] == [1, 10, 100]
    assert curve["kept_fraction"] == pytest.approx([0.1, 0.5, 0.9])
    assert curve["chosen_t"] == 10.0
    with pytest.raises(InputError, match="t sweep must hold"):
        kept_fraction_vs_t({"t": [1]}, 10)
    with pytest.raises(InputError, match="2 t values but 1"):
        kept_fraction_vs_t({"t": [1, 2], "expected_kept": [1]}, 10)


def test_distribution_summary_exact():
    sweep = {"t": [1, 10], "expected_kept": [5.0, 20.0]}
    s = distribution_summary(_stats(), T, sweep, matched_texts=40, top_k=2)
    assert s["entries"] == 7
    assert s["tail_coverage"] == pytest.approx(0.5)
    assert s["kept_matches"] == sum(KEPT)
    assert s["entries_kept_whole"] == 3  # car, house, violin: kept == count > 0
    assert s["top_k_share"] == {"1": pytest.approx(100 / 186), "2": pytest.approx(150 / 186),
                                "5": pytest.approx(185 / 186)}
    assert s["top_1pct_share"] == pytest.approx(100 / 186)
    assert [r["entry"] for r in s["top_head"]] == ["dog", "cat"]
    assert s["kept_fraction_vs_t"]["kept_fraction"] == pytest.approx([0.125, 0.5])
    assert "kept_fraction_vs_t" not in distribution_summary(_stats(), T, None, 40)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=200),
       st.floats(min_value=0.5, max_value=5_000))
def test_invariants_on_random_counts(counts, t):
    share = cumulative_share(counts)
    c = np.asarray(counts)
    if c.sum() > 0:
        assert np.all(np.diff(share) >= -1e-12) and share[-1] == pytest.approx(1.0)
    ht = head_tail_split(counts, t)
    assert ht["head_entries"] + ht["tail_entries"] == ht["matched_entries"] == int((c > 0).sum())
    assert ht["head_matches"] + ht["tail_matches"] == int(c.sum())
    assert coverage_curve(counts, [t])[0] == pytest.approx(tail_coverage(counts, t))
