"""Settings as dataclass fields: the one place a setting, its default and its documentation live.

A field made with :func:`setting` carries its doc text and its rules (choices, a minimum, finite
numbers). From the same fields come: validation with messages that name the exact key
(:func:`build`), the README's reference table (:func:`reference_rows`) and command-line flags
(:func:`add_flags` / :func:`flag_values`), so a default is never written twice.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Iterator, Sequence

from curation.errors import InputError


class SettingError(InputError):
    """A bad value; ``key`` is relative to the section that raised it (callers add the prefix)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def setting(default: Any, doc: str, *, flag: str | None = None, aliases: Sequence[str] = (),
            choices: Sequence[Any] | None = None, minimum: float | None = None, finite: bool = False,
            metavar: str | None = None) -> Any:
    """A dataclass field with its documentation and rules.

    ``flag``: the command-line name (default ``--field-name``); ``aliases``: more names for it;
    ``choices``: allowed values; ``minimum``: the smallest allowed number; ``finite``: reject
    ``inf``/``nan``."""
    meta = {"doc": doc, "flag": flag, "aliases": tuple(aliases), "choices": tuple(choices) if choices else None,
            "minimum": minimum, "finite": finite, "metavar": metavar}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A nested settings section (a dataclass) with its doc."""
    return field(default_factory=cls, metadata={"doc": doc})


# --------------------------------------------------------------------------- types
def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if _is_union(tp):
        for a in typing.get_args(tp):
            ok, v = coerce(value, a)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    if tp is list or origin is list:
        return isinstance(value, list), value
    return True, value


def type_name(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check_rules(f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(repr(c) for c in meta['choices'])}, got {value!r}"
    if isinstance(value, float) and meta.get("finite") and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if meta.get("minimum") is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return "must be a number, got nan"
        if value < meta["minimum"]:
            return f"must be >= {meta['minimum']:g}, got {value!r}"
    return None


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """A ``cls`` instance from a mapping; unknown keys, wrong types and broken rules are errors
    naming the dotted key. After the fields, the section's own ``validate()`` runs (if any)."""
    where = prefix or "<top level>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"config key `{where}` must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean `{(prefix + '.' if prefix else '') + close[0]}`?)" if close else ""
            raise InputError(f"unknown config key `{path}`{hint}; known keys here: {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, path)
            continue
        ok, coerced = coerce(value, tp)
        if not ok:
            raise InputError(f"config key `{path}` must be {type_name(tp)}, got {value!r} ({type(value).__name__})")
        problem = _check_rules(fields[key], coerced)
        if problem:
            raise InputError(f"config key `{path}` {problem}")
        kwargs[key] = coerced
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except SettingError as exc:
            key = f"{prefix}.{exc.key}" if prefix and exc.key else (exc.key or prefix)
            raise InputError(f"config key `{key}` {exc.message}") from None
    return obj


def set_path(data: dict, dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``dotted = "a.b.c"``, creating sections on the way."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise InputError(f"`{dotted}`: `{k}` is not a section")
    node[keys[-1]] = value


def walk_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, type)`` of every leaf setting, depth first in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from walk_fields(tp, key + ".")
        else:
            yield key, f, tp


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def reference_rows(cls: type) -> list[str]:
    """Markdown rows ``| key | type | default | meaning |`` of every setting."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, f, tp in walk_fields(cls):
        rows.append(f"| `{key}` | {type_name(tp)} | `{default_of(f)!r}` | {f.metadata.get('doc', '')} |")
    return rows


# --------------------------------------------------------------------------- flags
def _scalar(tp: Any) -> Any:
    """The non-None type of ``T | None``."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _parse_for(tp: Any, optional: bool):
    base = _scalar(tp)

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text
    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def flag_name(key: str, f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def add_flags(parser: argparse._ActionsContainer, cls: type, keys: Sequence[str] | None = None) -> dict[str, str]:
    """One flag per setting of ``cls`` (or per key in ``keys``), help = the setting's doc and default.

    Flags that are not given stay absent from the parsed namespace (``default=SUPPRESS``), so only
    what the user typed overrides a config file. Returns ``{flag: dotted key}``."""
    wanted = list(keys) if keys is not None else None
    found = {key: (f, tp) for key, f, tp in walk_fields(cls)}
    if wanted is not None:
        unknown = [k for k in wanted if k not in found]
        if unknown:
            raise KeyError(f"no such settings: {unknown}")
    mapping = {}
    for key in (wanted if wanted is not None else list(found)):
        f, tp = found[key]
        meta = f.metadata
        names = [flag_name(key, f), *meta.get("aliases", ())]
        default = default_of(f)
        doc = meta.get("doc", "")
        base = _scalar(tp)
        kw: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] = f"{doc} (default: {'on' if default else 'off'})"
        elif base is list or typing.get_origin(base) is list:
            kw["action"] = "append"
            kw["metavar"] = meta.get("metavar") or "VALUE"
            kw["help"] = f"{doc} (repeatable)"
        else:
            kw["type"] = _parse_for(tp, optional=_is_union(tp))
            if meta.get("choices"):
                kw["choices"] = list(meta["choices"])
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
            shown = "none" if default is None else default
            kw["help"] = f"{doc} (default: {shown})".replace("%", "%%")
        if "help" in kw and kw.get("action") is not None:
            kw["help"] = kw["help"].replace("%", "%%")
        parser.add_argument(*names, **kw)
        mapping[names[0]] = key
    return mapping


def flag_values(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """``{dotted key: value}`` of the flags the user gave."""
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}
