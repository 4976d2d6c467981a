"""FLIP random patch dropping.

FLIP ("Scaling Language-Image Pre-training via Masking") removes a random subset of image patch
tokens *after* the position embedding, so the encoder really runs on a shorter sequence: the cost
of the image tower falls roughly in proportion to the kept fraction. The class token is always
kept (it carries the image embedding). Each sample gets its own random subset.
"""
from __future__ import annotations

import torch


def kept_patch_count(num_patches: int, ratio: float) -> int:
    """How many patch tokens survive masking at ``ratio`` (class token not included)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(num_patches * (1.0 - ratio))


def drop_patches(tokens: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep the class token and a random ``int(N * (1 - ratio))`` patches of each sample.

    ``tokens`` is ``[B, 1 + N, D]`` with the class token first, position embedding already added.
    Returns ``[B, 1 + keep, D]``; the kept patches stay in their original order (order does not
    matter to attention, but it keeps the result easy to check). ``ratio == 0`` returns the input.
    """
    if ratio <= 0.0:
        return tokens
    batch, length, width = tokens.shape
    num_patches = length - 1
    keep = kept_patch_count(num_patches, ratio)
    noise = torch.rand(batch, num_patches, device=tokens.device, generator=generator)
    # The `keep` smallest noise values give a uniform random subset per sample.
    kept_idx = noise.topk(keep, dim=1, largest=False).indices.sort(dim=1).values + 1
    # index 0 (the class token) first, so a single gather builds the output without a concatenation
    index = torch.cat([kept_idx.new_zeros(batch, 1), kept_idx], dim=1)
    return tokens.gather(1, index.unsqueeze(-1).expand(batch, 1 + keep, width))
