"""Multi-index Hamming search: exact against brute force, and finds planted near-duplicates."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from curation.neardup import NearDupIndex, brute_force_pairs
from curation.phash import phash_bytes


def _flip(h: np.uint64, n: int, rng) -> np.uint64:
    mask = 0
    for b in rng.choice(64, n, replace=False):
        mask |= 1 << int(b)
    return np.uint64(int(h) ^ mask)


def _sorted(pairs):
    q, e, d = pairs
    o = np.lexsort((e, q))
    return q[o], e[o], d[o]


@pytest.mark.parametrize("k", [0, 1, 4, 8, 12, 16])
@pytest.mark.parametrize("opts", [{}, {"index_side": False}, {"m": 5, "index_side": True}])
def test_index_equals_brute_force(k, opts):
    rng = np.random.default_rng(k)
    evals = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True)
    evals[10] = evals[11]  # duplicate eval hashes are distinct eval items
    pool = rng.integers(0, 2**64 - 1, 6000, dtype=np.uint64, endpoint=True)
    for i in range(0, len(pool), 5):
        pool[i] = _flip(evals[int(rng.integers(0, len(evals)))], int(rng.integers(0, 20)), rng)
    got = NearDupIndex(evals, k, expected_queries=len(pool), **opts).query(pool)
    ref = _sorted(brute_force_pairs(pool, evals, k))
    assert len(ref[0]) > 0
    for a, b in zip(got, ref):
        assert np.array_equal(a, b)
    assert len(set(zip(got[0].tolist(), got[1].tolist()))) == len(got[0])  # no duplicate pairs


def test_empty_inputs():
    idx = NearDupIndex(np.zeros(0, dtype=np.uint64), 8)
    q, e, d = idx.query(np.array([1, 2, 3], dtype=np.uint64))
    assert len(q) == len(e) == len(d) == 0
    q, e, d = NearDupIndex(np.array([5], dtype=np.uint64), 8).query(np.zeros(0, dtype=np.uint64))
    assert len(q) == 0


def _jpeg(img: Image.Image, q: int = 90) -> bytes:
    b = io.BytesIO()
    img.convert("RGB").save(b, "JPEG", quality=q)
    return b.getvalue()


def planted_pool(natural, n_eval: int = 24, n_unrelated: int = 60, seed: int = 5):
    """Eval images + a pool with transformed copies (resize, re-compress, crop, brightness)."""
    rng = np.random.default_rng(seed)
    evals = [natural(rng, int(rng.integers(256, 400)), int(rng.integers(256, 400))) for _ in range(n_eval)]
    transforms = {
        "resize": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC),
        "recompress": lambda im: Image.open(io.BytesIO(_jpeg(im, 40))),
        "crop": lambda im: im.crop((int(im.width * 0.01), int(im.height * 0.01), int(im.width * 0.99), int(im.height * 0.99))),
        "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    }
    pool, truth = [], []
    for i, im in enumerate(evals):
        name = list(transforms)[i % len(transforms)]
        pool.append(_jpeg(transforms[name](im)))
        truth.append((len(pool) - 1, i, name))
    for _ in range(n_unrelated):
        pool.append(_jpeg(natural(rng, int(rng.integers(200, 400)), int(rng.integers(200, 400)))))
    return [_jpeg(e, 95) for e in evals], pool, truth


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_planted_near_duplicates_found(natural, mode):
    evals, pool, truth = planted_pool(natural)
    eh = np.array([phash_bytes(b, mode) for b in evals], dtype=np.uint64)
    ph = np.array([phash_bytes(b, mode) for b in pool], dtype=np.uint64)
    q, e, d = NearDupIndex(eh, 8).query(ph)
    found = set(zip(q.tolist(), e.tolist()))
    missing = [(p, i, name) for p, i, name in truth if (p, i) not in found]
    assert not missing, missing
    planted = {p for p, _, _ in truth}
    false_hits = [(a, b) for a, b in found if a not in planted]
    assert not false_hits
