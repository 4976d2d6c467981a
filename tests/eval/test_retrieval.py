"""Retrieval recall@K on a hand-built model with hand-computed ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.datasets import EvalDataset
from eval.retrieval import evaluate_retrieval, flatten_captions, retrieval_ranks

WORDS = {f"w{i}": [1.0 if j == i else 0.0 for j in range(4)] for i in range(4)}

# images e0..e3; captions (owner in brackets):
#   t0 "w0" [0], t1 "w1 w2" [0], t2 "w2" [1], t3 "w1" [2], t4 "w3" [3]
IMAGES = [[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]]
CAPTIONS = [["w0", "w1 w2"], ["w2"], ["w1"], ["w3"]]
# image→text: I0 best own t0 (1.0) rank 0; I1 own t2 (0) ties with t0,t4 and loses to t1,t3 -> 4;
#             I2 own t3 (0) -> 4; I3 own t4 (1.0) -> 0.
# text→image: t0 -> 0; t1 own I0 (0) vs I1, I2 (0.707) and I3 (0, tie) -> 3;
#             t2 own I1 (0) vs I2 (1), I0, I3 (ties) -> 3; t3 -> 3; t4 -> 0.
EXPECTED_IMAGE_RANKS = [0, 4, 4, 0]
EXPECTED_TEXT_RANKS = [0, 3, 3, 3, 0]


def _dataset(make_vector_image) -> EvalDataset:
    return EvalDataset(name="toy", keys=[f"i{k}" for k in range(4)],
                       images=[make_vector_image(v) for v in IMAGES], captions=CAPTIONS)


def test_recall_exact(vector_model_cls, make_vector_image):
    model = vector_model_cls(4, WORDS)
    res = evaluate_retrieval(model, _dataset(make_vector_image), ks=(1, 3, 4, 5, 10))
    assert res.image_ranks.tolist() == EXPECTED_IMAGE_RANKS
    assert res.text_ranks.tolist() == EXPECTED_TEXT_RANKS
    assert res.image_to_text == pytest.approx(
        {"R@1": 0.5, "R@3": 0.5, "R@4": 0.5, "R@5": 1.0, "R@10": 1.0})
    assert res.text_to_image == pytest.approx(
        {"R@1": 0.4, "R@3": 0.4, "R@4": 1.0, "R@5": 1.0, "R@10": 1.0})
    assert (res.n_images, res.n_texts) == (4, 5)
    doc = res.to_json()
    assert set(doc) == {"n_images", "n_texts", "image_to_text", "text_to_image", "mean_recall"}


def test_default_ks_and_several_captions(vector_model_cls, make_vector_image):
    model = vector_model_cls(4, WORDS)
    res = evaluate_retrieval(model, _dataset(make_vector_image))
    assert list(res.image_to_text) == ["R@1", "R@5", "R@10"]
    # I0 is found through either of its two captions: drop t0 and I0 must rely on "w1 w2"
    ds = _dataset(make_vector_image)
    ds.captions = [["w1 w2"], ["w2"], ["w1"], ["w3"]]
    res2 = evaluate_retrieval(model, ds, ks=(1,))
    # I0's only caption now scores 0 against e0, tied with the three wrong captions -> rank 3
    assert res2.image_ranks[0] == 3
    assert res.image_ranks[0] == 0


def test_chunking_and_uncaptioned_images_excluded():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(37, 8, generator=g)
    txt = torch.randn(50, 8, generator=g)
    owner = np.concatenate([np.arange(30), np.arange(20)])  # images 30..36 have no caption
    big_i, big_t = retrieval_ranks(img, txt, owner, chunk=4096)
    small_i, small_t = retrieval_ranks(img, txt, owner, chunk=3)
    assert np.array_equal(big_i, small_i) and np.array_equal(big_t, small_t)
    assert (big_i[30:] == -1).all() and (big_i[:30] >= 0).all()
    # brute force reference for the text side
    sims = (torch.nn.functional.normalize(txt, dim=1)
            @ torch.nn.functional.normalize(img, dim=1).T).numpy()
    ref = [int((sims[j] >= sims[j, owner[j]]).sum() - 1) for j in range(50)]
    assert big_t.tolist() == ref


def test_flatten_captions():
    texts, owner = flatten_captions([["a", "b"], [], ["c"]])
    assert texts == ["a", "b", "c"] and owner.tolist() == [0, 0, 2]
