"""Image↔text retrieval recall@K on image-caption pairs (several captions per image allowed).

Image→text: an image is a hit at K when one of *its* captions ranks within the top K of all
captions. Text→image: a caption is a hit at K when its image ranks within the top K of all
images. As in zero-shot, ties count against the model: the rank of the right answer is the number
of wrong candidates scoring at least as high. Similarities are computed in row chunks so memory
stays O(chunk × candidates).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from eval.datasets import EvalDataset
from eval.features import encode_images, encode_texts, l2_normalize

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)


@dataclass
class RetrievalResult:
    dataset: str
    n_images: int
    n_texts: int
    image_to_text: dict[str, float]
    text_to_image: dict[str, float]
    image_ranks: np.ndarray  # rank of each image's best caption (-1: image has no caption)
    text_ranks: np.ndarray  # rank of each caption's image

    def to_json(self) -> dict:
        return {"n_images": self.n_images, "n_texts": self.n_texts,
                "image_to_text": self.image_to_text, "text_to_image": self.text_to_image,
                "mean_recall": float(np.mean(list(self.image_to_text.values())
                                             + list(self.text_to_image.values())))}


def flatten_captions(captions: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """All captions in one list plus, for each, the index of its image."""
    texts, owner = [], []
    for i, caps in enumerate(captions):
        for c in caps:
            texts.append(c)
            owner.append(i)
    return texts, np.asarray(owner, dtype=np.int64)


@torch.no_grad()
def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor,
                    text_to_image: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(image ranks, text ranks) of the right answers, ties counted against the model."""
    img = l2_normalize(image_features)
    txt = l2_normalize(text_features)
    owner = torch.as_tensor(text_to_image, dtype=torch.long)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if owner.numel() != n_txt:
        raise ValueError(f"{owner.numel()} caption owners for {n_txt} captions")

    text_ranks = np.empty(n_txt, dtype=np.int64)
    for s in range(0, n_txt, chunk):
        sims = txt[s:s + chunk] @ img.T  # [c, n_img]
        own = owner[s:s + chunk]
        right = sims.gather(1, own.view(-1, 1))
        text_ranks[s:s + chunk] = ((sims >= right).sum(dim=1) - 1).numpy()

    image_ranks = np.full(n_img, -1, dtype=np.int64)
    has_caption = torch.zeros(n_img, dtype=torch.bool)
    has_caption[owner] = True
    for s in range(0, n_img, chunk):
        sims = img[s:s + chunk] @ txt.T  # [c, n_txt]
        rows = torch.arange(s, min(s + chunk, n_img))
        is_own = owner.view(1, -1) == rows.view(-1, 1)
        best_right = sims.masked_fill(~is_own, float("-inf")).max(dim=1).values
        wrong_ge = ((sims >= best_right.view(-1, 1)) & ~is_own).sum(dim=1)
        ranks = wrong_ge.numpy()
        valid = has_caption[s:s + chunk].numpy()
        image_ranks[s:s + chunk] = np.where(valid, ranks, -1)
    return image_ranks, text_ranks


def clip_benchmark_recalls(result: "RetrievalResult") -> dict[str, float]:
    """clip_benchmark's names for the same recalls: its ``image_retrieval_recall@k`` retrieves
    images for a text (our text_to_image), ``text_retrieval_recall@k`` texts for an image (our
    image_to_text). It averages over every image, so an image without captions counts as a miss."""
    out: dict[str, float] = {}
    for key in result.text_to_image:
        k = int(key.split("@")[1])
        out[f"image_retrieval_recall@{k}"] = float((result.text_ranks < k).mean()) if result.text_ranks.size else 0.0
        out[f"text_retrieval_recall@{k}"] = float(((result.image_ranks >= 0) & (result.image_ranks < k)).mean()) \
            if result.image_ranks.size else 0.0
    return out


def recall_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    valid = ranks[ranks >= 0]
    if valid.size == 0:
        return {f"R@{k}": 0.0 for k in ks}
    return {f"R@{k}": float((valid < k).mean()) for k in ks}


def retrieval_from_features(image_features: torch.Tensor, text_features: torch.Tensor,
                            text_to_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                            dataset: str = "") -> RetrievalResult:
    img_r, txt_r = retrieval_ranks(image_features, text_features, text_to_image)
    return RetrievalResult(dataset=dataset, n_images=int(image_features.shape[0]),
                           n_texts=int(text_features.shape[0]),
                           image_to_text=recall_at(img_r, ks), text_to_image=recall_at(txt_r, ks),
                           image_ranks=img_r, text_ranks=txt_r)


def evaluate_retrieval(model: Any, dataset: EvalDataset, ks: Sequence[int] = DEFAULT_KS,
                       batch_size: int = 64) -> RetrievalResult:
    """Recall@K both ways for ``model`` on a captioned dataset."""
    dataset.require_captions("retrieval")
    texts, owner = flatten_captions(dataset.captions)
    img = encode_images(model, dataset.iter_images(), batch_size=batch_size, total=len(dataset),
                        desc=dataset.name)
    txt = encode_texts(model, texts)
    res = retrieval_from_features(img, txt, owner, ks, dataset=dataset.name)
    log.info("retrieval %s: i2t %s t2i %s (%d images, %d captions)", dataset.name,
             res.image_to_text, res.text_to_image, res.n_images, res.n_texts)
    return res
