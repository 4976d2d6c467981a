"""Fast batch matcher with exactly the ids of ``curation.matching.Matcher`` (ARCHITECTURE.md, "Matching").

Why it is exact: the normalised text ``N = normalize(t)`` starts and ends with a space, so
``N.split(" ")`` is ``[""] + T + [""]`` where ``T`` is the list of *interior tokens*. An occurrence
of ``" " + e + " "`` in ``N`` begins at some space and must line up space-for-space and
character-for-character, so it is exactly a run of consecutive interior tokens equal to
``e.split(" ")`` (empty tokens included: ``"a  b"`` is ``["a", "", "b"]``, the empty entry ``""``
is ``[""]``). This holds for *every* entry, so no substring fallback is needed:

* interior tokens never contain tab/newline/CR (they became spaces), and a wrapped character
  ``,.;:?!``` only ever appears as a one-character token of its own; an entry with a token that
  breaks either rule can never match and is left out of the index;
* everything else (double/leading/trailing spaces, empty entries, non-ASCII, NUL, lone
  surrogates in ``match_batch``) is handled by the same token rule.

Why it is fast: all work is whole-batch numpy over the UTF-8 bytes (rows joined by the byte
``0xFF``, which never occurs in UTF-8): classify bytes, cut tokens, look each token up in a
vocabulary hash table built once (exact: 64-bit key plus a word-by-word byte comparison), then
walk a trie of entry token-id sequences only from positions whose prefix is still alive. No
per-caption Python; input and output are Arrow arrays for Spark ``mapInArrow``. Repeated texts
in a batch (web alt-text repeats a lot) are matched once.

Rule ``metaclip2`` (``curation.textrules``): captions are stripped first, of exactly the
characters ``str.strip()`` strips (found by byte patterns, only in rows that start or end with
one). Entries padded on both sides go through the token path above, unchanged. An entry with an
unpadded side ("北京", "c++", "(dog)") can start or end inside a token, so it needs a real
substring search: the *character path*. The rows that may hold such a key are decoded to code
points, spaced exactly as :func:`curation.matching.normalize` does (pad, wrap, tab/LF/CR to
space), mapped to ids of the keys' alphabet, and a trie over the keys' id sequences is walked from
every position, one level at a time, only while a prefix is alive. Which rows: every non-space
character of a key also stands in the raw caption, so each key names one *anchor* character
(the rarest-looking: ASCII punctuation, then non-ASCII, then letters and digits) and only rows
holding an anchor's byte (the character for ASCII, its UTF-8 lead byte otherwise) are decoded.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import threading
import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import InputError
from curation.hashing import MASKS, PAD, mix, word_hashes, word_view
from curation.matching import EMPTY_ENTRY_METACLIP2, SPACED_CHARS, WRAPPED_CHARS, matcher_fingerprint
from curation.textrules import DEFAULT_RULE, check_rule, unspaced_mask

log = logging.getLogger(__name__)

_ROW_SEP = 0xFF  # never a byte of UTF-8 (nor of "surrogatepass" encodings)
_DEDUP_BELOW = 0.9  # match distinct texts only when at least 10% of a batch are repeats
#: Rows matched per pass. The temporaries take tens of bytes per text byte, so a bigger pass only
#: raises a worker's peak memory (and faults the fresh pages in again in every new worker) without
#: making a row any cheaper.
MATCH_BATCH_ROWS = 50_000
_U64 = np.uint64

# Byte classes: 0 token byte, 1 separator (space/tab/LF/CR), 2 wrapped char, 3 row separator.
_CLASS = np.zeros(256, dtype=np.uint8)
for _c in " " + SPACED_CHARS:
    _CLASS[ord(_c)] = 1
for _c in WRAPPED_CHARS:
    _CLASS[ord(_c)] = 2
_CLASS[_ROW_SEP] = 3


def _utf8_array(texts: Sequence[str | None]) -> pa.Array:
    """``large_binary`` array of the UTF-8 bytes; lone surrogates kept ("surrogatepass")."""
    try:
        return pa.array(texts, pa.large_string()).view(pa.large_binary())
    except (UnicodeEncodeError, pa.ArrowException):
        raw = [t.encode("utf-8", "surrogatepass") if t is not None else None for t in texts]
        return pa.array(raw, pa.large_binary())


def _table_bits(n: int) -> int:
    """Power-of-two table size with load factor <= 1/2."""
    return max(4, int(2 * max(n, 1) - 1).bit_length())


def _build_slots(hashes: np.ndarray, bits: int) -> np.ndarray:
    """Open-addressing (linear probing) table: slot -> index into ``hashes`` (-1 empty)."""
    size = 1 << bits
    table = np.full(size, -1, dtype=np.int64)
    slots = (hashes >> _U64(64 - bits)).astype(np.int64)
    pending = np.arange(len(hashes), dtype=np.int64)
    while pending.size:
        s = slots[pending]
        free = table[s] < 0
        cand, cs = pending[free], s[free]
        _, first = np.unique(cs, return_index=True)  # one winner per contested free slot
        table[cs[first]] = cand[first]
        placed = np.zeros(len(hashes), dtype=bool)
        placed[cand[first]] = True
        pending = pending[~placed[pending]]
        slots[pending] = (slots[pending] + 1) & (size - 1)
    return table


class _IntTable:
    """Exact hash map int64 key -> int32 value, vectorised lookups (trie edges)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        self.bits = _table_bits(len(keys))
        self.mask = (1 << self.bits) - 1
        slot_item = _build_slots(mix(keys.astype(np.uint64)), self.bits)
        occupied = slot_item >= 0
        self.keys = np.full(len(slot_item), -1, dtype=np.int64)
        self.values = np.full(len(slot_item), -1, dtype=np.int32)
        self.keys[occupied] = keys[slot_item[occupied]]
        self.values[occupied] = values[slot_item[occupied]]
        self.shift = _U64(64 - self.bits)

    @classmethod
    def from_arrays(cls, keys: np.ndarray, values: np.ndarray, bits: int) -> "_IntTable":
        """The table over slot arrays written by an earlier build (a compiled file's)."""
        self = cls.__new__(cls)
        self.bits, self.mask, self.shift = bits, (1 << bits) - 1, _U64(64 - bits)
        self.keys, self.values = keys, values
        return self

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Values for ``keys`` (all >= 0), -1 where absent."""
        out = np.full(len(keys), -1, dtype=np.int32)
        slots = (mix(keys.astype(np.uint64)) >> self.shift).astype(np.int64)
        idx = np.arange(len(keys))
        while idx.size:
            tk = self.keys[slots]
            hit = tk == keys
            out[idx[hit]] = self.values[slots[hit]]
            go_on = ~hit & (tk >= 0)
            idx, keys = idx[go_on], keys[go_on]
            slots = (slots[go_on] + 1) & self.mask
        return out


#: Version of the compiled-matcher file layout (bump when the tables change meaning).
COMPILED_FORMAT = 2
_MAGIC = b"METACURATE-FASTMATCH\n"
_ALIGN = 64
_VOCAB_ARRAYS = ("_vocab_padded", "_slot_vid", "_slot_len", "_slot_w0", "_vocab_starts", "_wrapped_vid")
_VOCAB_SCALARS = ("n_entries", "n_never_match", "_vocab_bits", "_vocab_size")
_CHAR_ARRAYS = ("_char_ids", "_route")

# Code-point classes for the character path (ASCII only; everything else is class 0).
_CP_CLASS = _CLASS[:128].copy()
# Cost of a character as a row-routing anchor: lower is rarer in captions (see the module doc).
_ANCHOR_COST = np.full(128, 1, dtype=np.int8)  # ASCII punctuation and controls
for _c in b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _ANCHOR_COST[_c] = 3
for _c in WRAPPED_CHARS:
    _ANCHOR_COST[ord(_c)] = 3
_NON_ASCII_COST = 2
_NO_ANCHOR = 9  # the space: added by spacing, so never proof of anything


def _data_start(head_len: int) -> int:
    """Offset of the first array in a compiled file: magic, 8-byte header length, header, aligned."""
    return -(-(len(_MAGIC) + 8 + head_len) // _ALIGN) * _ALIGN


def _code_points(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code points as int64, offsets) of ``strings`` (lone surrogates kept as their code point)."""
    lens = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    cps = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
    return cps, offsets


# What str.strip() removes, as UTF-8 byte patterns: one byte, or a lead byte then 1-2 more (no
# whitespace character lies above U+FFFF; tested). Computed from Python so the two never differ.
_WS_CHARS = [chr(c) for c in range(0x10000) if chr(c).isspace()]
_WS_ASCII = np.zeros(256, dtype=bool)
_WS_LEAD = np.zeros(256, dtype=bool)
_WS_2 = np.array([int.from_bytes(c.encode(), "big") for c in _WS_CHARS if len(c.encode()) == 2], np.int64)
_WS_3 = np.array([int.from_bytes(c.encode(), "big") for c in _WS_CHARS if len(c.encode()) == 3], np.int64)
for _c in _WS_CHARS:
    (_WS_ASCII if len(_c.encode()) == 1 else _WS_LEAD)[_c.encode()[0]] = True


def _ws_len_at(padded: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Byte length of the whitespace character starting at each of ``pos`` (0: none there).

    ``padded`` has 2 spare bytes at the end. A pattern can only match at a character start: its
    first byte is ASCII or a lead byte, never a continuation byte."""
    b0 = padded[pos]
    out = _WS_ASCII[b0].astype(np.int8)
    multi = np.flatnonzero(_WS_LEAD[b0])
    if multi.size:
        p = pos[multi]
        two = (padded[p].astype(np.int64) << 8) | padded[p + 1]
        three = (two << 8) | padded[p + 2]
        out[multi] = np.where(np.isin(two, _WS_2), 2, np.where(np.isin(three, _WS_3), 3, 0))
    return out


def _strip_rows(data: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``str.strip()`` of every row ``data[rel[i]:rel[i+1]]``: (new data, new row offsets).

    Only rows starting or ending with whitespace are looked into; a batch without any is returned
    as it is."""
    starts, ends = rel[:-1], rel[1:]
    rows = np.flatnonzero(ends > starts)
    if not rows.size:
        return data, rel
    padded = np.concatenate([data, np.zeros(2, np.uint8)])
    s, e = starts[rows], ends[rows]
    trail = _ws_len_at(padded, e - 1) == 1
    for k in (2, 3):
        ok = np.flatnonzero(e - k >= s)
        trail[ok] |= _ws_len_at(padded, e[ok] - k) == k
    rows = rows[(_ws_len_at(padded, s) > 0) | trail]
    if not rows.size:
        return data, rel
    s, lens = starts[rows], ends[rows] - starts[rows]
    g = _gather_ranges(data, s, lens)
    wl = _ws_len_at(np.concatenate([g, np.zeros(2, np.uint8)]), np.arange(len(g)))
    covered = wl > 0
    covered[np.flatnonzero(wl >= 2) + 1] = True
    covered[np.flatnonzero(wl == 3) + 2] = True
    g_starts = np.cumsum(lens) - lens
    idx = np.arange(len(g), dtype=np.int64)
    first = np.minimum.reduceat(np.where(covered, len(g), idx), g_starts) - g_starts
    last = np.maximum.reduceat(np.where(covered, -1, idx), g_starts) - g_starts
    blank = first >= lens  # whitespace only: the row becomes empty
    first[blank], last[blank] = lens[blank], lens[blank] - 1
    # Remove [start, start + first) and [start + last + 1, end) of each of those rows.
    cut_starts = np.concatenate([s, s + last + 1])
    cut_lens = np.concatenate([first, lens - last - 1])
    removed = np.zeros(len(rel) - 1, dtype=np.int64)
    removed[rows] = first + lens - last - 1
    cut = np.repeat(cut_starts - (np.cumsum(cut_lens) - cut_lens), cut_lens) + np.arange(int(cut_lens.sum()))
    new_rel = rel.copy()
    new_rel[1:] -= np.cumsum(removed)
    return np.delete(data, cut), new_rel


def _gather_ranges(data: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The byte ranges ``[start, start + len)`` of ``data`` back to back."""
    total = int(lens.sum())
    out_starts = np.cumsum(lens) - lens
    return data[np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lens)]


def _decode_utf8(b: np.ndarray, row_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code point per character, index of each row's first character) of UTF-8 rows back to back.

    ``row_starts`` are the rows' first bytes (plus the end); each counts as a character start so
    that malformed bytes can never join two rows (their code points are then unspecified; the
    match stage rejects invalid UTF-8 before matching). Surrogatepass bytes decode to the lone
    surrogate, as Python sees it."""
    lead = (b & 0xC0) != 0x80
    lead[row_starts[:-1][row_starts[:-1] < len(b)]] = True
    li = np.flatnonzero(lead)
    bp = np.concatenate([b, np.zeros(3, np.uint8)]).astype(np.int32)
    b0 = bp[li]
    cp = b0.copy()
    multi = np.flatnonzero(b0 >= 0x80)
    if multi.size:
        m0, mi = b0[multi], li[multi]
        b1, b2, b3 = bp[mi + 1] & 0x3F, bp[mi + 2] & 0x3F, bp[mi + 3] & 0x3F
        two = ((m0 & 0x1F) << 6) | b1
        three = ((m0 & 0x0F) << 12) | (b1 << 6) | b2
        four = ((m0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
        cp[multi] = np.where(m0 < 0xE0, two, np.where(m0 < 0xF0, three, four))
    return cp, np.searchsorted(li, row_starts)


class _Trie:
    """Trie over symbol-id sequences (token ids or character ids), walked vectorised.

    Arrays indexed by node end with a -1/False sentinel so that index -1 is harmless; symbol -1
    (unknown, or the end of a row) is never an edge, so a walk stops there."""

    ARRAYS = ("root_child", "has_children", "node_key", "key_offsets", "key_ids_flat", "key_first_id")

    @classmethod
    def build(cls, symbols: np.ndarray, offsets: np.ndarray, rows: np.ndarray, ids: np.ndarray,
              alphabet: int) -> "_Trie":
        """The trie of the sequences ``symbols[offsets[r]:offsets[r+1]]`` for ``r`` in ``rows``,
        whose terminal nodes give the entry ids ``ids`` (aligned with ``rows``)."""
        self = cls()
        self.alphabet = v = int(alphabet)
        first_tok = offsets[rows]
        n_tok = offsets[rows + 1] - first_tok
        root_tokens, node = np.unique(symbols[first_tok], return_inverse=True)
        node = node.reshape(-1)
        self.root_child = np.full(v + 1, -1, dtype=np.int32)  # index -1 (unknown symbol) -> -1
        self.root_child[root_tokens] = np.arange(len(root_tokens), dtype=np.int32)
        n_nodes = len(root_tokens)
        parents: list[np.ndarray] = []
        edge_keys: list[np.ndarray] = []
        edge_vals: list[np.ndarray] = []
        level = 1
        active = np.flatnonzero(n_tok > 1)
        while active.size:
            parent = node[active]
            keys = parent * v + symbols[first_tok[active] + level]
            uniq, inv = np.unique(keys, return_inverse=True)
            parents.append(parent)
            edge_keys.append(uniq)
            edge_vals.append(np.arange(n_nodes, n_nodes + len(uniq), dtype=np.int32))
            node[active] = n_nodes + inv.reshape(-1)
            n_nodes += len(uniq)
            level += 1
            active = active[n_tok[active] > level]
        self.has_children = np.zeros(n_nodes + 1, dtype=bool)
        for parent in parents:
            self.has_children[parent] = True
        self.edges = _IntTable(np.concatenate(edge_keys) if edge_keys else np.zeros(0, np.int64),
                               np.concatenate(edge_vals) if edge_vals else np.zeros(0, np.int32))
        # Terminal nodes: one key per distinct sequence; equal entries share a key.
        terminal, key_of_entry = np.unique(node, return_inverse=True)
        key_of_entry = key_of_entry.reshape(-1)
        self.node_key = np.full(n_nodes + 1, -1, dtype=np.int32)
        self.node_key[terminal] = np.arange(len(terminal), dtype=np.int32)
        order = np.argsort(key_of_entry, kind="stable")
        counts = np.bincount(key_of_entry, minlength=len(terminal))
        self.key_offsets = np.zeros(len(terminal) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.key_offsets[1:])
        self.key_ids_flat = ids[order].astype(np.int32)
        self.key_first_id = self.key_ids_flat[self.key_offsets[:-1]]
        self.shared_keys = bool((counts > 1).any())
        return self

    @property
    def empty(self) -> bool:
        return len(self.key_first_id) == 0

    @property
    def n_nodes(self) -> int:
        return len(self.node_key) - 1

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {f"{prefix}.{name}": getattr(self, name) for name in self.ARRAYS}
        arrays[f"{prefix}.edges.keys"], arrays[f"{prefix}.edges.values"] = self.edges.keys, self.edges.values
        return arrays, {"alphabet": self.alphabet, "shared_keys": self.shared_keys, "edges_bits": self.edges.bits}

    @classmethod
    def from_state(cls, prefix: str, arrays: dict[str, np.ndarray], scalars: dict) -> "_Trie":
        self = cls()
        for name in cls.ARRAYS:
            setattr(self, name, arrays[f"{prefix}.{name}"])
        self.alphabet, self.shared_keys = int(scalars["alphabet"]), bool(scalars["shared_keys"])
        self.edges = _IntTable.from_arrays(arrays[f"{prefix}.edges.keys"], arrays[f"{prefix}.edges.values"],
                                           int(scalars["edges_bits"]))
        return self

    def walk(self, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start position, key) of every occurrence of a sequence in ``tok``, which must end in -1."""
        out_pos: list[np.ndarray] = []
        out_key: list[np.ndarray] = []

        def emit(p: np.ndarray, nodes: np.ndarray) -> None:
            key = self.node_key[nodes]
            m = key >= 0
            out_pos.append(p[m])
            out_key.append(key[m])

        nodes = self.root_child[tok]
        p = np.flatnonzero(nodes >= 0)
        nodes = nodes[p]
        emit(p, nodes)
        keep = self.has_children[nodes]
        p, nodes = p[keep], nodes[keep]
        k = 1
        v = self.alphabet
        while p.size:
            nt = tok[p + k]
            ok = nt >= 0
            p, nodes, nt = p[ok], nodes[ok], nt[ok]
            child = self.edges.lookup(nodes.astype(np.int64) * v + nt)
            ok = child >= 0
            p, nodes = p[ok], child[ok]
            emit(p, nodes)
            keep = self.has_children[nodes]
            p, nodes = p[keep], nodes[keep]
            k += 1
        return np.concatenate(out_pos), np.concatenate(out_key)

    def entry_ids(self, rows: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, entry id) pairs for matched keys: a key shared by equal entries gives all their ids."""
        if not self.shared_keys:
            return rows, self.key_first_id[key]
        counts = self.key_offsets[key + 1] - self.key_offsets[key]
        rows = np.repeat(rows, counts)
        first = np.repeat(self.key_offsets[key] - np.cumsum(counts) + counts, counts)
        return rows, self.key_ids_flat[first + np.arange(len(rows))]


class FastMatcher:
    """Vectorised MetaCLIP-parity matcher; ids are positions in ``entries`` (duplicates all match).

    ``rule`` is ``"metaclip1"`` (default) or ``"metaclip2"`` (``curation.textrules``); it is part
    of the fingerprint and of the compiled file."""

    def __init__(self, entries: Sequence[str], fingerprint: str | None = None, rule: str = DEFAULT_RULE):
        t0 = time.perf_counter()
        self.rule = check_rule(rule)
        self.entries = list(entries)
        if not self.entries:
            raise InputError("metadata is empty: it must be a non-empty list of entry strings")
        not_str = [i for i, e in enumerate(self.entries) if not isinstance(e, str)]
        if not_str:
            e = self.entries[not_str[0]]
            raise InputError(f"metadata entry #{not_str[0]} is {type(e).__name__}, expected a string: {e!r}")
        self._fingerprint = fingerprint
        self.n_entries = len(self.entries)

        if self.rule == "metaclip2":
            empty = [i for i, e in enumerate(self.entries) if not e]
            if empty:
                raise InputError(f"metadata entry #{empty[0]} is the empty string: {EMPTY_ENTRY_METACLIP2}")
            first = np.fromiter((ord(e[0]) for e in self.entries), dtype=np.int64, count=self.n_entries)
            last = np.fromiter((ord(e[-1]) for e in self.entries), dtype=np.int64, count=self.n_entries)
            pad_left, pad_right = ~unspaced_mask(first), ~unspaced_mask(last)
            token_ids = np.flatnonzero(pad_left & pad_right)
        else:
            pad_left = pad_right = None
            token_ids = np.arange(self.n_entries)

        arr = _utf8_array(self.entries)
        if len(token_ids) < self.n_entries:
            arr = arr.take(pa.array(token_ids))
        n_tok_entries = len(token_ids)
        _, off_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(off_buf, np.int64)[arr.offset: arr.offset + n_tok_entries + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        data = data[offsets[0]: offsets[-1]]
        valid = ~self._never_matches(data, offsets - offsets[0])
        self.n_never_match = int((~valid).sum())
        # Exact tokenisation and vocabulary with Arrow's C++ kernels (binary: surrogates are fine).
        split = pc.split_pattern(arr, pattern=" ")
        encoded = pc.dictionary_encode(split.flatten())
        self._build_vocab(encoded.dictionary)
        tokens = encoded.indices.to_numpy().astype(np.int64)
        token_offsets = split.offsets.to_numpy().astype(np.int64)
        rows = np.flatnonzero(valid)
        self._tokens = _Trie.build(tokens, token_offsets, rows, token_ids[rows], self._vocab_size)
        del arr, split, encoded, tokens, token_offsets, data, offsets
        self._chars: _Trie | None = None
        if pad_left is not None and n_tok_entries < self.n_entries:
            self._build_char_path(np.flatnonzero(~(pad_left & pad_right)), pad_left, pad_right)
        pa.default_memory_pool().release_unused()  # hand the build's scratch memory back
        self.build_seconds = time.perf_counter() - t0
        log.info("FastMatcher (%s): %d entries (%d can never match, %d by characters), %d tokens, "
                 "%d trie nodes, built in %.2fs", self.rule, self.n_entries, self.n_never_match,
                 0 if self._chars is None else len(self._chars.key_ids_flat), self._vocab_size,
                 self._tokens.n_nodes + (0 if self._chars is None else self._chars.n_nodes), self.build_seconds)

    @property
    def fingerprint(self) -> str:
        """``matcher_fingerprint(entries, rule)``, computed on first use (~1 s for 500k entries)."""
        if self._fingerprint is None:
            self._fingerprint = matcher_fingerprint(self.entries, self.rule)
        return self._fingerprint

    # ------------------------------------------------------------------ build
    @staticmethod
    def _never_matches(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Entries that can never match: tab/LF/CR anywhere, or a wrapped char glued to a non-space.

        Tab/LF/CR never survive normalisation; a wrapped character is always a token of its own.
        """
        n = len(offsets) - 1
        cls = _CLASS[data]
        boundary = np.zeros(len(data) + 1, dtype=bool)
        boundary[offsets] = True  # entry starts (and the end of the last entry)
        bad = cls == 1
        bad &= data != 32
        w = np.flatnonzero(cls == 2)
        prev_glued = ~boundary[w] & (data[np.maximum(w - 1, 0)] != 32)
        next_glued = ~boundary[w + 1] & (data[np.minimum(w + 1, len(data) - 1)] != 32)
        bad[w[prev_glued | next_glued]] = True
        out = np.zeros(n, dtype=bool)
        out[np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1] = True
        return out

    def _build_vocab(self, vocab: pa.Array) -> None:
        """Hash table over the distinct entry tokens (Arrow binary array: one token per slot)."""
        _, off_buf, data_buf = vocab.buffers()
        offsets = np.frombuffer(off_buf, np.int64)[vocab.offset: vocab.offset + len(vocab) + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        self._vocab_padded = np.concatenate([data[offsets[0]: offsets[-1]], np.zeros(PAD, np.uint8)])
        starts = offsets[:-1] - offsets[0]
        lens = np.diff(offsets)
        hashes, w0 = word_hashes(word_view(self._vocab_padded), starts, lens)
        self._vocab_bits = _table_bits(len(vocab))
        slot_item = _build_slots(hashes, self._vocab_bits)
        occupied = slot_item >= 0
        # Slot-aligned copies of each token's exact short key (length, first word): one gather each.
        self._slot_vid = slot_item.astype(np.int32)
        self._slot_len = np.full(len(slot_item), -1, dtype=np.int64)  # -1: empty, matches no token
        self._slot_len[occupied] = lens[slot_item[occupied]]
        self._slot_w0 = np.zeros(len(slot_item), dtype=np.uint64)
        self._slot_w0[occupied] = w0[slot_item[occupied]]
        self._vocab_starts = starts
        self._vocab_size = len(vocab)
        # A wrapped character is always its own token in the text: look it up by byte, not hash.
        self._wrapped_vid = np.full(256, -1, dtype=np.int32)
        single = np.flatnonzero(lens == 1)
        for vid, byte in zip(single.tolist(), self._vocab_padded[starts[single]].tolist()):
            if _CLASS[byte] == 2:
                self._wrapped_vid[byte] = vid

    def _build_char_path(self, ids: np.ndarray, pad_left: np.ndarray, pad_right: np.ndarray) -> None:
        """Character trie, alphabet table and routing bytes for the entries ``ids`` (metaclip2 keys
        with an unpadded side)."""
        keys = [(" " if pad_left[i] else "") + self.entries[i] + (" " if pad_right[i] else "") for i in ids.tolist()]
        cps, offsets = _code_points(keys)
        never = self._never_matches_keys(cps, offsets)
        self.n_never_match += int(never.sum())
        rows = np.flatnonzero(~never)
        alphabet, symbols = np.unique(cps, return_inverse=True)
        symbols = symbols.reshape(-1)
        # Code point -> alphabet id; one slot past the largest code point holds -1 for all others.
        self._char_ids = np.full(int(alphabet[-1]) + 2, -1, dtype=np.int32)
        self._char_ids[alphabet] = np.arange(len(alphabet), dtype=np.int32)
        self._chars = _Trie.build(symbols, offsets, rows, ids[rows], len(alphabet))
        # Routing: one anchor per indexed key, its cheapest non-space character.
        cost = np.where(cps < 128, _ANCHOR_COST[np.minimum(cps, 127)], _NON_ASCII_COST).astype(np.int8)
        cost[cps == 32] = _NO_ANCHOR
        key_of_cp = np.repeat(np.arange(len(keys)), np.diff(offsets))
        take = np.isin(key_of_cp, rows)
        order = np.lexsort((cost[take], key_of_cp[take]))
        firsts = np.unique(key_of_cp[take][order], return_index=True)[1]
        anchors = np.unique(cps[take][order][firsts])
        self._route = np.zeros(256, dtype=bool)
        self._route[_lead_bytes(anchors)] = True

    @staticmethod
    def _never_matches_keys(cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``curation.matching.never_matches`` over character-path keys (code points, exact)."""
        n = len(offsets) - 1
        cls = np.where(cps < 128, _CP_CLASS[np.minimum(cps, 127)], 0)
        first = np.zeros(len(cps) + 1, dtype=bool)
        first[offsets[:-1]] = True
        last = np.zeros(len(cps) + 1, dtype=bool)
        last[offsets[1:] - 1] = True
        bad = (cls == 1) & (cps != 32)
        w = np.flatnonzero(cls == 2)
        sp = np.concatenate([cps == 32, [False, False]])
        glued = (~first[w] & ~sp[w - 1]) | (~last[w] & ~sp[w + 1])
        w_next = np.concatenate([cls == 2, [False, False]])
        shared = ~last[w] & ~last[w + 1] & sp[w + 1] & w_next[w + 2]  # "w w": one space, two owners
        bad[w[glued | shared]] = True
        out = np.zeros(n, dtype=bool)
        out[np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1] = True
        return out

    def __len__(self) -> int:
        return self.n_entries

    # ------------------------------------------------------------------ compiled form
    def _state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {name: getattr(self, name) for name in _VOCAB_ARRAYS}
        tok_arrays, tok_scalars = self._tokens.state("tokens")
        arrays.update(tok_arrays)
        scalars = {name: getattr(self, name) for name in _VOCAB_SCALARS}
        scalars["tokens"] = tok_scalars
        if self._chars is not None:
            chr_arrays, chr_scalars = self._chars.state("chars")
            arrays.update(chr_arrays)
            arrays.update({name: getattr(self, name) for name in _CHAR_ARRAYS})
            scalars["chars"] = chr_scalars
        return arrays, scalars

    def save(self, path: str) -> str:
        """Write the built matcher as one file that :meth:`load` maps into memory (atomic rename).

        Why: building from 500k entries costs ~1 s and ~0.5 GB of scratch memory in *every* worker
        process; loading the compiled file costs milliseconds, and workers on one host share its
        pages (one copy of the tables in RAM and in the shared CPU cache)."""
        arrays, scalars = self._state()
        header: dict = {"format": COMPILED_FORMAT, "rule": self.rule, "fingerprint": self.fingerprint,
                        "scalars": scalars, "arrays": {}}
        offset = 0
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            header["arrays"][name] = [arr.dtype.str, list(arr.shape), offset]
            offset += -(-arr.nbytes // _ALIGN) * _ALIGN
        head = json.dumps(header, sort_keys=True).encode()
        data_start = _data_start(len(head))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(_MAGIC + len(head).to_bytes(8, "little") + head)
            for name, arr in arrays.items():
                f.seek(data_start + header["arrays"][name][2])
                f.write(np.ascontiguousarray(arr).tobytes())
            f.truncate(data_start + offset)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str, fingerprint: str | None = None, rule: str | None = None) -> "FastMatcher":
        """A matcher over the (read-only, memory-mapped) arrays of a file written by :meth:`save`.

        ``fingerprint`` and ``rule``, when given, must equal the file's: a stale compiled file, or
        one compiled for another rule, is an error, never a silent mismatch. ``entries`` is not kept
        (``None``); matching needs only the tables."""
        with open(path, "rb") as f:
            magic = f.read(len(_MAGIC))
            if magic != _MAGIC:
                raise InputError(f"{path} is not a compiled metacurate matcher (bad magic {magic!r})")
            head_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(head_len))
            if header.get("format") != COMPILED_FORMAT:
                raise InputError(f"{path}: compiled matcher format {header.get('format')} is not "
                                 f"{COMPILED_FORMAT}; rebuild it")
            if rule is not None and header["rule"] != check_rule(rule):
                raise InputError(f"{path} was compiled for matching rule {header['rule']!r}, not {rule!r}; "
                                 f"rebuild it with rule={rule!r}")
            if fingerprint is not None and header["fingerprint"] != fingerprint:
                raise InputError(f"{path} was compiled from other metadata (fingerprint "
                                 f"{header['fingerprint']}, expected {fingerprint}); rebuild it")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data_start = _data_start(head_len)
        self = cls.__new__(cls)
        self.entries = None
        self.rule = header["rule"]
        self._fingerprint = header["fingerprint"]
        self.build_seconds = 0.0
        scalars = header["scalars"]
        for name in _VOCAB_SCALARS:
            setattr(self, name, scalars[name])
        arrays = {}
        for name, (dtype, shape, offset) in header["arrays"].items():
            dt = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            arrays[name] = np.frombuffer(mm, dtype=dt, count=count, offset=data_start + offset).reshape(shape)
        for name in _VOCAB_ARRAYS:
            setattr(self, name, arrays[name])
        self._tokens = _Trie.from_state("tokens", arrays, scalars["tokens"])
        self._chars = None
        if "chars" in scalars:
            self._chars = _Trie.from_state("chars", arrays, scalars["chars"])
            for name in _CHAR_ARRAYS:
                setattr(self, name, arrays[name])
        self._mmap = mm  # keeps the mapping alive as long as the matcher
        return self

    # ------------------------------------------------------------------ lookups
    def _lookup_tokens(self, words: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Vocabulary id of each text token (-1 if not an entry token); exact, not probabilistic.

        The hash only picks where to probe; a hit needs equal length and equal bytes (the first
        word compared in the slot, the rest of a long token word by word).
        """
        n = len(starts)
        out = np.full(n, -1, dtype=np.int32)
        if n == 0:
            return out
        h, w0 = word_hashes(words, starts, lens)
        mask = (1 << self._vocab_bits) - 1
        slots = (h >> _U64(64 - self._vocab_bits)).astype(np.int64)
        del h
        idx = np.arange(n)
        vwords = word_view(self._vocab_padded)
        while True:
            # w0/lens/starts/slots stay aligned with ``idx`` (the still-unresolved tokens).
            vid = self._slot_vid[slots]
            hit = (self._slot_w0[slots] == w0) & (self._slot_len[slots] == lens)
            sub = np.flatnonzero(hit & (lens > 8))
            j = 8
            while sub.size:
                rest = lens[sub] - j
                m = MASKS[np.minimum(rest, 8)]
                eq = (vwords[self._vocab_starts[vid[sub]] + j] & m) == (words[starts[sub] + j] & m)
                hit[sub[~eq]] = False
                sub = sub[eq & (rest > 8)]
                j += 8
            out[idx[hit]] = vid[hit]
            go_on = np.flatnonzero(~hit & (vid >= 0))  # slot holds another token: probe the next
            if not go_on.size:
                return out
            idx, w0, lens, starts = idx[go_on], w0[go_on], lens[go_on], starts[go_on]
            slots = (slots[go_on] + 1) & mask

    # ------------------------------------------------------------------ core
    def _match_buffer(self, padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, entry_ids) of the token path, unsorted, for rows each ended by a 0xFF byte.

        ``padded`` is the joined UTF-8 bytes followed by ``PAD`` zero bytes.
        """
        stream = padded[: len(padded) - PAD]
        # Every separator / wrapped char / row end closes a token. All of them are < 64, ` or
        # 0xFF; pre-filter with cheap comparisons, then classify the few candidates by table.
        maybe = stream < 64
        maybe |= stream == 96
        maybe |= stream == _ROW_SEP
        cand = np.flatnonzero(maybe)
        del maybe
        cand_cls = _CLASS[stream[cand]]
        is_event = cand_cls != 0
        ev, ev_cls = cand[is_event], cand_cls[is_event]
        starts = np.empty(len(ev), dtype=np.int64)
        starts[:1] = 0
        starts[1:] = ev[:-1] + 1
        lens = ev - starts
        vid = self._lookup_tokens(word_view(padded), starts, lens)
        # Token stream: each event contributes the run before it, then (wrapped char) its own
        # token or (row end) a -1 barrier, so no entry can span two rows.
        extra = ev_cls >= 2
        pos = np.arange(len(ev), dtype=np.int64)
        pos[1:] += np.cumsum(extra[:-1])
        tok = np.full(len(ev) + int(extra.sum()) + 1, -1, dtype=np.int32)
        tok[pos] = vid
        wrapped = ev_cls == 2
        tok[pos[wrapped] + 1] = self._wrapped_vid[stream[ev[wrapped]]]
        barriers = pos[ev_cls == 3] + 1
        p, key = self._tokens.walk(tok)
        return self._tokens.entry_ids(np.searchsorted(barriers, p), key)  # barriers before p = row

    def _match_chars(self, data: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, entry_ids) of the character path, unsorted, for the rows ``data[rel[i]:rel[i+1]]``
        (already stripped)."""
        nonempty = np.flatnonzero(rel[1:] > rel[:-1])
        if not nonempty.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        # Empty rows are left out, so each segment runs exactly to the end of its row.
        rows = nonempty[np.logical_or.reduceat(self._route[data], rel[nonempty])]
        if not rows.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        lens = rel[rows + 1] - rel[rows]
        b = data if len(rows) == len(rel) - 1 else _gather_ranges(data, rel[rows], lens)
        row_starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=row_starts[1:])
        cp, char_starts = _decode_utf8(b, row_starts)
        # The prepared text in alphabet ids: per row " " + chars (wrapped ones as " c ", tab/LF/CR
        # as " ") + " ", then a -1 barrier. Unfilled slots are the spacing's spaces.
        table = self._char_ids
        cid = table[np.minimum(cp, len(table) - 1)]
        space = int(table[32]) if len(table) > 32 else -1
        ascii_at = np.flatnonzero(cp < 128)  # only ASCII characters are spaced or wrapped
        ascii_cls = _CP_CLASS[cp[ascii_at]]
        cid[ascii_at[ascii_cls == 1]] = space
        wrapped_at = ascii_at[ascii_cls == 2]
        # Slot of each character: its index, plus 3 per earlier row (" ", " ", barrier) and the
        # leading " ", plus 2 per earlier wrapped character and 1 if it is wrapped itself.
        n_rows = len(rows)
        per_row = np.diff(char_starts)
        shift = np.repeat(np.arange(1, 3 * n_rows + 1, 3, dtype=np.int64), per_row)
        if wrapped_at.size:
            extra = np.zeros(len(cp) + 1, dtype=np.int64)
            extra[wrapped_at] += 1
            extra[wrapped_at + 1] += 1
            shift += np.cumsum(extra[:-1])
        stream = np.full(len(cp) + 3 * n_rows + 2 * len(wrapped_at), space, dtype=np.int32)
        slot = np.arange(len(cp), dtype=np.int64)
        slot += shift
        stream[slot] = cid
        ends = np.cumsum(per_row + 3) + 2 * np.searchsorted(wrapped_at, char_starts[1:])
        stream[ends - 1] = -1  # barriers
        p, key = self._chars.walk(stream)
        return self._chars.entry_ids(rows[np.searchsorted(ends, p, side="right")], key)

    @staticmethod
    def _offsets(rows: np.ndarray, n_rows: int) -> np.ndarray:
        offsets = np.zeros(n_rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=offsets[1:])
        return offsets

    def _match_string_array(self, arr: pa.Array, dedup: bool) -> pa.ListArray:
        n = len(arr)
        if n == 0:
            return pa.ListArray.from_arrays(pa.array([0], pa.int32()), pa.array([], pa.int32()))
        if pa.types.is_null(arr.type):
            return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int32()))
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = arr.cast(pa.large_string())
        # Web alt-text repeats a lot ("image", product names): match each distinct text once.
        if dedup:
            encoded = pc.dictionary_encode(arr, null_encoding="encode")
            if len(encoded.dictionary) <= _DEDUP_BELOW * n:
                return self._match_distinct(encoded.dictionary).take(encoded.indices)
        return self._match_distinct(arr)

    def _match_distinct(self, arr: pa.Array) -> pa.ListArray:
        n = len(arr)
        off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        _, off_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(off_buf, dtype=off_type)[arr.offset: arr.offset + n + 1].astype(np.int64)
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        data = data[offsets[0]: offsets[-1]]
        rel = offsets - offsets[0]
        if self.rule == "metaclip2":
            data, rel = _strip_rows(data, rel)  # MetaCLIP 2 matches txt.strip()
        found = []
        if not self._tokens.empty:
            joined = np.insert(data, rel[1:], np.uint8(_ROW_SEP))
            found.append(self._match_buffer(np.concatenate([joined, np.zeros(PAD, np.uint8)])))
            del joined
        if self._chars is not None and not self._chars.empty:
            found.append(self._match_chars(data, rel))
        if not found:
            return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int32()))
        rows = np.concatenate([r for r, _ in found]).astype(np.int64)
        eids = np.concatenate([e for _, e in found])
        combined = np.sort(rows * self.n_entries + eids)
        if len(combined) > 1:  # np.unique is hash-based (unsorted, slower) in numpy 2.x
            combined = combined[np.concatenate([[True], combined[1:] != combined[:-1]])]
        rows = combined // self.n_entries
        eids = (combined - rows * self.n_entries).astype(np.int32)
        if arr.null_count:
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            keep = valid[rows]
            rows, eids = rows[keep], eids[keep]
        return pa.ListArray.from_arrays(pa.array(self._offsets(rows, n)), pa.array(eids, pa.int32()))

    # ------------------------------------------------------------------ public API
    def match_arrow(self, texts: pa.Array | pa.ChunkedArray, dedup: bool = True) -> pa.ListArray:
        """Sorted unique ids per row as ``list<int32>``; a null text gives an empty list.

        ``dedup`` matches each distinct text of a batch once (same result; off to measure).
        """
        chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
        parts = [self._match_string_array(c.slice(i, MATCH_BATCH_ROWS), dedup)
                 for c in chunks for i in range(0, len(c), MATCH_BATCH_ROWS)]
        if not parts:
            return self._match_string_array(pa.array([], pa.string()), dedup)
        return pa.concat_arrays(parts) if len(parts) > 1 else parts[0]

    def match_batch(self, texts: Sequence[str | None]) -> list[list[int]]:
        """Like ``Matcher.match_batch``: ``None`` gives ``[]``; lone surrogates are fine."""
        # Bytes as a string array without UTF-8 validation: surrogatepass bytes pass through.
        lists = self.match_arrow(_utf8_array(list(texts)).view(pa.large_string()))
        offsets = lists.offsets.to_numpy().tolist()
        values = lists.values.to_numpy().tolist()
        return [values[offsets[i]: offsets[i + 1]] for i in range(len(lists))]

    def match(self, text: str) -> list[int]:
        """Ids for one text (convenience; batch calls are what is fast)."""
        return self.match_batch([text])[0]


def _lead_bytes(cps: np.ndarray) -> np.ndarray:
    """The first UTF-8 byte of each code point."""
    cps = np.asarray(cps, dtype=np.int64)
    return np.where(cps < 0x80, cps,
                    np.where(cps < 0x800, 0xC0 | (cps >> 6),
                             np.where(cps < 0x10000, 0xE0 | (cps >> 12), 0xF0 | (cps >> 18))))


_CACHE: dict[str, FastMatcher] = {}  # at most one: one metadata per process at a time
_CACHE_LOCK = threading.Lock()


def get_fast_matcher(entries: Sequence[str], fingerprint: str | None = None,
                     rule: str = DEFAULT_RULE) -> FastMatcher:
    """The process-wide FastMatcher for ``entries`` (built on first use, then reused by tasks).

    Pass the driver's ``fingerprint`` (``matcher_fingerprint(entries, rule)``) to skip hashing 500k
    entries in every task.
    """
    key = f"{check_rule(rule)}:{fingerprint or matcher_fingerprint(entries, rule)}"
    with _CACHE_LOCK:  # uncontended in a Python worker; also stops two threads building twice
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = FastMatcher(entries, fingerprint=key.split(":", 1)[1], rule=rule)
        return _CACHE[key]


def load_fast_matcher(path: str, fingerprint: str, rule: str = DEFAULT_RULE) -> FastMatcher:
    """The process-wide matcher loaded from a compiled file (see :meth:`FastMatcher.save`); a file
    compiled for another ``rule`` (or other metadata) is refused."""
    key = f"{check_rule(rule)}:{fingerprint}"
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = FastMatcher.load(path, fingerprint, rule)
        return _CACHE[key]
