import numpy as np
import pyarrow as pa

from curation.hashing import string_hash64


def test_equal_strings_hash_equal_across_arrays_slices_and_chunks():
    words = ["abc", "x", "", "row-1", "é漢字", "abc", "x" * 1000]
    h = string_hash64(pa.array(words))
    assert h.dtype == np.uint64 and len(h) == len(words)
    assert h[0] == h[5] and len(set(h.tolist())) == 6
    # the same string elsewhere (other array, a slice, a chunked array, large_string) hashes the same
    other = string_hash64(pa.array(["zz", "abc", "row-1"]))
    assert other[1] == h[0] and other[2] == h[3]
    assert string_hash64(pa.array(words).slice(3)).tolist() == h[3:].tolist()
    assert string_hash64(pa.chunked_array([words[:2], words[2:]])).tolist() == h.tolist()
    assert string_hash64(pa.array(words, pa.large_string())).tolist() == h.tolist()
    # length matters ("a" vs "a\x00"), and a null hashes like ""
    a = string_hash64(pa.array(["a", "a\x00", None, ""]))
    assert a[0] != a[1] and a[2] == a[3]


def test_hashes_spread_evenly_over_buckets():
    h = string_hash64(pa.array([f"img_{i:07d}.jpg" for i in range(40_000)]))
    assert len(set(h.tolist())) == 40_000
    per_bucket = np.bincount((h % np.uint64(16)).astype(np.int64), minlength=16)
    assert per_bucket.min() > 2_000 and per_bucket.max() < 3_000  # 2,500 expected per bucket
    assert string_hash64(pa.array([], pa.string())).size == 0
