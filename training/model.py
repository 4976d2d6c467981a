"""The compact CLIP: a ViT image tower, a causal text transformer and two linear projections.

Sizes come from named configs (``CONFIGS``): ``tiny`` trains on two CPU cores in minutes (64 px),
``vit-b-32`` follows CLIP ViT-B/32. Attention uses ``scaled_dot_product_attention`` with a fused
QKV projection (and ``is_causal`` in the text tower, so no mask tensor is materialised), which is
what lets this small model train at least as fast as the reference implementation on CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.configs import CONFIGS, ModelConfig, get_config  # noqa: F401 (re-exported)
from training.masking import drop_patches, kept_patch_count

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (attention + MLP), batch-first."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.ln_1(x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.out(attn.transpose(1, 2).reshape(batch, length, width))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class VisionTower(nn.Module):
    """ViT: conv patchify, class token, learned positions, FLIP masking, blocks, class-token out."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        width = cfg.vision_width
        scale = width ** -0.5
        self.patchify = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_token = nn.Parameter(scale * torch.randn(width))
        self.positions = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, cfg.vision_heads, cfg.mlp_ratio) for _ in range(cfg.vision_layers))
        self.ln_post = nn.LayerNorm(width)

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        x = self.patchify(images).flatten(2).transpose(1, 2)  # [B, N, W]
        cls = self.class_token.expand(x.shape[0], 1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positions.to(x.dtype)
        if mask_ratio > 0.0 and self.training:
            x = drop_patches(x, mask_ratio)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0])


class TextTower(nn.Module):
    """Causal transformer over token ids; the feature is taken at each text's end-of-text token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positions = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.text_width))
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.text_heads, cfg.mlp_ratio) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot_index]


class CLIP(nn.Module):
    """Both towers, projections into the joint space, and the learnable temperature."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = VisionTower(cfg)
        self.text = TextTower(cfg)
        self.image_projection = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.apply(_init_linear)

    def encode_image(self, images: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        """Unnormalised image embeddings; masking only applies in training mode."""
        return self.image_projection(self.visual(images, mask_ratio))

    def encode_text(self, tokens: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings from padded token ids and end-of-text positions."""
        return self.text_projection(self.text(tokens, eot_index))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, eot_index: torch.Tensor,
                mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image and text features and the (clamped, exponentiated) logit scale."""
        image_features = F.normalize(self.encode_image(images, mask_ratio), dim=-1)
        text_features = F.normalize(self.encode_text(tokens, eot_index), dim=-1)
        return image_features, text_features, self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def clamp_logit_scale(self) -> None:
        """Keep the stored parameter at or below ln(100), as CLIP does after each step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _tower_macs(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    """MACs of ``layers`` blocks: QKV + output projection (4 L W^2), scores and mixing (2 L^2 W), MLP."""
    per_layer = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * int(width * mlp_ratio)
    return float(layers * per_layer)


def gmacs_per_sample(cfg: ModelConfig, mask_ratio: float = 0.0) -> float:
    """Forward GMACs of one image + one text (full context), for compute accounting and scaling laws."""
    patches = cfg.num_patches
    kept = kept_patch_count(patches, mask_ratio) if mask_ratio > 0 else patches
    image = patches * 3 * cfg.patch_size ** 2 * cfg.vision_width  # patchify runs on all patches
    image += _tower_macs(kept + 1, cfg.vision_width, cfg.vision_layers, cfg.mlp_ratio)
    image += cfg.vision_width * cfg.embed_dim
    text = _tower_macs(cfg.context_length, cfg.text_width, cfg.text_layers, cfg.mlp_ratio)
    text += cfg.text_width * cfg.embed_dim
    return (image + text) / 1e9
