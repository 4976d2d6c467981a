import json
import random
import tarfile

import numpy as np
import pytest
import torch

from training.data import LoaderConfig, TrainLoader, dataset_size, expand_shards, keep_in_epoch
from training.tokenizer import BPETokenizer, ByteTokenizer


def _loader(shards, **kw) -> TrainLoader:
    cfg = dict(shards=shards, batch_size=8, image_size=32, context_length=16, workers=0, shuffle_buffer=16)
    cfg.update(kw)
    return TrainLoader(LoaderConfig(**cfg), ByteTokenizer())


def _take(loader: TrainLoader, n: int) -> list[dict]:
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    del it
    return out


def test_expand_and_sizes(shard_dir):
    pattern = f"{shard_dir}/{{000000..000001}}.tar::{shard_dir}/{{000002..000003}}.tar"
    urls = expand_shards(pattern)
    assert [u.rsplit("/", 1)[1] for u in urls] == [f"{i:06d}.tar" for i in range(4)]
    assert dataset_size(urls) == 128
    assert dataset_size(urls[:1]) == 32


def test_batches_have_images_tokens_and_captions(shard_dir):
    batch = _take(_loader(f"{shard_dir}/{{000000..000003}}.tar"), 1)[0]
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["tokens"].shape == (8, 16)
    tok = ByteTokenizer()
    for row, text in enumerate(batch["texts"]):
        assert batch["tokens"][row, batch["eot"][row]] == tok.eot_id
        assert text.split()[-1] in {"circle", "square", "triangle", "background"}


def test_bad_shards_and_samples_are_skipped_and_counted(tmp_path, make_shards):
    rng = random.Random(1)
    good = [make_shards.make_sample(i, rng) for i in range(6)]
    no_txt = dict(good[0]); del no_txt["txt"]
    bad_jpg = dict(good[1]); bad_jpg["jpg"] = b"\xff\xd8\xff\xe0 this is not a jpeg"
    make_shards.write_custom_shard(tmp_path / "000000.tar", [no_txt, bad_jpg] + good[2:])
    whole = make_shards.write_custom_shard(tmp_path / "000001.tar", good * 2)
    data = whole.read_bytes()
    truncated = tmp_path / "000002.tar"
    truncated.write_bytes(data[: len(data) // 2 + 100])  # cut in the middle of a member
    (tmp_path / "000003.tar").write_bytes(b"not a tar file at all" * 10)
    loader = _loader(f"{tmp_path}/{{000000..000004}}.tar", batch_size=4, shuffle_buffer=0)  # 000004 is missing
    batches = _take(loader, 6)
    assert all(b["images"].shape[0] == 4 for b in batches)
    counts = loader.counters()
    assert counts["missing_fields"] >= 1 and counts["bad_images"] >= 1
    assert counts["bad_shards"] >= 2  # the truncated tar and the non-tar
    assert counts["samples"] >= 24


def test_all_bad_shards_raise_a_clear_error(tmp_path):
    (tmp_path / "000000.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(RuntimeError, match="no readable samples"):
        _take(_loader(str(tmp_path / "000000.tar")), 1)


def test_online_balancing_uses_the_deterministic_draw(tmp_path, make_shards):
    make_shards.write_shards(tmp_path, n_shards=2, per_shard=40, seed=3, p_keep=0.5)
    pattern = f"{tmp_path}/{{000000..000001}}.tar"
    uids = []
    for shard in sorted(tmp_path.glob("*.tar")):
        with tarfile.open(shard) as tar:
            uids += [json.loads(tar.extractfile(m).read())["uid"] for m in tar.getmembers() if m.name.endswith(".json")]
    loader = _loader(pattern, batch_size=1, shuffle_buffer=0, online_balance=True, seed=7)
    it = iter(loader)
    epochs: dict[int, list[str]] = {0: [], 1: []}
    while True:
        batch = next(it)
        epoch = loader.worker_states[0]["epoch"]
        if epoch > 1:
            break
        epochs[epoch].append(batch["texts"][0])
    del it
    for epoch in (0, 1):
        expected = int(keep_in_epoch(7, epoch, uids, np.full(len(uids), 0.5)).sum())
        assert len(epochs[epoch]) == expected
    assert 10 < len(epochs[0]) < 70
    assert loader.counters()["balanced_out"] >= 80 - len(epochs[0])


def test_loader_resume_is_exact(shard_dir):
    pattern = f"{shard_dir}/{{000000..000003}}.tar"
    full = _take(_loader(pattern, workers=2), 24)  # crosses epoch boundaries (128 samples / 2 workers)
    first = _loader(pattern, workers=2)
    _take(first, 11)
    second = _loader(pattern, workers=2)
    second.load_state_dict(first.state_dict())
    rest = _take(second, 13)
    for a, b in zip(full[11:], rest):
        assert a["texts"] == b["texts"]
        assert torch.equal(a["images"], b["images"])


def test_bpe_tokenizer_roundtrip(tmp_path):
    captions = ["a red circle", "photo of a blue square", "green triangle on a plain background"] * 20
    tok = BPETokenizer.train(captions, vocab_size=400)
    tokens, eot = tok(["A Red Circle", "x" * 200], 16)
    assert tokens.shape == (2, 16)
    assert tokens[0, 0] == tok.sot_id and tokens[0, eot[0]] == tok.eot_id
    assert eot[1] == 15  # truncated long text still ends with <eot>
    import pickle
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(["a red circle"], 16)[0], tok(["a red circle"], 16)[0])
