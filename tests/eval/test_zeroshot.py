"""Zero-shot classification on a hand-built model whose right answers are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curation.errors import InputError
from eval.datasets import EvalDataset
from eval.templates import DEFAULT_TEMPLATES, load_templates, validate_templates
from eval.zeroshot import class_embeddings, evaluate_zeroshot

CLASSES = ["cat", "dog", "car", "tree", "boat", "bird"]


def _model(vector_model_cls):
    dim = 7  # one axis per class + one for the template word "photo"
    words = {c: [1.0 if j == i else 0.0 for j in range(dim)] for i, c in enumerate(CLASSES)}
    words["photo"] = [0, 0, 0, 0, 0, 0, 3.0]
    return vector_model_cls(dim, words)


# image vector (class scores, last axis 0), label -> rank of the true class worked out by hand
CASES = [
    ([200, 100, 0, 0, 0, 0, 0], "cat"),    # cat best: top1 hit
    ([100, 200, 0, 0, 0, 0, 0], "cat"),    # dog beats cat: top1 miss, rank 1 -> top5 hit
    ([0, 250, 10, 0, 0, 0, 0], "dog"),     # top1 hit
    ([50, 40, 30, 20, 10, 60, 0], "car"),  # bird, cat, dog above car: rank 3 -> top5 hit
    ([60, 50, 40, 30, 20, 10, 0], "bird"),  # bird last: rank 5 -> top5 miss
    ([0, 0, 0, 255, 0, 0, 0], "tree"),     # top1 hit
    ([90, 90, 90, 90, 90, 90, 0], "boat"),  # all tied: ties count against -> misses both
    ([0, 0, 0, 0, 255, 0, 0], "boat"),     # top1 hit
]


def _dataset(make_vector_image) -> EvalDataset:
    return EvalDataset(name="toy", keys=[f"k{i}" for i in range(len(CASES))],
                       images=[make_vector_image(v) for v, _ in CASES],
                       labels=np.array([CLASSES.index(c) for _, c in CASES]),
                       classnames=CLASSES)


def test_zeroshot_exact_accuracies(vector_model_cls, make_vector_image):
    model = _model(vector_model_cls)
    res = evaluate_zeroshot(model, _dataset(make_vector_image),
                            templates=["{}", "a photo of a {}."], batch_size=3)
    assert res.n == 8
    assert res.top1 == pytest.approx(4 / 8)
    assert res.top5 == pytest.approx(6 / 8)
    assert res.per_class == pytest.approx(
        {"cat": 0.5, "dog": 1.0, "car": 0.0, "tree": 1.0, "boat": 0.5, "bird": 0.0})
    assert res.class_counts == {"cat": 2, "dog": 1, "car": 1, "tree": 1, "boat": 2, "bird": 1}
    assert res.correct_top1.tolist() == [True, False, True, False, False, True, False, True]
    assert res.predictions[1] == CLASSES.index("dog")
    doc = res.to_json()
    assert doc["mean_per_class"] == pytest.approx(np.mean([0.5, 1, 0, 1, 0.5, 0]))
    assert doc["num_templates"] == 2


def test_prompt_averaging_numerically(vector_model_cls):
    """Mean of *normalised* template embeddings, renormalised — checked against hand algebra."""
    model = _model(vector_model_cls)
    emb = class_embeddings(model, ["cat", "dog"], ["{}", "a photo of a {}."])
    # "{}" -> e_cat (norm 1); "a photo of a cat." -> e_cat + 3 e_photo, norm sqrt(10).
    a = (1 + 1 / math.sqrt(10)) / 2
    b = (3 / math.sqrt(10)) / 2
    n = math.hypot(a, b)
    expected_cat = torch.zeros(7)
    expected_cat[0], expected_cat[6] = a / n, b / n
    assert torch.allclose(emb[0], expected_cat, atol=1e-6)
    assert emb[1][1] == pytest.approx(a / n, abs=1e-6) and emb[1][0] == 0
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-6)
    # averaging unnormalised embeddings would give (1, 1.5)/|.|: a different direction
    naive = torch.tensor([1.0, 1.5]) / math.hypot(1.0, 1.5)
    assert abs(float(emb[0][0]) - float(naive[0])) > 0.1


def test_templates_change_ranking_when_template_words_carry_class_signal(vector_model_cls,
                                                                         make_vector_image):
    """A template word pointing at 'dog' shifts every class towards dog; the ensemble damps it."""
    dim = 7
    words = {c: [1.0 if j == i else 0.0 for j in range(dim)] for i, c in enumerate(CLASSES)}
    words["puppy"] = [0, 2.0, 0, 0, 0, 0, 0]
    model = vector_model_cls(dim, words)
    ds = EvalDataset(name="t", keys=["a"], images=[make_vector_image([100, 90, 0, 0, 0, 0, 0])],
                     labels=np.array([0]), classnames=CLASSES)
    # with only the "{}" template cat (100) beats dog (90)
    assert evaluate_zeroshot(model, ds, templates=["{}"]).top1 == 1.0
    # with only "puppy {}" every class leans to dog; cat = (1,2)/√5, dog = (0,3)/3
    # scores: cat (100 + 180)/√5 = 125.2, dog 90 -> cat still wins
    assert evaluate_zeroshot(model, ds, templates=["puppy {}"]).top1 == 1.0
    img = torch.tensor([100.0, 90, 0, 0, 0, 0, 0])
    emb = class_embeddings(model, CLASSES, ["puppy {}"])
    assert float(emb[0] @ img) / float(img.norm()) == pytest.approx(
        (100 + 180) / math.sqrt(5) / float(img.norm()), rel=1e-5)


def test_zeroshot_requires_labels(vector_model_cls, make_vector_image):
    ds = EvalDataset(name="nolabels", keys=["a"], images=[make_vector_image([1, 2])])
    with pytest.raises(InputError, match="labelled"):
        evaluate_zeroshot(_model(vector_model_cls), ds)


def test_template_loading(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("# comment\na photo of a {}.\n\n{c} in the wild\n", encoding="utf-8")
    assert load_templates(txt) == ["a photo of a {}.", "{} in the wild"]
    js = tmp_path / "t.json"
    js.write_text('["art of {}", "{}"]', encoding="utf-8")
    assert load_templates(js) == ["art of {}", "{}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("no slot here\n", encoding="utf-8")
    with pytest.raises(InputError, match="class slot"):
        load_templates(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_templates(tmp_path / "missing.txt")
    assert len(validate_templates(DEFAULT_TEMPLATES)) == len(DEFAULT_TEMPLATES) >= 16
