"""One evaluation run of one model over several datasets and tasks → the results document.

Datasets are loaded once and image features computed once per dataset, so zero-shot and linear
probe on the same set (the usual ``--zeroshot digits --linear-probe digits``) encode it once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from curation.storage import Storage
from eval.datasets import EvalDataset, load_dataset
from eval.diagnostics import embedding_health
from eval.features import as_numpy, check_model, encode_images, encode_texts
from eval.linear_probe import evaluate_linear_probe
from eval.overlap import accuracy_with_without, load_overlap, overlap_mask, overlapping_keys
from eval.report import clip_benchmark_record, new_results
from eval.retrieval import clip_benchmark_recalls, evaluate_retrieval, flatten_captions, retrieval_from_features
from eval.zeroshot import evaluate_zeroshot

log = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    zeroshot: Sequence[str] = ()
    retrieval: Sequence[str] = ()
    linear_probe: Sequence[str] = ()
    templates: Sequence[str] | None = None  # None: the built-in set for each dataset
    overlap: str | None = None  # the overlap table: a parquet file or a folder of parts
    overlap_max_hamming: int | None = None
    batch_size: int = 64
    max_samples: int | None = None
    seed: int = 0
    cache: dict = field(default_factory=dict)


def _load(plan: EvalPlan, spec: str, image_size: int, storage: Storage) -> EvalDataset:
    if spec not in plan.cache:
        ds = load_dataset(spec, image_size=image_size, storage=storage)
        if plan.max_samples and len(ds) > plan.max_samples:
            rng = np.random.default_rng(plan.seed)
            ds = ds.subset(np.sort(rng.choice(len(ds), plan.max_samples, replace=False)))
        plan.cache[spec] = ds
    return plan.cache[spec]


def _features(plan: EvalPlan, spec: str, model: Any, ds: EvalDataset) -> torch.Tensor:
    key = ("features", spec)
    if key not in plan.cache:
        plan.cache[key] = encode_images(model, ds.iter_images(), batch_size=plan.batch_size,
                                        total=len(ds), desc=ds.name)
    return plan.cache[key]


def run_evaluation(model: Any, plan: EvalPlan, checkpoint: str = "",
                   samples_seen: int | None = None, compute_gmacs: float | None = None,
                   storage: Storage | None = None) -> dict:
    """Run every task of ``plan`` on ``model``; returns the results dict (see ``eval.report``).
    Datasets and the overlap table are read through ``storage`` (local paths or object stores)."""
    storage = storage or Storage.from_env()
    check_model(model)
    size = int(model.image_size)
    overlap_table = load_overlap(plan.overlap, storage) if plan.overlap else None

    def overlap_for(ds: EvalDataset) -> set[str]:
        return overlapping_keys(overlap_table, ds.name, plan.overlap_max_hamming)

    embed_dim = None
    results = new_results(checkpoint, model, samples_seen, compute_gmacs=compute_gmacs)
    results["clip_benchmark"] = []
    model_name = str(getattr(model, "name", None) or type(model).__name__)

    def record(ds: EvalDataset, task: str, metrics: dict) -> None:
        results["clip_benchmark"].append(clip_benchmark_record(ds, task, metrics, model_name, checkpoint))

    health: dict[str, dict] = {}

    def check_health(ds: EvalDataset, feats, predictions=None) -> None:
        if ds.name in health and predictions is None:
            return
        h = embedding_health(as_numpy(feats), predictions, len(getattr(ds, "classnames", None) or []))
        health[ds.name] = h
        if h["collapsed"]:
            log.warning("%s: the model does not tell this dataset's images apart: %s; its zero-shot scores "
                        "measure the label distribution, not recognition (train longer, or on data closer to "
                        "this set)", ds.name, h["why"])

    for spec in plan.zeroshot:
        ds = _load(plan, spec, size, storage)
        feats = _features(plan, spec, model, ds)
        embed_dim = int(feats.shape[1])
        r = evaluate_zeroshot(model, ds, plan.templates or ds.templates, image_features=feats)
        check_health(ds, feats, r.predictions)
        out = r.to_json()
        record(ds, "zeroshot_classification", r.clip_benchmark)
        if overlap_table is not None:
            out["overlap"] = accuracy_with_without(r.correct_top1, r.keys, overlap_for(ds))
        results["zeroshot"][ds.name] = out

    for spec in plan.retrieval:
        ds = _load(plan, spec, size, storage)
        ds.require_captions("retrieval")
        feats = _features(plan, spec, model, ds)
        embed_dim = int(feats.shape[1])
        texts, owner = flatten_captions(ds.captions)
        txt = encode_texts(model, texts)
        r = retrieval_from_features(feats, txt, owner, dataset=ds.name)
        check_health(ds, feats)
        out = r.to_json()
        record(ds, "zeroshot_retrieval", clip_benchmark_recalls(r))
        if overlap_table is not None:
            mask = overlap_mask(ds.keys, overlap_for(ds))
            out["overlap"] = {"n_overlapping": int(mask.sum())}
            if mask.any() and (~mask).sum() > 0:
                keep = np.flatnonzero(~mask)
                remap = -np.ones(len(ds), dtype=np.int64)
                remap[keep] = np.arange(len(keep))
                tsel = np.flatnonzero(remap[owner] >= 0)
                clean = retrieval_from_features(feats[keep], txt[tsel], remap[owner[tsel]],
                                                dataset=ds.name)
                out["overlap"]["clean"] = clean.to_json()
        results["retrieval"][ds.name] = out
        log.info("retrieval %s: i2t %s t2i %s", ds.name, r.image_to_text, r.text_to_image)

    for spec in plan.linear_probe:
        ds = _load(plan, spec, size, storage)
        feats = _features(plan, spec, model, ds)
        embed_dim = int(feats.shape[1])
        check_health(ds, feats)
        r = evaluate_linear_probe(model, ds, seed=plan.seed, features=as_numpy(feats))
        out = r.to_json()
        if overlap_table is not None:
            keys = [ds.keys[i] for i in r.test_indices]
            out["overlap"] = accuracy_with_without(r.correct, keys, overlap_for(ds))
        results["linear_probe"][ds.name] = out

    results["model"]["embed_dim"] = embed_dim
    results["diagnostics"] = health
    results["collapsed"] = sorted(name for name, h in health.items() if h["collapsed"])
    return results


__all__ = ["EvalPlan", "run_evaluation", "evaluate_zeroshot", "evaluate_retrieval",
           "evaluate_linear_probe"]
