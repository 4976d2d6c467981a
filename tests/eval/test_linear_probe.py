"""Linear probe: ≥ 90% on real digits from a fixed random projection of the pixels."""
from __future__ import annotations

import numpy as np
import pytest

from eval.datasets import load_digits_dataset
from eval.linear_probe import evaluate_linear_probe, linear_probe_from_features, split_indices


def test_probe_on_random_projection_of_digits(random_projection_model):
    ds = load_digits_dataset(image_size=16)
    res = evaluate_linear_probe(random_projection_model, ds, cs=(0.01, 0.1, 1.0, 10.0))
    assert res.top1 >= 0.90, res
    assert res.n_train + res.n_val + res.n_test == len(ds)
    assert res.n_test == len(res.correct) == len(res.test_indices)
    assert res.best_C in (0.01, 0.1, 1.0, 10.0)
    assert [r["C"] for r in res.sweep] == [0.01, 0.1, 1.0, 10.0]
    assert all(0 <= r["val_top1"] <= 1 for r in res.sweep)


def test_sweep_picks_best_validation_C_and_refits():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    x = rng.normal(size=(180, 5)) + np.eye(3, 5)[y] * 3.0
    train, val, test = split_indices(y, seed=1)
    assert not (set(train) & set(val)) and not (set(train) | set(val)) & set(test)
    assert len(train) + len(val) + len(test) == 180
    # stratified: every class in every split
    for part in (train, val, test):
        assert set(y[part]) == {0, 1, 2}
    res = linear_probe_from_features(x, y, train, val, test, cs=(1e-4, 1.0))
    # C=1e-4 with standardised features collapses towards the prior; C=1 separates the blobs
    accs = {r["C"]: r["val_top1"] for r in res.sweep}
    assert accs[1.0] > accs[1e-4]
    assert res.best_C == 1.0
    assert res.top1 > 0.9


def test_split_is_seeded():
    y = np.repeat(np.arange(4), 25)
    a = split_indices(y, seed=3)
    b = split_indices(y, seed=3)
    c = split_indices(y, seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_probe_too_few_samples_is_input_error(random_projection_model):
    from curation.errors import InputError

    ds = load_digits_dataset(image_size=8).subset(range(12))
    with pytest.raises(InputError, match="too few images per class"):
        evaluate_linear_probe(random_projection_model, ds)


def test_probe_needs_two_classes():
    x = np.zeros((10, 2))
    y = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="two classes"):
        linear_probe_from_features(x, y, np.arange(6), np.arange(6, 8), np.arange(8, 10))
