"""Online balancing over the whole matched pool: each epoch keeps a sample iff u(seed, epoch, uid) <
p_keep. The draw is deterministic, keyed on seed and epoch (not their sum), independent of how many
workers or ranks read the shards, and follows p_keep; different epochs see different subsets."""
from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np

from training.data import LoaderConfig, _Consumer, epoch_draw_seed, keep_in_epoch
from training.tokenizer import ByteTokenizer

N, P = 1000, 0.3


def _write_pool(directory, n: int = N, p_keep: float = P, per_shard: int = 200) -> list[str]:
    """Shards of n matched samples (the image bytes are never decoded by the balancing step)."""
    directory.mkdir(parents=True, exist_ok=True)
    uids = [f"uid-{i:05d}" for i in range(n)]
    for s in range(0, n, per_shard):
        with tarfile.open(directory / f"{s // per_shard:06d}.tar", "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                meta = {"uid": uids[i], "url": f"http://x/{i}", "entry_ids": [i % 7], "entries": ["e"],
                        "phash": "0" * 16, "p_keep": p_keep}
                for ext, data in (("jpg", b"not decoded"), ("txt", b"caption"), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return uids


def _kept(directory, seed: int, epoch: int, consumers: int) -> list[str]:
    """uids one epoch keeps, read as ``consumers`` workers would read them (all of them together)."""
    n_shards = len(list(directory.glob("*.tar")))
    cfg = LoaderConfig(shards=f"{directory}/{{000000..{n_shards - 1:06d}}}.tar", batch_size=1, image_size=8,
                       context_length=8, seed=seed, workers=consumers, shuffle_buffer=0, online_balance=True)
    out = []
    for consumer in range(consumers):
        stream = _Consumer(cfg, ByteTokenizer(), consumer, consumers, {"epoch": epoch})
        out += [json.loads(sample["json"])["uid"] for sample in stream.epoch_stream()]
    return out


def _binomial_bound(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


def test_each_epoch_keeps_about_p_keep(tmp_path):
    uids = _write_pool(tmp_path / "pool")
    low, high = _binomial_bound(N, P)
    for epoch in range(4):
        kept = _kept(tmp_path / "pool", seed=11, epoch=epoch, consumers=1)
        assert low <= len(kept) <= high, (epoch, len(kept))
        assert len(set(kept)) == len(kept)  # no sample twice
        expected = {u for u, k in zip(uids, keep_in_epoch(11, epoch, uids, np.full(N, P))) if k}
        assert set(kept) == expected


def test_the_draw_does_not_depend_on_the_workers(tmp_path):
    _write_pool(tmp_path / "pool")
    for epoch in (0, 1):
        one = sorted(_kept(tmp_path / "pool", seed=3, epoch=epoch, consumers=1))
        assert sorted(_kept(tmp_path / "pool", seed=3, epoch=epoch, consumers=3)) == one
        assert sorted(_kept(tmp_path / "pool", seed=3, epoch=epoch, consumers=8)) == one  # more than shards


def test_epochs_cover_more_of_the_pool_than_one_fixed_subset(tmp_path):
    uids = _write_pool(tmp_path / "pool")
    first = set(_kept(tmp_path / "pool", seed=0, epoch=0, consumers=2))
    second = set(_kept(tmp_path / "pool", seed=0, epoch=1, consumers=2))
    union = first | second
    # a fixed subset would stay at |first|; independent draws reach N (1 - (1 - p)^2) = 510 on average
    assert len(union) > len(first) + 100 and len(union) > len(second) + 100
    low, high = _binomial_bound(N, 1 - (1 - P) ** 2)
    assert low <= len(union) <= high
    # the overlap of two epochs is what independence predicts (N p^2 = 90)
    low, high = _binomial_bound(N, P * P)
    assert low <= len(first & second) <= high
    assert union <= set(uids)


def test_the_draw_is_keyed_on_seed_and_epoch_not_their_sum():
    uids = [f"u{i}" for i in range(2000)]
    p = np.full(len(uids), 0.5)
    assert epoch_draw_seed(0, 1) != epoch_draw_seed(1, 0)
    a, b = keep_in_epoch(0, 1, uids, p), keep_in_epoch(1, 0, uids, p)
    assert 0.35 < (a == b).mean() < 0.65  # independent draws agree about half the time
    assert np.array_equal(keep_in_epoch(5, 2, uids, p), keep_in_epoch(5, 2, uids, p))  # deterministic
    # p_keep 1 keeps everything and 0 nothing, whatever the draw
    assert keep_in_epoch(9, 9, uids, np.ones(len(uids))).all()
    assert not keep_in_epoch(9, 9, uids, np.zeros(len(uids))).any()
