"""The model interface eval relies on, and batched feature extraction.

Eval never imports the trainer's classes: any object with the attributes of
:class:`EvalModel` works (the trained-model contract of the common brief). That keeps eval
testable with hand-built embedding models and usable with other CLIP implementations wrapped in
a thin adapter.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@runtime_checkable
class EvalModel(Protocol):
    """What eval needs from a trained CLIP (see the trained-model contract)."""

    image_size: int
    gmacs_per_sample: float

    def encode_image(self, x: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...


def check_model(model: Any) -> None:
    """Fail early, naming what is missing, instead of deep inside a batch loop."""
    missing = [name for name in ("encode_image", "encode_text", "preprocess", "image_size")
               if not hasattr(model, name)]
    if missing:
        raise TypeError(f"model object {type(model).__name__} lacks {missing}; eval needs "
                        "encode_image, encode_text, preprocess and image_size (see the "
                        "trained-model contract)")


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation; zero rows stay zero instead of becoming NaN."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _model_device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    params = getattr(model, "parameters", None)
    if callable(params):
        try:
            return next(iter(params())).device
        except (StopIteration, TypeError):
            pass
    return torch.device("cpu")


@torch.no_grad()
def encode_images(model: Any, images: Iterable[Image.Image], batch_size: int = 64,
                  total: int | None = None, desc: str = "images") -> torch.Tensor:
    """Preprocess and encode PIL images in batches; returns L2-normalised CPU features [N, D]."""
    device = _model_device(model)
    feats: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        x = torch.stack(batch).to(device)
        feats.append(l2_normalize(model.encode_image(x)).cpu())
        batch.clear()

    for img in tqdm(images, total=total, desc=f"encode {desc}", leave=False,
                    disable=total is not None and total < 2 * batch_size):
        batch.append(model.preprocess(img))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError(f"no {desc} to encode")
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Encode texts in batches; returns L2-normalised CPU features [N, D]."""
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    out = [l2_normalize(model.encode_text(list(texts[i:i + batch_size]))).cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
