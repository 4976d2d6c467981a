"""Exact Hamming-ball search of 64-bit hashes with a multi-index hash (never all pairs).

Why it is exact: split the 64 bits into ``m`` chunks and let ``r = k // m``. If two hashes are
within distance ``k``, at least one chunk differs in at most ``r`` bits (otherwise the distance
would be ``>= m * (r + 1) > k``). So for each chunk we look up every key within ``r`` bit flips of
the chunk value; every true pair is a candidate, and each candidate's full distance is verified
with a popcount. Pairs found through several chunks are de-duplicated.

The bit flips are enumerated on the *index* side (each eval hash is stored under all its
``Σ_{i<=r} C(b, i)`` chunk variants) when that fits ``max_index_entries``: the pool being far
larger than the eval sets, a query then costs ``m`` table lookups. Otherwise they are enumerated
on the query side. ``m`` is chosen by a small cost model (expected candidates + lookups); for
``k = 8`` and 100k eval hashes that is ``m = 3`` chunks of 22/21/21 bits with 2 flips.

Everything is vectorised numpy: a direct-address offset table per chunk (``bincount`` +
``cumsum``) or ``searchsorted`` for wide chunks, ``repeat`` to expand buckets, ``bitwise_count``
to verify.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from math import comb

import numpy as np

log = logging.getLogger(__name__)

BITS = 64
_DIRECT_TABLE_MAX_BITS = 24  # chunks up to 24 bits use an offsets table of 2^b + 1 entries


def _chunk_widths(m: int) -> list[int]:
    base, extra = divmod(BITS, m)
    return [base + 1 if i < extra else base for i in range(m)]


def _flip_masks(width: int, r: int) -> np.ndarray:
    """All masks of ``width`` bits with at most ``r`` bits set (0 first)."""
    masks = [0]
    for n in range(1, r + 1):
        for pos in itertools.combinations(range(width), n):
            masks.append(sum(1 << p for p in pos))
    return np.array(masks, dtype=np.uint64)


def _variants(width: int, r: int) -> int:
    return sum(comb(width, i) for i in range(r + 1))


@dataclass
class _Plan:
    m: int
    r: int
    index_side: bool  # enumerate flips on the index side


def choose_plan(n_eval: int, k: int, max_index_entries: int = 100_000_000,
                index_side: bool | None = None, expected_queries: int = 1_000_000) -> _Plan:
    """Pick chunks/side with the lowest expected work: candidates + lookups per query + build.

    ``index_side`` forces the side the bit flips are enumerated on (None: cheapest that fits).
    """
    best: tuple[float, _Plan] | None = None
    for m in range(2, min(k + 1, 16) + 1):
        widths = _chunk_widths(m)
        r = k // m
        v = sum(_variants(w, r) for w in widths)
        candidates = sum(n_eval * _variants(w, r) / 2.0 ** w for w in widths)
        for side in (True, False):
            if index_side is not None and side != index_side:
                continue
            if side and n_eval * v > max_index_entries:
                continue
            if not side and v > 50_000:
                continue
            build = (n_eval * v if side else n_eval * m) / max(expected_queries, 1)
            cost = candidates + 2.0 * (m if side else v) + build
            if best is None or cost < best[0]:
                best = (cost, _Plan(m, r, side))
    if best is None:  # k too large for any multi-index: coarsest exact split, flips on queries
        m = min(k + 1, 16)
        return _Plan(m, k // m, bool(index_side))
    return best[1]


class _ChunkTable:
    """Maps a chunk key to the (sorted) list of eval indices stored under it."""

    def __init__(self, keys: np.ndarray, owners: np.ndarray, width: int):
        self.width = width
        keys = keys.astype(np.uint64)
        owner_bits = max(1, int(owners.max()).bit_length()) if len(owners) else 1
        if width + owner_bits <= 63:
            # One int64 sort of (key, owner) packed together: ~10x faster than a stable argsort.
            packed = np.sort((keys.astype(np.int64) << owner_bits) | owners.astype(np.int64))
            sorted_keys = packed >> owner_bits
            self.owners = packed & ((1 << owner_bits) - 1)
        else:
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            self.owners = owners[order].astype(np.int64)
        if width <= _DIRECT_TABLE_MAX_BITS:
            self.offsets = np.searchsorted(sorted_keys, np.arange((1 << width) + 1, dtype=np.int64))
            self.sorted_keys = None
        else:
            self.offsets = None
            self.sorted_keys = sorted_keys.astype(np.uint64)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: (start, count) of its bucket in ``owners``."""
        if self.offsets is not None:
            k = keys.astype(np.int64)
            start = self.offsets[k]
            return start, self.offsets[k + 1] - start
        start = np.searchsorted(self.sorted_keys, keys, side="left")
        end = np.searchsorted(self.sorted_keys, keys, side="right")
        return start, end - start


def _expand(start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each expanded item, position in the bucket array) for buckets [start, start+count)."""
    total = int(count.sum())
    rows = np.repeat(np.arange(len(count), dtype=np.int64), count)
    if total == 0:
        return rows, np.zeros(0, dtype=np.int64)
    first = np.cumsum(count) - count
    pos = np.arange(total, dtype=np.int64) - np.repeat(first, count) + np.repeat(start, count)
    return rows, pos


class NearDupIndex:
    """Index of eval hashes; ``query`` returns every (query, eval) pair within Hamming ``k``.

    ``m`` (number of chunks) and ``index_side`` may be forced, otherwise :func:`choose_plan`.
    """

    def __init__(self, eval_hashes: np.ndarray, k: int = 8, *, m: int | None = None,
                 index_side: bool | None = None, max_index_entries: int = 100_000_000,
                 expected_queries: int = 1_000_000, batch_size: int = 200_000):
        if not 0 <= k < BITS:
            raise ValueError(f"k must be in [0, {BITS}), got {k}")
        self.eval_hashes = np.ascontiguousarray(np.asarray(eval_hashes, dtype=np.uint64))
        self.k = int(k)
        plan = choose_plan(len(self.eval_hashes), k, max_index_entries, index_side, expected_queries)
        if m is not None:
            if not 1 <= m <= BITS:
                raise ValueError(f"m must be in [1, 64], got {m}")
            plan = _Plan(m, k // m, plan.index_side if index_side is None else index_side)
        self.m, self.r, self.index_side = plan.m, plan.r, plan.index_side
        self.widths = _chunk_widths(self.m)
        self.shifts = [BITS - sum(self.widths[: i + 1]) for i in range(self.m)]
        self.masks = [_flip_masks(w, self.r) for w in self.widths]
        self.batch_size = batch_size
        n = len(self.eval_hashes)
        self.tables: list[_ChunkTable] = []
        for c in range(self.m):
            keys = self._chunk(self.eval_hashes, c)
            owners = np.arange(n, dtype=np.int64)
            if self.index_side:
                keys = (keys[:, None] ^ self.masks[c][None, :]).ravel()
                owners = np.repeat(owners, len(self.masks[c]))
            self.tables.append(_ChunkTable(keys, owners, self.widths[c]))
        log.debug("NearDupIndex: %d eval hashes, k=%d, m=%d, r=%d, flips on %s side", n, k,
                  self.m, self.r, "index" if self.index_side else "query")

    def _chunk(self, hashes: np.ndarray, c: int) -> np.ndarray:
        return (hashes >> np.uint64(self.shifts[c])) & np.uint64((1 << self.widths[c]) - 1)

    def query(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All pairs within distance ``k``: ``(query_idx, eval_idx, distance)`` int64 arrays.

        Sorted by (query_idx, eval_idx); each pair appears once.
        """
        hashes = np.asarray(hashes, dtype=np.uint64)
        out_q, out_e, out_d = [], [], []
        for lo in range(0, len(hashes), self.batch_size):
            q, e, d = self._query_batch(hashes[lo: lo + self.batch_size])
            out_q.append(q + lo)
            out_e.append(e)
            out_d.append(d)
        if not out_q:
            z = np.zeros(0, dtype=np.int64)
            return z, z.copy(), z.copy()
        return np.concatenate(out_q), np.concatenate(out_e), np.concatenate(out_d)

    def _query_batch(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_eval = len(self.eval_hashes)
        found = []
        for c, table in enumerate(self.tables):
            keys = self._chunk(hashes, c)
            if self.index_side:
                owner_q = None
            else:
                masks = self.masks[c]
                keys = (keys[:, None] ^ masks[None, :]).ravel()
                owner_q = np.arange(len(hashes), dtype=np.int64).repeat(len(masks))
            start, count = table.lookup(keys)
            rows, pos = _expand(start, count)
            qi = rows if owner_q is None else owner_q[rows]
            ei = table.owners[pos]
            dist = np.bitwise_count(hashes[qi] ^ self.eval_hashes[ei])
            ok = dist <= self.k
            found.append(qi[ok] * n_eval + ei[ok])
        pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        qi, ei = np.divmod(pairs, max(n_eval, 1))
        dist = np.bitwise_count(hashes[qi] ^ self.eval_hashes[ei]).astype(np.int64)
        return qi, ei, dist


def brute_force_pairs(query: np.ndarray, eval_hashes: np.ndarray, k: int,
                      block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference all-pairs search (tests and benchmarks only): same output as ``query``."""
    query = np.asarray(query, dtype=np.uint64)
    eval_hashes = np.asarray(eval_hashes, dtype=np.uint64)
    qs, es, ds = [], [], []
    for lo in range(0, len(query), block):
        d = np.bitwise_count(query[lo: lo + block, None] ^ eval_hashes[None, :])
        qi, ei = np.nonzero(d <= k)
        qs.append(qi + lo)
        es.append(ei)
        ds.append(d[qi, ei])
    if not qs:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy()
    return (np.concatenate(qs).astype(np.int64), np.concatenate(es).astype(np.int64),
            np.concatenate(ds).astype(np.int64))
