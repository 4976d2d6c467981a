"""Collapse diagnostics: a model that maps every image to one point is flagged, a healthy one is not."""
from __future__ import annotations

import numpy as np
import pytest

from eval.datasets import EvalDataset
from eval.diagnostics import COLLAPSE_COSINE, embedding_health
from eval.evaluate import EvalPlan, run_evaluation


def test_random_features_are_healthy():
    x = np.random.default_rng(0).normal(size=(400, 32))
    h = embedding_health(x)
    assert abs(h["mean_cosine"]) < 0.02
    assert h["effective_rank"] > 20
    assert h["collapsed"] is False and "why" not in h


def test_mean_cosine_matches_the_pairwise_mean():
    x = np.random.default_rng(1).normal(size=(30, 5)) + 2.0
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    expected = (sims.sum() - np.trace(sims)) / (30 * 29)
    assert embedding_health(x)["mean_cosine"] == pytest.approx(expected, abs=1e-6)


def test_one_point_plus_noise_is_collapsed():
    rng = np.random.default_rng(2)
    x = np.ones((200, 16)) + rng.normal(scale=1e-3, size=(200, 16))
    h = embedding_health(x)
    assert h["mean_cosine"] > COLLAPSE_COSINE
    assert h["collapsed"] and "nearly identical" in h["why"]


def test_one_class_for_every_image_is_collapsed_only_with_enough_classes():
    x = np.random.default_rng(3).normal(size=(100, 8))
    preds = np.zeros(100, dtype=int)
    assert embedding_health(x, preds, n_classes=10)["collapsed"]
    assert embedding_health(x, preds, n_classes=10)["top_prediction_share"] == 1.0
    assert not embedding_health(x, preds, n_classes=2)["collapsed"]  # two classes: could be honest
    mixed = np.arange(100) % 10
    assert not embedding_health(x, mixed, n_classes=10)["collapsed"]


class _Constant:
    """Every image embeds to the same vector: the collapsed model."""

    image_size = 4
    gmacs_per_sample = 0.0

    def preprocess(self, image):
        import torch

        return torch.zeros(3, 4, 4)

    def encode_image(self, x):
        import torch

        return torch.ones(x.shape[0], 3) + 1e-4 * torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(0))

    def encode_text(self, texts):
        import torch

        g = torch.Generator().manual_seed(1)
        return torch.randn(len(texts), 3, generator=g)


def test_run_evaluation_reports_the_collapse(make_vector_image, caplog):
    classes = ["a", "b", "c", "d"]
    ds = EvalDataset(name="toy", keys=[str(i) for i in range(40)],
                     images=[make_vector_image([i, 0, 0, 0]) for i in range(40)],
                     labels=np.arange(40) % 4, classnames=classes)
    plan = EvalPlan(zeroshot=["toy"], templates=["{}"])
    plan.cache["toy"] = ds
    with caplog.at_level("WARNING"):
        res = run_evaluation(_Constant(), plan, checkpoint="m.pt")
    assert res["collapsed"] == ["toy"]
    d = res["diagnostics"]["toy"]
    assert d["collapsed"] and d["top_prediction_share"] == 1.0 and d["mean_cosine"] > 0.99
    assert any("does not tell this dataset's images apart" in r.getMessage() for r in caplog.records)


def test_run_evaluation_healthy_model_not_flagged(vector_model_cls, make_vector_image):
    model = vector_model_cls(2, {"a": [1.0, 0.0], "b": [0.0, 1.0]})
    ds = EvalDataset(name="toy", keys=["0", "1", "2", "3"],
                     images=[make_vector_image(v) for v in ([255, 0], [0, 255], [255, 9], [9, 255])],
                     labels=np.array([0, 1, 0, 1]), classnames=["a", "b"])
    plan = EvalPlan(zeroshot=["toy"], templates=["{}"])
    plan.cache["toy"] = ds
    res = run_evaluation(model, plan, checkpoint="m.pt")
    assert res["collapsed"] == [] and res["diagnostics"]["toy"]["collapsed"] is False
