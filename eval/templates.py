"""Prompt templates for zero-shot classification.

CLIP averages the text embeddings of many phrasings of each class name ("a photo of a {}.",
"a blurry photo of a {}.", ...) because a single prompt is brittle. We ship a small default set
in that style (written for this project) plus one for digits, and read user templates from a
file: plain text with one template per line (``#`` comments and blank lines ignored) or a JSON
list of strings. Every template must contain ``{}`` (or ``{c}``) where the class name goes.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from curation.errors import InputError
from curation.storage import Storage

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a blurry photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a drawing of a {}.",
    "a sketch of a {}.",
    "a painting of a {}.",
    "a rendering of a {}.",
    "a black and white photo of a {}.",
    "art of the {}.",
    "a {} in a video game.",
    "a toy {}.",
    "itap of a {}.",
)

DIGIT_TEMPLATES: tuple[str, ...] = (
    'a photo of the number: "{}".',
    "a photo of the number {}.",
    "a handwritten {}.",
    "the digit {}.",
    "a scan of a handwritten number {}.",
    "{}",
)

DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    "digits": DIGIT_TEMPLATES,
    "digits:numerals": DIGIT_TEMPLATES,
}


def templates_for(dataset_name: str) -> list[str]:
    """The built-in template set for a dataset (the generic set when none is specific)."""
    return list(DATASET_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATES))


def validate_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    """Normalise ``{c}`` to ``{}`` and reject templates without exactly one class slot."""
    out = []
    for i, t in enumerate(templates):
        if not isinstance(t, str):
            raise InputError(f"{source}: template {i} is not a string: {t!r}")
        t = t.replace("{c}", "{}")
        if t.count("{}") != 1:
            raise InputError(f"{source}: template {i} {t!r} must contain the class slot '{{}}' "
                             "exactly once")
        out.append(t)
    if not out:
        raise InputError(f"{source}: no templates")
    return out


def load_templates(path: str | os.PathLike, storage: Storage | None = None) -> list[str]:
    """Read templates from a text file (one per line) or a JSON list (local or on an object store)."""
    storage = storage or Storage.from_env()
    p = os.fspath(path)
    if not storage.isfile(p):
        raise InputError(f"templates file {p} does not exist")
    text = storage.read_bytes(p).decode("utf-8")
    if p.endswith(".json") or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{p}: invalid JSON ({exc})") from exc
        if not isinstance(items, list):
            raise InputError(f"{p}: expected a JSON list of template strings")
    else:
        items = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    return validate_templates(items, p)


def fill(template: str, classname: str) -> str:
    """Insert a class name (str.replace, so braces in class names are harmless)."""
    return template.replace("{}", classname, 1)
