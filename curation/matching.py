"""MetaCLIP parity substring matching (ARCHITECTURE.md, "Matching").

A text matches entry ``e`` when ``" " + e + " "`` is a substring of ``normalize(text)``. The
normalisation pads the text with one space each side, wraps each of ``, . ; : ? ! ` `` in spaces
and turns tab / newline / CR into spaces — nothing else (no case folding, no Unicode
normalisation), exactly as MetaCLIP's ``spacing()`` does, so ids agree with MetaCLIP's own code.

``Matcher`` builds one pyahocorasick automaton over the space-padded entries. Building it costs
seconds for 500k entries, so ``get_matcher`` caches matchers per process, keyed by a fingerprint of
the entry list: Spark tasks in a reused Python worker find it already built.
"""
from __future__ import annotations

import hashlib
import json
import threading
from typing import Iterable, Sequence

import ahocorasick

from curation.errors import InputError

#: The seven characters MetaCLIP wraps in spaces. An entry containing one can never match.
WRAPPED_CHARS = ",.;:?!`"
#: Characters MetaCLIP turns into a plain space.
SPACED_CHARS = "\t\n\r"

_TRANSLATION = str.maketrans(
    {**{c: f" {c} " for c in WRAPPED_CHARS}, **{c: " " for c in SPACED_CHARS}}
)


def normalize(text: str) -> str:
    """MetaCLIP's ``spacing``: pad, wrap the seven characters, tab/newline/CR -> space."""
    return (" " + text + " ").translate(_TRANSLATION)


def entries_fingerprint(entries: Sequence[str]) -> str:
    """A stable fingerprint of an entry list (order matters: ids are positions)."""
    h = hashlib.sha256()
    h.update(str(len(entries)).encode())
    for e in entries:
        b = e.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:32]


class Matcher:
    """Aho-Corasick matcher over space-padded entries; ids are positions in ``entries``.

    Equal entries share one automaton key whose value lists all their ids, so every id matches
    (a naive ``" "+e+" " in text`` check over the list agrees; MetaCLIP's lists have no repeats).
    """

    def __init__(self, entries: Sequence[str]):
        entries = list(entries)
        if not entries:
            raise InputError("metadata is empty: it must be a non-empty list of entry strings")
        for i, e in enumerate(entries):
            if not isinstance(e, str):
                raise InputError(f"metadata entry #{i} is {type(e).__name__}, expected a string: {e!r}")
        self.entries = entries
        self.fingerprint = entries_fingerprint(entries)
        ids_by_key: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            ids_by_key.setdefault(f" {e} ", []).append(i)
        automaton = ahocorasick.Automaton()
        for key, ids in ids_by_key.items():
            automaton.add_word(key, tuple(ids))
        automaton.make_automaton()
        self._automaton = automaton
        self._has_shared_keys = len(ids_by_key) != len(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def match_normalized(self, normalized: str) -> list[int]:
        """Sorted unique ids of entries found in an already-normalised text."""
        found: set = set()
        for _, ids in self._automaton.iter(normalized):
            found.add(ids)
        if not found:
            return []
        if len(found) == 1:
            (ids,) = found
            return list(ids)
        out: set[int] = set()
        for ids in found:
            out.update(ids)
        return sorted(out)

    def match(self, text: str) -> list[int]:
        """Sorted unique ids of the entries that ``text`` contains (MetaCLIP semantics)."""
        return self.match_normalized(normalize(text))

    def match_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        """``match`` over many texts; ``None`` gives ``[]`` (callers reject nulls separately)."""
        match = self.match_normalized
        return [match(normalize(t)) if t is not None else [] for t in texts]


_CACHE: dict[str, Matcher] = {}
_CACHE_LOCK = threading.Lock()


def get_matcher(entries: Sequence[str], fingerprint: str | None = None) -> Matcher:
    """The process-wide Matcher for ``entries`` (built on first use, then reused)."""
    key = fingerprint or entries_fingerprint(entries)
    m = _CACHE.get(key)
    if m is None:
        with _CACHE_LOCK:
            m = _CACHE.get(key)
            if m is None:
                m = Matcher(entries)
                _CACHE.clear()  # one metadata per process at a time: bound memory
                _CACHE[key] = m
    return m


def load_metadata_json(path: str, storage: "Storage | None" = None) -> list[str]:
    """Read and validate a MetaCLIP-format ``metadata.json`` (a JSON list of non-empty strings)."""
    from curation.storage import Storage

    try:
        raw = (storage or Storage.from_env()).read_bytes(path)
    except FileNotFoundError as exc:
        raise InputError(f"metadata file not found: {path}") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid UTF-8 JSON ({exc}); expected a JSON list of strings") from exc
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of strings, got a JSON {type(data).__name__}")
    if not data:
        raise InputError(f"{path}: the metadata list is empty; it needs at least one entry")
    for i, e in enumerate(data):
        if not isinstance(e, str):
            raise InputError(f"{path}: entry #{i} is {type(e).__name__} ({e!r}); every entry must be a string")
        if e == "":
            raise InputError(f"{path}: entry #{i} is the empty string; remove it (ids are positions, "
                             "so re-number any downstream references)")
    return data
