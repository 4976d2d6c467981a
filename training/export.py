"""``metacurate export --open-clip``: a checkpoint as a folder open_clip loads.

The layout mappings it writes with (weights, model config, tokenizer) live in
``training/openclip.py``; ``training/checkpoint.py`` reads such a folder back with its
``load_export``.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Any

import torch

from curation.errors import InputError
from curation.storage import Storage, is_remote, join
from training.checkpoint import build_model, load_checkpoint, resolve_checkpoint
from training.data import MEAN, STD
from training.openclip import (
    CONFIG_FILE,
    OUR_TOKENIZER_FILE,
    WEIGHTS_FILE,
    hf_tokenizer_files,
    openclip_model_config,
    to_openclip,
)
from training.tokenizer import tokenizer_from_json

log = logging.getLogger(__name__)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_name(out: str) -> str:
    """The model name open_clip will know the export by: the output folder's name."""
    base = out.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "metacurate"
    return name


def export_open_clip(checkpoint: str | os.PathLike, out: str | os.PathLike, name: str | None = None,
                     storage: Storage | None = None) -> dict[str, Any]:
    """Write ``out`` so open_clip loads the model of ``checkpoint`` (a file or a training folder).

    Files: ``NAME.json`` (the model config, for ``open_clip.add_model_config``), the weights
    ``open_clip_pytorch_model.bin`` (for ``pretrained=``), ``open_clip_config.json`` (config +
    preprocessing: ``create_model_and_transforms("local-dir:OUT")`` needs nothing else), the
    Hugging Face tokenizer files, and ``metacurate_tokenizer.json`` (ours, so ``metacurate eval
    --checkpoint OUT`` reads the folder back). Returns what was written."""
    storage = storage or Storage.from_env()
    out = os.fspath(out)
    url = resolve_checkpoint(checkpoint, storage)
    state = load_checkpoint(url, storage=storage)
    model = build_model(state, source=f"checkpoint {url}")
    try:
        tokenizer = tokenizer_from_json(state["tokenizer"])
    except Exception as exc:  # noqa: BLE001 - json and the tokenizers library raise various types
        raise InputError(f"checkpoint {url}: its tokenizer cannot be rebuilt ({str(exc)[:300]})") from None
    name = name or default_name(out)
    if not _NAME.match(name):
        raise InputError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (open_clip looks the model up "
                         "by this name)")
    cfg = model.config
    # the tokenizer folder is the export itself; open_clip resolves hf_tokenizer_name as a path
    # (relative ones against the working directory), so a local export records its absolute path
    source = out if is_remote(out) else os.path.abspath(out)
    model_cfg = openclip_model_config(cfg, tokenizer.eot_id, tokenizer.pad_id, source)
    preprocess_cfg = {"size": cfg.image_size, "mode": "RGB", "mean": [float(x) for x in MEAN],
                      "std": [float(x) for x in STD], "interpolation": "bicubic", "resize_mode": "shortest"}
    weights = to_openclip(model.state_dict(), contiguous=True)
    buf = io.BytesIO()
    torch.save(weights, buf)
    files = {f"{name}.json": json.dumps(model_cfg, indent=2).encode(),
             CONFIG_FILE: json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2).encode(),
             WEIGHTS_FILE: buf.getvalue(),
             OUR_TOKENIZER_FILE: tokenizer.to_json().encode("utf-8"),
             **hf_tokenizer_files(tokenizer, cfg.context_length)}
    for fname, data in files.items():
        storage.write_bytes(join(out, fname), data)
    if tokenizer.clean != "whitespace":
        log.warning("the tokenizer of %s does not clean texts the way open_clip does (it was made before "
                    "metacurate adopted open_clip's cleaning): open_clip gives the same tokens only for texts "
                    "that ftfy/HTML-unescape/whitespace cleaning leaves unchanged", url)
    return {"checkpoint": url, "out": out, "name": name, "config": join(out, f"{name}.json"),
            "weights": join(out, WEIGHTS_FILE), "files": sorted(files), "tokenizer_clean": tokenizer.clean}
