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

open_clip's conventions are understood too: weights under ``state_dict`` (open_clip's key, in its
layout, with or without DDP's ``module.`` prefix) load like our ``model``; the trainer writes
both keys (plus ``epoch`` and ``name``), so open_clip's ``load_checkpoint`` reads our files given the
model config ``metacurate export --open-clip`` writes. A checkpoint folder's newest checkpoint is
its highest ``step_<N>.pt``, else its highest ``epoch_<K>.pt`` (open_clip's names); a folder
written by ``metacurate export --open-clip`` (``open_clip_config.json``) is read as a checkpoint.
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
from training.openclip import CONFIG_FILE, from_openclip, load_export
from training.tokenizer import tokenizer_from_json

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_EPOCH_FILE = re.compile(r"epoch_(\d+|latest)\.pt$")
#: What every checkpoint of ours holds (training checkpoints hold more, see ``TRAINING_KEYS``).
MODEL_KEYS = ("model_config", "model", "tokenizer")
TRAINING_KEYS = ("step", "optimizer", "scheduler", "data", "rng", "samples_seen", "compute_gmacs")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, storage: Storage | None = None,
                    copies: tuple[str, ...] = ()) -> str:
    """Write ``state`` to ``path`` (and to each of ``copies``) atomically (serialised in memory
    once, then one atomic write per file), so a crash never leaves half a file; returns ``path``."""
    storage = storage or Storage.from_env()
    url = os.fspath(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    for target in (url, *copies):
        storage.write_bytes(target, buf.getvalue())
    return url


def list_checkpoints(directory: str | os.PathLike, storage: Storage | None = None) -> list[str]:
    """A checkpoint folder's ``step_<N>.pt`` files, oldest first; where there are none, its
    ``epoch_<K>.pt`` files (open_clip's names; ``epoch_latest.pt`` last). Empty if there is none."""
    storage = storage or Storage.from_env()
    directory = os.fspath(directory)
    if not storage.isdir(directory):
        return []
    steps, epochs = [], []
    for url in storage.glob(directory, "*.pt"):
        base = url.rsplit("/", 1)[-1]
        if m := _STEP_FILE.fullmatch(base):
            steps.append((int(m.group(1)), url))
        elif m := _EPOCH_FILE.fullmatch(base):
            epochs.append((float("inf") if m.group(1) == "latest" else int(m.group(1)), url))
    return [url for _, url in sorted(steps or epochs)]


def is_export_dir(url: str, storage: Storage) -> bool:
    """A folder written by ``metacurate export --open-clip`` (open_clip's ``local-dir`` layout)."""
    return storage.isdir(url) and storage.isfile(join(url, CONFIG_FILE))


def resolve_checkpoint(path: str | os.PathLike, storage: Storage | None = None) -> str:
    """A checkpoint from a file path, an exported open_clip folder, or a run dir (``OUT``) or its
    ``checkpoints`` folder (the newest checkpoint)."""
    storage = storage or Storage.from_env()
    url = os.fspath(path)
    if storage.isfile(url):
        return url
    if storage.isdir(url):
        if is_export_dir(url, storage):
            return url
        for directory in (join(url, "checkpoints"), url):
            found = list_checkpoints(directory, storage)
            if found:
                return found[-1]
    raise InputError(f"no checkpoint at {url} (expected a .pt file, a folder with checkpoints/step_*.pt or "
                     "epoch_*.pt, or a folder written by `metacurate export --open-clip`)")


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
    if is_export_dir(url, storage):
        state = load_export(url, storage)
        missing = [k for k in require if k not in state]
        if missing:
            raise InputError(f"{url} is an exported model, not a training checkpoint written by "
                             f"`metacurate train`: it lacks {missing}")
        return state
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
    if "model" not in state and isinstance(state.get("state_dict"), dict):
        # open_clip's key and layout; everything downstream reads our layout under "model"
        try:
            state["model"] = from_openclip(state["state_dict"])
        except InputError as exc:
            raise InputError(f"checkpoint {url}: {exc}") from None
    missing = [k for k in require if k not in state]
    if missing:
        what = "a training checkpoint written by `metacurate train`" if set(require) & set(TRAINING_KEYS) \
            else "a metacurate checkpoint"
        hint = ""
        if "state_dict" in state and "model_config" in missing:
            hint = (" (open_clip's own checkpoints hold no model config or tokenizer: copy the weights into a "
                    "folder written by `metacurate export --open-clip` as open_clip_pytorch_model.bin and give "
                    "that folder)")
        raise InputError(f"checkpoint {url} is not {what}: it lacks {missing}{hint}")
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
                 compute_gmacs: float | None = None, name: str = "metacurate") -> None:
        self.model = model.eval()
        self.name = name  # the model's name in clip_benchmark-style results (the --model it was trained as)
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
    train_config = state.get("train_config")
    trained_as = train_config.get("model") if isinstance(train_config, dict) else None
    return EvalCLIP(model, tokenizer, device,
                    samples_seen=int(seen) if isinstance(seen, (int, float)) else None,
                    compute_gmacs=float(gmacs) if isinstance(gmacs, (int, float)) else None,
                    name=f"metacurate-{trained_as}" if isinstance(trained_as, str) else "metacurate")
