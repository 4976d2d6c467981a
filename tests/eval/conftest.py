"""Hand-built embedding models for eval tests: every similarity is known in advance.

``VectorModel``: an image *is* its embedding — the first row of the red channel, pixel/255 —
and a text embeds as the sum of fixed word vectors (bag of words, punctuation stripped). So
zero-shot and retrieval answers can be worked out by hand.

``RandomProjectionModel``: frozen random projection of the grey pixels, for the linear probe.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image


class VectorModel:
    gmacs_per_sample = 0.0

    def __init__(self, dim: int, words: dict[str, list[float]]) -> None:
        self.dim = dim
        self.image_size = dim
        self.words = {w: torch.tensor(v, dtype=torch.float32) for w, v in words.items()}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, : self.dim]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                if w in self.words:
                    out[i] += self.words[w]
        return out


def vector_image(values: list[int]) -> Image.Image:
    """A 1-pixel-high RGB image whose red row holds ``values`` (0..255)."""
    row = np.zeros((1, len(values), 3), dtype=np.uint8)
    row[0, :, 0] = values
    return Image.fromarray(row, mode="RGB")


class RandomProjectionModel:
    """Grey pixels → fixed Gaussian projection; no learning, so the probe does all the work."""

    gmacs_per_sample = 0.0

    def __init__(self, image_size: int = 16, dim: int = 128, seed: int = 0) -> None:
        self.image_size = image_size
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(image_size * image_size, dim, generator=g) / image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        img = image.convert("L").resize((self.image_size, self.image_size), Image.BILINEAR)
        g = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        return g.expand(3, -1, -1).contiguous()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].flatten(1) @ self.proj

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.ones(len(texts), self.proj.shape[1])


@pytest.fixture
def vector_model_cls():
    return VectorModel


@pytest.fixture
def make_vector_image():
    return vector_image


@pytest.fixture
def random_projection_model():
    return RandomProjectionModel()
