"""Overlap-aware evaluation: scores with and without eval images that leaked into training.

The dedup stage writes overlap rows (columns ``uid, dataset, key, hamming``): one row per
(training sample, eval image) pair within the near-duplicate threshold. Here the
eval side matters: an eval image is *overlapping* when any row names its dataset and key. Keys
are compared after dropping a leading ``./`` and an image extension, so ``0042.png`` written by
the hasher and ``0042`` used by the loader agree (see ``eval.datasets`` for the key rules).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from curation.errors import InputError
from curation.storage import Storage
from eval.datasets import IMAGE_EXTS

log = logging.getLogger(__name__)

OVERLAP_COLUMNS = ("uid", "dataset", "key", "hamming")


def normalize_key(key: str) -> str:
    k = str(key)
    while k.startswith("./"):
        k = k[2:]
    stem, dot, ext = k.rpartition(".")
    if dot and ext.lower() in IMAGE_EXTS and "/" not in ext:
        return stem
    return k


def load_overlap(path: str, storage: Storage | None = None):
    """The overlap rows (a parquet file or a folder of parts) as an Arrow table (validated columns)."""
    storage = storage or Storage.from_env()
    if not storage.exists(path):
        raise InputError(f"no overlap table at {path}: run the dedup stage first, or pass the "
                         "overlap parquet itself")
    table = storage.read_parquet(path)
    missing = [c for c in ("dataset", "key", "hamming") if c not in table.column_names]
    if missing:
        raise InputError(f"{path} lacks columns {missing}; expected {OVERLAP_COLUMNS}")
    return table


def overlapping_keys(table, dataset: str, max_hamming: int | None = None) -> set[str]:
    """Normalised eval keys of ``dataset`` with a training near-duplicate (≤ max_hamming)."""
    names = table.column("dataset").to_pylist()
    keys = table.column("key").to_pylist()
    ham = table.column("hamming").to_pylist()
    out = {normalize_key(k) for n, k, h in zip(names, keys, ham)
           if n == dataset and (max_hamming is None or h <= max_hamming)}
    if not out and names and dataset not in set(names):
        log.info("overlap table has no rows for dataset %r (it names %s)", dataset,
                 sorted(set(names))[:10])
    return out


def overlap_mask(keys: Sequence[str], overlap: set[str]) -> np.ndarray:
    """Boolean mask over ``keys``: True where the eval image overlaps training data."""
    return np.asarray([normalize_key(k) in overlap for k in keys], dtype=bool)


def accuracy_with_without(correct: np.ndarray, keys: Sequence[str], overlap: set[str]) -> dict:
    """Accuracy on all images, on the clean ones, and on the overlapping ones."""
    correct = np.asarray(correct, dtype=bool)
    if len(correct) != len(keys):
        raise ValueError(f"{len(correct)} outcomes for {len(keys)} keys")
    mask = overlap_mask(keys, overlap)

    def part(sel: np.ndarray) -> dict:
        n = int(sel.sum())
        return {"n": n, "top1": float(correct[sel].mean()) if n else None}

    everything = part(np.ones_like(mask))
    clean = part(~mask)
    return {
        "n_overlapping": int(mask.sum()),
        "all": everything,
        "clean": clean,
        "overlapping": part(mask),
        "delta_all_minus_clean": (everything["top1"] - clean["top1"])
        if clean["top1"] is not None and everything["top1"] is not None else None,
    }
