import math

import numpy as np
import pytest
import torch

from training.loss import clip_loss
from training.masking import drop_patches, kept_patch_count
from training.model import (
    CLIP,
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    get_config,
    gmacs_per_sample,
)


def _direct_loss(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    """Textbook symmetric InfoNCE, written with explicit loops."""
    n = len(img)
    logits = scale * img @ txt.T
    total_i = total_t = 0.0
    for i in range(n):
        total_i += -logits[i, i] + math.log(sum(math.exp(logits[i, j]) for j in range(n)))
        total_t += -logits[i, i] + math.log(sum(math.exp(logits[j, i]) for j in range(n)))
    return 0.5 * (total_i / n + total_t / n)


def test_loss_matches_direct_computation():
    img = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    txt = np.array([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0], [1.0, 0.0, 0.0]])
    scale = 7.5
    got = clip_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(scale)).item()
    assert got == pytest.approx(_direct_loss(img, txt, scale), rel=1e-10)
    # perfectly aligned pairs at a high temperature give a loss near 0, shuffled ones do not
    eye = torch.eye(4, dtype=torch.float64)
    assert clip_loss(eye, eye, torch.tensor(100.0)).item() < 1e-6
    assert clip_loss(eye, eye.roll(1, 0), torch.tensor(100.0)).item() > 50


def test_gradients_reach_both_towers_and_temperature():
    torch.manual_seed(0)
    model = CLIP(get_config("micro", vocab_size=300))
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT)
    images = torch.randn(6, 3, 32, 32)
    tokens = torch.randint(0, 300, (6, 16))
    eot = torch.tensor([3, 5, 15, 8, 2, 10])
    img, txt, scale = model(images, tokens, eot, mask_ratio=0.5)
    clip_loss(img, txt, scale).backward()
    for name in ("visual.patchify.weight", "visual.blocks.0.qkv.weight", "image_projection.weight",
                 "text.token_embedding.weight", "text.blocks.1.fc.weight", "text_projection.weight", "logit_scale"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_logit_scale_is_clamped_at_ln_100():
    model = CLIP(get_config("micro", vocab_size=300))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    _, _, scale = model(torch.randn(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.long), torch.tensor([1, 1]))
    assert scale.item() == pytest.approx(100.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.3])
def test_masking_keeps_class_token_and_exact_count(ratio):
    batch, n, width = 8, 49, 5
    tokens = torch.arange(batch * (1 + n) * width, dtype=torch.float32).view(batch, 1 + n, width)
    out = drop_patches(tokens, ratio)
    keep = kept_patch_count(n, ratio)
    assert keep == int(n * (1 - ratio))
    assert out.shape == (batch, 1 + keep, width)
    assert torch.equal(out[:, 0], tokens[:, 0])  # class token kept, first
    for b in range(batch):  # kept rows are distinct rows of this sample's own patches
        rows = {tuple(r.tolist()) for r in out[b, 1:]}
        assert len(rows) == keep
        assert rows <= {tuple(r.tolist()) for r in tokens[b, 1:]}


def test_masking_differs_per_sample():
    batch, n = 16, 64
    positions = torch.arange(1 + n, dtype=torch.float32).view(1, 1 + n, 1).expand(batch, -1, -1).contiguous()
    out = drop_patches(positions, 0.5)
    subsets = {tuple(out[b, 1:, 0].tolist()) for b in range(batch)}
    assert len(subsets) == batch


def test_masking_shortens_sequence_in_training_only():
    torch.manual_seed(0)
    model = CLIP(get_config("micro", vocab_size=300))
    seen = []
    hook = model.visual.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    images = torch.randn(4, 3, 32, 32)
    model.train()
    model.encode_image(images, mask_ratio=0.75)
    model.eval()
    a = model.encode_image(images, mask_ratio=0.75)
    b = model.encode_image(images, mask_ratio=0.0)
    hook.remove()
    assert seen == [1 + 4, 1 + 16, 1 + 16]  # 16 patches: 4 kept when training, all at eval
    assert torch.equal(a, b)
    assert gmacs_per_sample(model.config, 0.5) < gmacs_per_sample(model.config, 0.0)
