"""Zero-shot classification with prompt ensembles (CLIP's protocol).

For each class, every template is filled with the class name and encoded; the template
embeddings are L2-normalised, averaged, and the mean is renormalised. An image is assigned the
classes with the highest cosine similarity to its normalised image embedding.

Ties count against the model: the true class is within the top k only when fewer than k *other*
classes score at least as high. A degenerate model (all scores equal) therefore scores 0, never
a lucky 100%.

The result also carries clip_benchmark's numbers computed its way (``clip_benchmark``: ``acc1``,
``acc5`` from ``topk``, ``mean_per_class_recall`` = balanced accuracy of the argmax predictions;
``acc5`` is None below 5 classes, where clip_benchmark writes NaN). They differ from ours only
where scores tie exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from eval.datasets import EvalDataset
from eval.features import encode_images, encode_texts, l2_normalize
from eval.templates import fill, templates_for, validate_templates

log = logging.getLogger(__name__)


@torch.no_grad()
def class_embeddings(model: Any, classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """[C, D] per-class text embeddings: mean of normalised template embeddings, renormalised."""
    templates = validate_templates(templates)
    texts = [fill(t, c) for c in classnames for t in templates]
    feats = encode_texts(model, texts, batch_size=batch_size)  # already L2-normalised
    feats = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    return l2_normalize(feats)


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: how many other classes score >= the true class (0 = uniquely best)."""
    true = logits.gather(1, labels.view(-1, 1))
    return (logits >= true).sum(dim=1) - 1


@dataclass
class ZeroShotResult:
    dataset: str
    n: int
    top1: float
    top5: float
    per_class: dict[str, float]
    class_counts: dict[str, int]
    templates: list[str]
    keys: list[str] = field(repr=False, default_factory=list)
    correct_top1: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    predictions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, int))
    clip_benchmark: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"n": self.n, "top1": self.top1, "top5": self.top5,
                "per_class": self.per_class, "class_counts": self.class_counts,
                "mean_per_class": float(np.mean(list(self.per_class.values())))
                if self.per_class else 0.0,
                "num_templates": len(self.templates)}


def zeroshot_from_features(image_features: torch.Tensor, text_classifier: torch.Tensor,
                           labels: np.ndarray | torch.Tensor, classnames: Sequence[str],
                           keys: Sequence[str] | None = None, dataset: str = "",
                           templates: Sequence[str] = ()) -> ZeroShotResult:
    """Score normalised image features [N, D] against class embeddings [C, D]."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    logits = l2_normalize(image_features) @ text_classifier.float().T
    rank = true_class_rank(logits, labels_t).numpy()
    correct1 = rank < 1
    k5 = min(5, len(classnames))
    correct5 = rank < k5
    lab = labels_t.numpy()
    per_class, counts = {}, {}
    for c, name in enumerate(classnames):
        mask = lab == c
        counts[name] = int(mask.sum())
        if mask.any():
            per_class[name] = float(correct1[mask].mean())
    predictions = logits.argmax(dim=1).numpy()
    return ZeroShotResult(
        dataset=dataset, n=len(lab), top1=float(correct1.mean()), top5=float(correct5.mean()),
        per_class=per_class, class_counts=counts, templates=list(templates),
        keys=list(keys) if keys is not None else [str(i) for i in range(len(lab))],
        correct_top1=correct1, predictions=predictions,
        clip_benchmark=clip_benchmark_metrics(logits, lab, predictions),
    )


def clip_benchmark_metrics(logits: torch.Tensor, labels: np.ndarray, predictions: np.ndarray) -> dict:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` as clip_benchmark computes them."""
    n_classes = logits.shape[1]
    top = logits.topk(min(5, n_classes), dim=1).indices.numpy()
    hits = top == labels[:, None]
    acc1 = float(hits[:, 0].mean())
    acc5 = float(hits.any(axis=1).mean()) if n_classes >= 5 else None
    # sklearn's balanced_accuracy_score: the mean recall over the classes that occur in the labels
    recalls = [float((predictions[labels == c] == c).mean()) for c in np.unique(labels)]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls)) if recalls else 0.0}


def evaluate_zeroshot(model: Any, dataset: EvalDataset, templates: Sequence[str] | None = None,
                      batch_size: int = 64,
                      image_features: torch.Tensor | None = None) -> ZeroShotResult:
    """Zero-shot top-1/top-5 and per-class accuracy of ``model`` on a labelled dataset."""
    dataset.require_classification("zero-shot classification")
    templates = validate_templates(templates or templates_for(dataset.name))
    classifier = class_embeddings(model, dataset.classnames, templates)
    if image_features is None:
        image_features = encode_images(model, dataset.iter_images(), batch_size=batch_size,
                                       total=len(dataset), desc=dataset.name)
    res = zeroshot_from_features(image_features, classifier, dataset.labels, dataset.classnames,
                                 keys=dataset.keys, dataset=dataset.name, templates=templates)
    log.info("zero-shot %s: top1=%.4f top5=%.4f (n=%d, %d templates)", dataset.name, res.top1,
             res.top5, res.n, len(templates))
    return res
