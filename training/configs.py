"""Model sizes (``CONFIGS``), without torch: the command line lists them in ``--help`` and a
checkpoint's config is read back through ``ModelConfig.from_dict``, neither of which should pay
torch's ~2 s import."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the model; stored inside checkpoints so eval can rebuild it."""

    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    context_length: int = 32
    vocab_size: int = 4096
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


CONFIGS: dict[str, ModelConfig] = {
    # A few seconds for dozens of steps: the unit tests' model (32 px, 16 patches).
    "micro": ModelConfig(embed_dim=64, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                         vision_heads=2, context_length=16, text_width=64, text_layers=2, text_heads=2),
    # ~1.7M params: a few hundred steps on 2 CPU cores in minutes; used by the tests.
    "tiny": ModelConfig(),
    # ViT-S/32-like at a reduced resolution: a real but still CPU-trainable model.
    "small": ModelConfig(embed_dim=256, image_size=128, patch_size=16, vision_width=384,
                         vision_layers=6, vision_heads=6, context_length=64, vocab_size=16384,
                         text_width=256, text_layers=6, text_heads=4),
    "vit-s-32": ModelConfig(embed_dim=384, image_size=224, patch_size=32, vision_width=384,
                            vision_layers=12, vision_heads=6, context_length=77, vocab_size=49408,
                            text_width=384, text_layers=12, text_heads=6),
    "vit-b-32": ModelConfig(embed_dim=512, image_size=224, patch_size=32, vision_width=768,
                            vision_layers=12, vision_heads=12, context_length=77, vocab_size=49408,
                            text_width=512, text_layers=12, text_heads=8),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A named config with some fields replaced (e.g. ``vocab_size`` from the tokenizer)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)
