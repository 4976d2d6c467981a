"""Vectorised 64-bit hashes of Arrow string arrays (no per-row Python).

Used to partition uids into buckets for the duplicate-uid check: a Python loop over a billion uids
would cost more than the matching. The hash is a polynomial over the UTF-8 bytes modulo 2**64,
computed for the whole array with two cumulative products and one cumulative sum, then mixed
(murmur3's finaliser) so that every bit depends on every byte. It is *not* collision-resistant
(power-of-two polynomial hashes have known bad inputs), so callers use it only to decide *where*
strings go, and compare the strings themselves to decide *whether* they are equal.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

_P = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """``base**k mod 2**64`` for k < n, from a per-process table that grows geometrically (the
    cumulative product was a third of the hash's time when recomputed per call)."""
    table = _POWERS.get(base)
    if table is None or len(table) < n:
        size = max(n, 2 * len(table) if table is not None else 1 << 16)
        table = np.empty(size, dtype=np.uint64)
        table[0] = 1
        table[1:] = np.uint64(base)
        with np.errstate(over="ignore"):
            np.cumprod(table, out=table)
        _POWERS[base] = table
    return table[:n]


def string_hash64(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 per string; equal strings get equal values wherever they sit (any array, any
    offset). Nulls hash like the empty string."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.large_binary())
        off_dtype = np.int64
    else:
        arr = arr.cast(pa.binary())
        off_dtype = np.int32
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=off_dtype)[arr.offset: arr.offset + n + 1].astype(np.int64)
    lo, hi = int(offs[0]), int(offs[-1])
    data = np.frombuffer(bufs[2], dtype=np.uint8)[lo:hi] if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offs - lo
    length = hi - lo
    with np.errstate(over="ignore"):
        # c[k] = sum_{j<k} (byte_j + 1) * P**j; a string's sum, times P**-start, is position-free.
        c = np.zeros(length + 1, dtype=np.uint64)
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * _powers(_P, length), out=c[1:])
        h = (c[starts[1:]] - c[starts[:-1]]) * _powers(_P_INV, length + 1)[starts[:-1]]
        h ^= np.diff(starts).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h
