"""Checkpoint files: atomic save, training-state load, and the eval-facing ``load_for_eval``.

A checkpoint is one self-contained ``.pt`` file: model config + weights + the tokenizer (JSON)
so eval needs nothing else; training checkpoints additionally carry the optimizer, scheduler,
data position and RNG states for exact resume.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from training.data import eval_transform
from training.model import CLIP, ModelConfig, gmacs_per_sample
from training.tokenizer import tokenizer_from_json

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """``step_*.pt`` files of a run's checkpoint folder, oldest step first."""
    directory = Path(directory)
    found = [(int(m.group(1)), p) for p in directory.glob("step_*.pt") if (m := _STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file path, a run dir (``OUT``) or its ``checkpoints`` folder (latest step)."""
    path = Path(path)
    if path.is_file():
        return path
    for directory in (path / "checkpoints", path):
        found = list_checkpoints(directory)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no checkpoint at {path} (expected a .pt file or a folder with checkpoints/step_*.pt)")


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    return torch.load(resolve_checkpoint(path), map_location=device, weights_only=False)


def build_model(state: dict[str, Any], device: str = "cpu") -> CLIP:
    model = CLIP(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device)


class EvalCLIP:
    """The trained-model contract used by ``eval/`` (see the common brief)."""

    def __init__(self, model: CLIP, tokenizer, device: str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        cfg = model.config
        self.image_size: int = cfg.image_size
        self.context_length: int = cfg.context_length
        self.gmacs_per_sample: float = gmacs_per_sample(cfg)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings ``[B, D]`` of preprocessed pixels ``[B, 3, H, W]``."""
        return self.model.encode_image(x.to(self.device)).float()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings ``[B, D]``; tokenises internally."""
        tokens, eot = self.tokenizer(list(texts), self.context_length)
        return self.model.encode_text(tokens.to(self.device), eot.to(self.device)).float()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB, shorter side to ``image_size``, centre crop, CLIP normalisation -> ``[3, H, W]``."""
        return eval_transform(image, self.image_size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def load_for_eval(path: str | Path, device: str = "cpu") -> EvalCLIP:
    """Load a checkpoint file (or a run dir: its latest checkpoint) for evaluation."""
    state = load_checkpoint(path, device="cpu")
    model = build_model(state, device)
    return EvalCLIP(model, tokenizer_from_json(state["tokenizer"]), device)
