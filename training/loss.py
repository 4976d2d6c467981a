"""Symmetric InfoNCE (the CLIP loss), with features gathered across DDP ranks.

Under DDP every rank gathers all ranks' features without gradient and puts its own *local*
tensors (which do carry gradient) back into its slot, then computes the loss over the full
global batch. Each rank thus back-propagates the full-batch loss into its own samples only;
DDP's gradient averaging divides by the world size, which the train loop undoes by scaling
the loss by ``world_size`` before ``backward`` so gradients equal a single-process run on
the global batch.

The temperature is the exception: it scales *every* logit of the global batch, the gathered
ones included, so each rank's local gradient for it is already the full global-batch gradient.
Its gradient is therefore divided by ``world_size`` on the way back (the value is untouched);
without that, ``loss * world`` + DDP averaging would give it ``world_size`` times its
single-process gradient (which a test with two gloo ranks caught).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated in rank order; this rank's slot keeps its gradient."""
    rank, world = _distributed()
    if world == 1:
        return features
    parts = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[rank] = features
    return torch.cat(parts, dim=0)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over the (gathered) global batch.

    Features are expected L2-normalised; ``logit_scale`` is the already exponentiated
    temperature. Row ``i`` of the images matches row ``i`` of the texts.
    """
    _, world = _distributed()
    if world > 1 and logit_scale.requires_grad:
        logit_scale = _ScaleGrad.apply(logit_scale, 1.0 / world)
    all_images = gather_features(image_features)
    all_texts = gather_features(text_features)
    logits_per_image = logit_scale * all_images @ all_texts.T
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels))
