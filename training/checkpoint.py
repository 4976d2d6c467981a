"""Checkpoint files: atomic save, safe load, and the eval-facing ``load_for_eval``.

A checkpoint is one self-contained ``.pt`` file: model config + weights + the tokenizer (JSON)
so eval needs nothing else; training checkpoints additionally carry the optimizer, scheduler,
data position and RNG states for exact resume.

Loading never unpickles arbitrary objects: a ``.pt`` file is a pickle, and ``torch.load`` with
``weights_only=False`` runs whatever code a crafted file names (a checkpoint given to ``eval`` or
left in ``OUT/checkpoints/`` before ``train --resume auto``). So everything we store is tensors and
plain data (dicts, lists, tuples, str, numbers, None) and files are read with ``weights_only=True``;
anything else is refused with an :class:`~curation.errors.InputError` naming the file.
Files are read and written through a :class:`~curation.storage.Storage`, so a checkpoint may live
on an object store.
"""
from __future__ import annotations

import io
import logging
import os
import re
from typing import Any

import torch
from PIL import Image

from curation.errors import InputError
from curation.storage import Storage, is_remote, join
from training.data import eval_transform
from training.model import CLIP, ModelConfig, gmacs_per_sample
from training.tokenizer import tokenizer_from_json

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
#: What every checkpoint of ours holds (training checkpoints hold more, see ``TRAINING_KEYS``).
MODEL_KEYS = ("model_config", "model", "tokenizer")
TRAINING_KEYS = ("step", "optimizer", "scheduler", "data", "rng", "samples_seen", "compute_gmacs")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, storage: Storage | None = None) -> str:
    """Write ``state`` to ``path`` atomically (serialised in memory, then one atomic write), so a
    crash never leaves half a file; returns the path written."""
    storage = storage or Storage.from_env()
    url = os.fspath(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(url, buf.getvalue())
    return url


def list_checkpoints(directory: str | os.PathLike, storage: Storage | None = None) -> list[str]:
    """``step_*.pt`` files of a run's checkpoint folder, oldest step first (empty if there is none)."""
    storage = storage or Storage.from_env()
    directory = os.fspath(directory)
    if not storage.isdir(directory):
        return []
    found = []
    for url in storage.glob(directory, "step_*.pt"):
        m = _STEP_FILE.search(url.rsplit("/", 1)[-1])
        if m:
            found.append((int(m.group(1)), url))
    return [url for _, url in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike, storage: Storage | None = None) -> str:
    """A checkpoint file from a file path, a run dir (``OUT``) or its ``checkpoints`` folder (latest step)."""
    storage = storage or Storage.from_env()
    url = os.fspath(path)
    if storage.isfile(url):
        return url
    if storage.isdir(url):
        for directory in (join(url, "checkpoints"), url):
            found = list_checkpoints(directory, storage)
            if found:
                return found[-1]
    raise InputError(f"no checkpoint at {url} (expected a .pt file or a folder with checkpoints/step_*.pt)")


def _refusal(exc: Exception) -> str:
    """The useful line of torch's weights-only refusal (its message also suggests turning the
    safety off, which is exactly what must not be done with a file of unknown origin)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines[1:] if not ln.startswith(("Please file an issue", "Check the documentation"))]
    detail = " ".join(useful) or (lines[0] if lines else type(exc).__name__)
    return detail.replace("WeightsUnpickler error:", "").strip()


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", storage: Storage | None = None,
                    require: tuple[str, ...] = MODEL_KEYS) -> dict[str, Any]:
    """The state dict of a checkpoint file (or of a run dir's latest checkpoint), loaded with
    ``weights_only=True``; a foreign, truncated or unsafe file is an ``InputError`` naming it."""
    import pickle

    storage = storage or Storage.from_env()
    url = resolve_checkpoint(path, storage)
    try:
        source: Any = io.BytesIO(storage.read_bytes(url)) if is_remote(url) else url
        state = torch.load(source, map_location=device, weights_only=True)
    except FileNotFoundError as exc:
        raise InputError(f"checkpoint {url} not found") from exc
    except pickle.UnpicklingError as exc:
        raise InputError(f"checkpoint {url} refused: it holds Python objects other than tensors and plain "
                         f"data, which could run code when loaded ({_refusal(exc)}); only checkpoints "
                         "written by `metacurate train` are accepted") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for damaged files
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise InputError(f"checkpoint {url} cannot be read: {first[:200]} (a truncated or damaged file, "
                         "or not a torch checkpoint)") from None
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {url} is not a metacurate checkpoint: it holds a "
                         f"{type(state).__name__}, not a dict of model config, weights and tokenizer")
    missing = [k for k in require if k not in state]
    if missing:
        what = "a training checkpoint written by `metacurate train`" if set(require) & set(TRAINING_KEYS) \
            else "a metacurate checkpoint"
        raise InputError(f"checkpoint {url} is not {what}: it lacks {missing}")
    return state


def build_model(state: dict[str, Any], device: str = "cpu", source: str = "checkpoint") -> CLIP:
    """The model of a checkpoint's state; a config that does not fit the weights is an ``InputError``."""
    config = state.get("model_config")
    if not isinstance(config, dict):
        raise InputError(f"{source}: its model_config is not a mapping of sizes")
    try:
        model = CLIP(ModelConfig.from_dict(config))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise InputError(f"{source}: its weights do not fit its model config ({str(exc).splitlines()[0][:300]})") \
            from None
    return model.to(device)


class EvalCLIP:
    """The trained-model contract used by ``eval/`` (see the common brief)."""

    def __init__(self, model: CLIP, tokenizer, device: str = "cpu", samples_seen: int | None = None,
                 compute_gmacs: float | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        cfg = model.config
        self.image_size: int = cfg.image_size
        self.context_length: int = cfg.context_length
        self.gmacs_per_sample: float = gmacs_per_sample(cfg)
        # what the trainer recorded (None for hand-built checkpoints); eval reports compute from it
        self.samples_seen = samples_seen
        self.compute_gmacs = compute_gmacs

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


def load_for_eval(path: str | os.PathLike, device: str = "cpu", storage: Storage | None = None) -> EvalCLIP:
    """Load a checkpoint file (or a run dir: its latest checkpoint) for evaluation."""
    storage = storage or Storage.from_env()
    url = resolve_checkpoint(path, storage)
    state = load_checkpoint(url, device="cpu", storage=storage)
    model = build_model(state, device, source=f"checkpoint {url}")
    try:
        tokenizer = tokenizer_from_json(state["tokenizer"])
    except Exception as exc:  # noqa: BLE001 - json and the tokenizers library raise various types
        raise InputError(f"checkpoint {url}: its tokenizer cannot be rebuilt ({str(exc)[:300]})") from None
    seen, gmacs = state.get("samples_seen"), state.get("compute_gmacs")
    return EvalCLIP(model, tokenizer, device,
                    samples_seen=int(seen) if isinstance(seen, (int, float)) else None,
                    compute_gmacs=float(gmacs) if isinstance(gmacs, (int, float)) else None)
