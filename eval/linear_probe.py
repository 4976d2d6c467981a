"""Linear probe: logistic regression on frozen image features (CLIP's protocol, small scale).

The features are standardised (mean/std of the training part), then a multinomial logistic
regression is fitted for each inverse regularisation strength C of a log-spaced sweep (C is
1 / weight decay) on a train split and scored on a validation split; the best C is refitted on
train + validation and scored once on the test split. Splits are stratified and seeded, so two
checkpoints evaluated on the same dataset see the same images in the same roles.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from curation.errors import InputError
from eval.datasets import EvalDataset
from eval.features import as_numpy, encode_images

log = logging.getLogger(__name__)

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 3, 7))


@dataclass
class LinearProbeResult:
    dataset: str
    top1: float
    best_C: float
    sweep: list[dict] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    test_indices: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, int))
    correct: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))

    def to_json(self) -> dict:
        return {"top1": self.top1, "best_C": self.best_C, "sweep": self.sweep,
                "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test}


def split_indices(labels: np.ndarray, test_fraction: float = 0.3, val_fraction: float = 0.2,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, val, test) index arrays; val is a fraction of the non-test part."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    trainval, test = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                      stratify=labels)
    train, val = train_test_split(trainval, test_size=val_fraction, random_state=seed,
                                  stratify=labels[trainval])
    return np.sort(train), np.sort(val), np.sort(test)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    # One BLAS thread: beside torch's own pools, multi-threaded BLAS on these small problems
    # oversubscribes the cores and measured ~70x slower here, not faster.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def linear_probe_from_features(features: np.ndarray, labels: np.ndarray,
                               train: np.ndarray, val: np.ndarray, test: np.ndarray,
                               cs: Sequence[float] = DEFAULT_CS, max_iter: int = 1000,
                               dataset: str = "") -> LinearProbeResult:
    """Sweep C on (train → val), refit the best on train+val, report test top-1."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if len(set(y[train])) < 2:
        raise ValueError("linear probe needs at least two classes in the training split")
    sweep = []
    for c in cs:
        acc = float((_fit(x[train], y[train], c, max_iter).predict(x[val]) == y[val]).mean())
        sweep.append({"C": float(c), "val_top1": acc})
        log.debug("linear probe C=%g val top1=%.4f", c, acc)
    # Highest validation accuracy; on ties prefer the stronger regularisation (smaller C).
    best = max(sweep, key=lambda r: (r["val_top1"], -r["C"]))
    trainval = np.concatenate([train, val])
    clf = _fit(x[trainval], y[trainval], best["C"], max_iter)
    correct = clf.predict(x[test]) == y[test]
    return LinearProbeResult(dataset=dataset, top1=float(correct.mean()), best_C=best["C"],
                             sweep=sweep, n_train=len(train), n_val=len(val), n_test=len(test),
                             test_indices=test, correct=correct)


def evaluate_linear_probe(model: Any, dataset: EvalDataset, cs: Sequence[float] = DEFAULT_CS,
                          seed: int = 0, batch_size: int = 64,
                          features: np.ndarray | None = None) -> LinearProbeResult:
    """Linear-probe top-1 of ``model``'s frozen image features on a labelled dataset."""
    dataset.require_classification("linear probe")
    if features is None:
        features = as_numpy(encode_images(model, dataset.iter_images(), batch_size=batch_size,
                                           total=len(dataset), desc=dataset.name))
    try:
        train, val, test = split_indices(dataset.labels, seed=seed)
    except ValueError as exc:  # sklearn: a class too small to stratify
        raise InputError(f"linear probe on {dataset.name!r}: too few images per class for "
                         f"stratified train/val/test splits ({exc}); use more samples") from exc
    res = linear_probe_from_features(features, dataset.labels, train, val, test, cs,
                                     dataset=dataset.name)
    log.info("linear probe %s: top1=%.4f (best C=%g; %d/%d/%d train/val/test)", dataset.name,
             res.top1, res.best_C, res.n_train, res.n_val, res.n_test)
    return res
