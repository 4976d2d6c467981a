"""Near-duplicate search, 1M pool x 100k eval pHashes, k = 8: multi-index hash vs brute force.

The brute-force numpy baseline (XOR + popcount over all pairs, blocked) is timed on a slice of
the pool and extrapolated; both methods must return identical pairs on that slice.
Usage: python benchmarks/neardup.py [POOL] [EVAL] [SLICE]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from curation.neardup import NearDupIndex, brute_force_pairs


def main() -> None:
    n_pool = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    n_eval = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    n_slice = int(sys.argv[3]) if len(sys.argv) > 3 else 4_000
    k = 8
    rng = np.random.default_rng(0)
    evals = rng.integers(0, 2**64 - 1, n_eval, dtype=np.uint64, endpoint=True)
    pool = rng.integers(0, 2**64 - 1, n_pool, dtype=np.uint64, endpoint=True)
    planted = rng.choice(n_pool, n_pool // 100, replace=False)  # 1% near-duplicates, 0..12 bits off
    for i in planted:
        flips = rng.choice(64, int(rng.integers(0, 13)), replace=False)
        pool[i] = evals[int(rng.integers(0, n_eval))] ^ np.uint64(sum(1 << int(b) for b in flips))
    t0 = time.perf_counter()
    index = NearDupIndex(evals, k)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    q, e, d = index.query(pool)
    t_query = time.perf_counter() - t0
    t_ours = t_build + t_query
    print(f"index: m={index.m} chunks, r={index.r} flips, enumerated on the {'index' if index.index_side else 'query'} side")
    print(f"ours: build {t_build:.2f}s + query {t_query:.2f}s = {t_ours:.2f}s, {len(q)} pairs")
    t0 = time.perf_counter()
    bq, be, bd = brute_force_pairs(pool[:n_slice], evals, k)
    t_slice = time.perf_counter() - t0
    t_brute = t_slice * n_pool / n_slice
    sel = q < n_slice
    o = np.lexsort((be, bq))
    same = all(np.array_equal(a, b[o]) for a, b in zip((q[sel], e[sel], d[sel]), (bq, be, bd)))
    print(f"brute force: {t_slice:.2f}s for {n_slice} queries -> {t_brute:.0f}s extrapolated to {n_pool}")
    print(f"identical pairs on the slice: {same} ({int(sel.sum())} pairs)")
    print(f"ratio brute/ours: {t_brute / t_ours:.0f}x (query only: {t_brute / t_query:.0f}x)")


if __name__ == "__main__":
    main()
