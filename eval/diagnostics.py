"""Is the model's embedding space usable at all? Figures that flag a collapsed model.

An undertrained or broken CLIP often maps every image to (nearly) the same point: zero-shot
accuracy is then the share of the one class every image is given, and top-5 the share of the
five classes the one fixed ranking puts first: numbers that look like a result but measure the
label distribution. These figures let the results (and the page) say so instead.

- ``mean_cosine``: mean pairwise cosine similarity of the L2-normalised image features (an
  unbiased estimate from the mean vector: ``(|sum|^2 - n) / (n (n - 1))``); near 1 means every
  image sits in the same direction.
- ``effective_rank``: ``exp(entropy)`` of the normalised singular values of the centred features
  (Roy & Vetterli); 1 means one direction carries all variation.
- ``top_prediction_share``: the share of images given the most frequent zero-shot class.
"""
from __future__ import annotations

import numpy as np

#: A dataset whose image features have a mean pairwise cosine above this is flagged as collapsed.
COLLAPSE_COSINE = 0.95
#: ... or whose zero-shot predictions put this share or more of the images in one class (with
#: at least this many classes in the dataset).
COLLAPSE_TOP_SHARE = 0.9
MIN_CLASSES = 3


def embedding_health(features, predictions=None, n_classes: int | None = None) -> dict:
    """The figures above for one dataset's image features (n x d, any array-like)."""
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    out: dict = {"n": int(n)}
    if n < 2:
        return {**out, "mean_cosine": None, "effective_rank": None, "collapsed": False}
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    s = x.sum(axis=0)
    mean_cos = float((s @ s - n) / (n * (n - 1)))
    sv = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    total = sv.sum()
    if total > 0:
        p = sv[sv > 0] / total
        eff_rank = float(np.exp(-(p * np.log(p)).sum()))
    else:
        eff_rank = 0.0
    out.update(mean_cosine=round(mean_cos, 6), effective_rank=round(eff_rank, 3))
    reasons = []
    if mean_cos > COLLAPSE_COSINE:
        reasons.append(f"image features nearly identical (mean pairwise cosine {mean_cos:.3f} > {COLLAPSE_COSINE})")
    if predictions is not None and len(predictions):
        pred = np.asarray(predictions)
        share = float(np.bincount(pred).max() / len(pred))
        out["top_prediction_share"] = round(share, 6)
        if (n_classes or 0) >= MIN_CLASSES and share >= COLLAPSE_TOP_SHARE:
            reasons.append(f"{share:.0%} of the images get the same zero-shot class")
    out["collapsed"] = bool(reasons)
    if reasons:
        out["why"] = "; ".join(reasons)
    return out
