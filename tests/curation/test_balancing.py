"""Balancing formulas, the deterministic draw and solving t (no Spark)."""
import math
import random

import numpy as np
import pytest

from curation import balancing as B
from curation.errors import InputError


def test_probabilities_formula_exact():
    counts = np.array([0, 1, 5, 10, 11, 1000])
    p = B.entry_probabilities(counts, 10)
    assert p.tolist() == [1.0, 1.0, 1.0, 1.0, 10 / 11, 10 / 1000]


def test_p_keep_matches_direct_product():
    rng = random.Random(0)
    n_entries = 50
    p = np.array([rng.random() for _ in range(n_entries)])
    matches = [sorted(rng.sample(range(n_entries), rng.randrange(0, 6))) for _ in range(500)]
    got = B.p_keep(matches, p)
    for ids, value in zip(matches, got):
        expected = 1.0 - math.prod(1.0 - p[e] for e in ids) if ids else 0.0
        assert value == pytest.approx(expected, abs=1e-15)


def test_p_keep_entry_at_probability_one_always_keeps():
    p = np.array([1.0, 0.1])
    assert B.p_keep([[0, 1], [1], []], p).tolist() == [1.0, pytest.approx(0.1), 0.0]


def test_counts_bincount_and_range_check():
    offsets, flat = B.csr_from_lists([[0, 2], [2], [], [1, 2]])
    assert B.entry_counts(flat, 4).tolist() == [1, 1, 3, 0]
    with pytest.raises(InputError):
        B.entry_counts(np.array([5]), 4)


def test_draw_is_pure_function_of_seed_and_uid():
    uids = [f"u{i}" for i in range(1000)]
    a = B.uniform_from_uids(7, uids)
    assert a.tolist() == [B.uniform_from_uid(7, u) for u in uids]
    assert B.uniform_from_uids(7, uids[::-1]).tolist() == a[::-1].tolist()  # order-free
    assert not np.array_equal(a, B.uniform_from_uids(8, uids))
    assert ((a >= 0) & (a < 1)).all()
    assert abs(a.mean() - 0.5) < 0.03


def test_kept_fraction_within_binomial_tolerance():
    n = 120_000
    rng = np.random.default_rng(1)
    pk = rng.random(n) ** 2
    uids = [f"row-{i}" for i in range(n)]
    kept = B.keep_mask(pk, seed=3, uids=uids).sum()
    expected = pk.sum()
    sigma = math.sqrt((pk * (1 - pk)).sum())
    assert abs(kept - expected) < 5 * sigma, (kept, expected, sigma)


def _brute_force_t(matches, n_entries, target):
    offsets, flat = B.csr_from_lists(matches)
    counts = B.entry_counts(flat, n_entries)
    for t in range(1, int(counts.max()) + 1):
        if B.p_keep_csr(offsets, flat, B.entry_probabilities(counts, t)).sum() >= target:
            return t
    return None


@pytest.mark.parametrize("target", [1, 17, 60, 140, 199])
def test_solve_t_is_smallest_t_reaching_target(target):
    rng = random.Random(target)
    n_entries = 30
    matches = [sorted(set(rng.choices(range(n_entries), weights=[1 / (i + 1) for i in range(n_entries)],
                                      k=rng.randrange(1, 4)))) for _ in range(200)]
    assert B.solve_t_local(matches, n_entries, target) == _brute_force_t(matches, n_entries, target)


def test_solve_t_unreachable_target_is_clear_error():
    with pytest.raises(InputError, match="larger than the number of matched rows"):
        B.solve_t_local([[0], [1]], 2, 5)


def test_uid_from_url_matches_metaclip_rule():
    import hashlib

    assert B.uid_from_url("http://x/y.jpg") == hashlib.sha224(b"http://x/y.jpg").hexdigest()[:24]


def test_sweep_matches_the_per_t_definition_and_uid_array_draw_matches():
    import pyarrow as pa

    from curation import balancing as B

    rng = np.random.default_rng(5)
    lists = [rng.integers(0, 50, size=rng.integers(0, 4)).tolist() for _ in range(2_000)]
    offsets, flat = B.csr_from_lists(lists)
    counts = B.entry_counts(flat, 60)  # entries 50..59 never counted
    counts[3] = 0  # an id that occurs but has no count (inconsistent input): p = 1 by convention
    ts = [0.5, 1, 2, 7, 33, 1e6]
    direct = [B.p_keep_csr(offsets, flat, B.entry_probabilities(counts, t)).sum() for t in ts]
    np.testing.assert_allclose(B.expected_kept_for_ts(offsets, flat, counts, ts), direct, rtol=1e-12)
    # a slice of a larger CSR (offsets not starting at 0) and an unsorted t list
    tail = offsets[700:]
    rebased = [B.p_keep_csr(tail - tail[0], flat[tail[0]:], B.entry_probabilities(counts, t)).sum() for t in ts]
    np.testing.assert_allclose(B.expected_kept_for_ts(tail, flat, counts, ts[::-1]), rebased[::-1], rtol=1e-12)
    assert 0 < rebased[0] < rebased[-1] < len(tail) - 1  # saturated and unsaturated rows both occur
    assert B.expected_kept_for_ts(np.array([0]), np.array([], np.int64), counts, ts).tolist() == [0.0] * len(ts)
    uids = [f"u{i}" for i in range(500)] + ["é漢"]
    assert (B.uniform_from_uid_array(9, pa.array(uids)) == B.uniform_from_uids(9, uids)).all()
    many = [f"uid-{i}" for i in range(20_000)] + ["", "x" * 200]  # slices of 8192, empty, > one block
    assert B.uniform_from_uid_array(9, pa.chunked_array([pa.array(many[:5]), pa.array(many[5:])])).tolist() == [
        B.uniform_from_uid(9, u) for u in many]


def test_tail_proportion_and_its_inverse_follow_metaclip2():
    from curation.balancing import p_to_t, t_to_p, thresholds_per_language

    counts = np.array([0, 1, 2, 3, 10, 50, 100, 1000], dtype=np.int64)
    total = counts.sum()
    assert t_to_p(counts, 10) == pytest.approx((1 + 2 + 3) / total)  # the tail is count < t
    assert t_to_p(counts, 11) == pytest.approx((1 + 2 + 3 + 10) / total)
    # p_to_t: the count whose cumulative share is nearest p
    share = np.cumsum(np.sort(counts)) / total
    for p in (0.0, 0.01, 0.05, 0.1, 0.5, 0.9, 1.0):
        assert p_to_t(counts, p) == np.sort(counts)[np.abs(share - p).argmin()]
    # round trip on a smooth Zipf-like distribution lands near the threshold
    zipf = (10_000 / np.arange(1, 5000)).astype(np.int64)
    t = 300.0
    assert abs(p_to_t(zipf, t_to_p(zipf, t)) - t) / t < 0.05
    # the reference language keeps t; the others share its tail proportion
    counts2 = np.concatenate([zipf, zipf * 10])  # "de": the same shape, ten times the matches
    langs = np.array(["en"] * len(zipf) + ["de"] * len(zipf))
    ts = thresholds_per_language(counts2, langs, t=t)
    assert ts["en"] == t and ts["de"] == 10 * p_to_t(zipf, t_to_p(zipf, t))
    assert thresholds_per_language(counts2, langs, tail_p=0.5)["en"] == p_to_t(zipf, 0.5)
    assert thresholds_per_language(counts2, np.array(["fr"] * len(counts2)), t=t) == {"fr": t}  # no reference
    with pytest.raises(InputError):
        p_to_t(counts, 1.5)
