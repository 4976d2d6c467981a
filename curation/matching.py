"""MetaCLIP parity substring matching (ARCHITECTURE.md, "Matching").

A text matches entry ``e`` when ``entry_key(e, rule)`` is a substring of ``prepare(text, rule)``.
The normalisation (:func:`normalize`) pads the text with one space each side, wraps each of
``, . ; : ? ! ` `` in spaces and turns tab / newline / CR into spaces — nothing else (no case
folding, no Unicode normalisation), exactly as MetaCLIP's ``spacing()`` does, so ids agree with
MetaCLIP's own code. The rule (``curation.textrules``) decides the rest:

* ``metaclip1`` (default): the key is ``" " + e + " "``; the text is normalised as it is.
* ``metaclip2``: MetaCLIP 2's ``get_spaced_metadata`` — the key gets a leading space unless
  ``e[0]`` is unspaced (punctuation, CJK, Thai, ...) and a trailing space unless ``e[-1]`` is;
  the text is ``str.strip()``-ped first, as MetaCLIP 2's ``curate.py`` does before
  ``substr_match``. Its ``spacing()`` is MetaCLIP 1's, unchanged (same seven wrapped characters,
  tab / newline / CR to a space). See :func:`metaclip2_reading` for how its code was read.

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
from curation.textrules import DEFAULT_RULE, check_rule, is_unspaced

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


EMPTY_ENTRY_METACLIP2 = ("MetaCLIP 2 cannot space it (its get_spaced_metadata reads e[0]); remove it from "
                         "the metadata")


def prepare(text: str, rule: str = DEFAULT_RULE) -> str:
    """The text as the rule searches it: ``normalize(text)``, after ``str.strip()`` for metaclip2."""
    return normalize(text.strip() if rule == "metaclip2" else text)


def entry_key(entry: str, rule: str = DEFAULT_RULE) -> str:
    """The string an entry must be a substring of the prepared text as (see the module doc)."""
    if rule == "metaclip1":
        return f" {entry} "
    if not entry:
        raise InputError(f"the entry is the empty string: {EMPTY_ENTRY_METACLIP2}")
    left = "" if is_unspaced(entry[0]) else " "
    right = "" if is_unspaced(entry[-1]) else " "
    return left + entry + right


def never_matches(entry: str, rule: str = DEFAULT_RULE) -> bool:
    """Whether no text can ever match ``entry`` (exact, for lints and counts).

    A prepared text has no tab/LF/CR, and each wrapped character in it came with a space of its
    own on both sides. So a key never occurs when it holds tab/LF/CR, or a wrapped character next
    to a non-space inside the key, or two wrapped characters one space apart (they cannot share
    it). Any other key occurs in the text made of it with those own spaces removed, between two
    letters (``"x" + ... + "x"``, so no strip or padding gets in the way).
    """
    key = entry_key(entry, rule)
    if any(c in key for c in SPACED_CHARS):
        return True
    last = len(key) - 1
    for i, c in enumerate(key):
        if c not in WRAPPED_CHARS:
            continue
        if (i > 0 and key[i - 1] != " ") or (i < last and key[i + 1] != " "):
            return True
        if i + 2 <= last and key[i + 2] in WRAPPED_CHARS:  # "w w": one space for two owners
            return True
    return False


def metaclip2_reading() -> str:
    """How MetaCLIP 2's shipped code was read (documentation; returns this docstring).

    ``metaclip/curation/substr_matching.py`` (facebookresearch/MetaCLIP) as shipped cannot run:
    ``substr_match`` starts with ``if lang_id not in automaton_ml:``, but ``automaton_ml`` is a
    local variable of ``curate.py``'s ``count_per_shard`` (passed in as the ``automatons``
    argument), not a name in that module, so every call raises ``NameError``. Its branch then
    calls ``pickle.load`` and the module never imports ``pickle`` (a second NameError). The
    evident intent is a per-language automaton cache: ``if lang_id not in automatons:`` load
    ``{automaton_dir}/{lang_id}.pkl`` into ``automatons[lang_id]``, then match with it. (Its
    caller has the same kind of slip: ``lang_id = lid_langcode_to_metadata_langcode(lang_id)``
    reads ``lang_id`` before assigning it, an UnboundLocalError; it means the record's ``lang``.)

    None of that touches the rule, which is: keys from ``get_spaced_metadata`` (a space before
    ``e`` unless ``is_cjk_or_similar(e[0])``, after it unless ``is_cjk_or_similar(e[-1])``) in a
    pyahocorasick automaton; the caption ``txt.strip()``-ped by ``count_per_shard``, then
    ``spacing(txt)`` (identical to MetaCLIP 1's); the result the set of entry ids of every
    occurrence. Two deliberate differences, as for metaclip1: equal entries all match (MetaCLIP's
    ``add_word(key, (idx, key))`` keeps only the last id of a repeated key; its lists have no
    repeats) and ids come back sorted (MetaCLIP returns ``list(set)``). Choosing which language's
    entry list a caption is matched against (MetaCLIP 2's LID routing) is the caller's business.
    """
    return metaclip2_reading.__doc__ or ""


def matcher_fingerprint(entries: Sequence[str], rule: str = DEFAULT_RULE) -> str:
    """Fingerprint of a matcher: the entries' for metaclip1 (unchanged), entries + rule otherwise."""
    fp = entries_fingerprint(entries)
    if check_rule(rule) == "metaclip1":
        return fp
    return hashlib.sha256(f"{rule}\0{fp}".encode()).hexdigest()[:32]


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
    """Aho-Corasick matcher over the rule's entry keys; ids are positions in ``entries``.

    The reference: one automaton scan per caption, as MetaCLIP does. Equal keys share one
    automaton key whose value lists all their ids, so every id matches (a naive
    ``entry_key(e) in text`` check over the list agrees; MetaCLIP's lists have no repeats).
    """

    def __init__(self, entries: Sequence[str], rule: str = DEFAULT_RULE):
        self.rule = check_rule(rule)
        entries = list(entries)
        if not entries:
            raise InputError("metadata is empty: it must be a non-empty list of entry strings")
        for i, e in enumerate(entries):
            if not isinstance(e, str):
                raise InputError(f"metadata entry #{i} is {type(e).__name__}, expected a string: {e!r}")
        self.entries = entries
        self.fingerprint = matcher_fingerprint(entries, rule)
        ids_by_key: dict[str, list[int]] = {}
        if rule == "metaclip2" and "" in entries:
            raise InputError(f"metadata entry #{entries.index('')} is the empty string: {EMPTY_ENTRY_METACLIP2}")
        for i, e in enumerate(entries):
            ids_by_key.setdefault(entry_key(e, rule), []).append(i)
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
        return self.match_normalized(prepare(text, self.rule))

    def match_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        """``match`` over many texts; ``None`` gives ``[]`` (callers reject nulls separately)."""
        match, rule = self.match_normalized, self.rule
        return [match(prepare(t, rule)) if t is not None else [] for t in texts]


_CACHE: dict[str, Matcher] = {}
_CACHE_LOCK = threading.Lock()


def get_matcher(entries: Sequence[str], fingerprint: str | None = None, rule: str = DEFAULT_RULE) -> Matcher:
    """The process-wide Matcher for ``entries`` under ``rule`` (built on first use, then reused).

    ``fingerprint``, when given, is ``matcher_fingerprint(entries, rule)`` computed by the caller."""
    key = f"{check_rule(rule)}:{fingerprint or matcher_fingerprint(entries, rule)}"
    m = _CACHE.get(key)
    if m is None:
        with _CACHE_LOCK:
            m = _CACHE.get(key)
            if m is None:
                m = Matcher(entries, rule)
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
