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
from curation.matching import SPACED_CHARS, WRAPPED_CHARS, entries_fingerprint

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
COMPILED_FORMAT = 1
_MAGIC = b"METACURATE-FASTMATCH\n"
_ALIGN = 64
_STATE_ARRAYS = ("_vocab_padded", "_slot_vid", "_slot_len", "_slot_w0", "_vocab_starts", "_wrapped_vid",
                 "_root_child", "_has_children", "_node_key", "_key_offsets", "_key_ids_flat", "_key_first_id")
_STATE_SCALARS = ("n_entries", "n_never_match", "_vocab_bits", "_vocab_size", "_shared_keys")


def _data_start(head_len: int) -> int:
    """Offset of the first array in a compiled file: magic, 8-byte header length, header, aligned."""
    return -(-(len(_MAGIC) + 8 + head_len) // _ALIGN) * _ALIGN


class FastMatcher:
    """Vectorised MetaCLIP-parity matcher; ids are positions in ``entries`` (duplicates all match)."""

    def __init__(self, entries: Sequence[str], fingerprint: str | None = None):
        t0 = time.perf_counter()
        self.entries = list(entries)
        if not self.entries:
            raise InputError("metadata is empty: it must be a non-empty list of entry strings")
        not_str = [i for i, e in enumerate(self.entries) if not isinstance(e, str)]
        if not_str:
            e = self.entries[not_str[0]]
            raise InputError(f"metadata entry #{not_str[0]} is {type(e).__name__}, expected a string: {e!r}")
        self._fingerprint = fingerprint
        self.n_entries = len(self.entries)

        arr = _utf8_array(self.entries)
        _, off_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(off_buf, np.int64)[: self.n_entries + 1]
        data = np.frombuffer(data_buf, np.uint8)[: offsets[-1]] if data_buf is not None else np.zeros(0, np.uint8)
        valid = ~self._never_matches(data, offsets)
        self.n_never_match = int((~valid).sum())
        # Exact tokenisation and vocabulary with Arrow's C++ kernels (binary: surrogates are fine).
        split = pc.split_pattern(arr, pattern=" ")
        encoded = pc.dictionary_encode(split.flatten())
        self._build_vocab(encoded.dictionary)
        tokens = encoded.indices.to_numpy().astype(np.int64)
        token_offsets = split.offsets.to_numpy().astype(np.int64)
        self._build_trie(tokens, token_offsets, np.flatnonzero(valid))
        del arr, split, encoded, tokens, token_offsets, data, offsets
        pa.default_memory_pool().release_unused()  # hand the build's scratch memory back
        self.build_seconds = time.perf_counter() - t0
        log.info("FastMatcher: %d entries (%d can never match), %d tokens, %d trie nodes, built in %.2fs",
                 self.n_entries, self.n_never_match, self._vocab_size, len(self._node_key) - 1,
                 self.build_seconds)

    @property
    def fingerprint(self) -> str:
        """``entries_fingerprint(entries)``, computed on first use (it costs ~1 s for 500k entries)."""
        if self._fingerprint is None:
            self._fingerprint = entries_fingerprint(self.entries)
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

    def _build_trie(self, tokens: np.ndarray, token_offsets: np.ndarray, valid_ids: np.ndarray) -> None:
        """Trie over the token-id sequences of ``valid_ids``, one level at a time.

        Arrays indexed by node end with a -1/False sentinel so that index -1 is harmless.
        """
        v = self._vocab_size
        first_tok = token_offsets[valid_ids]
        n_tok = token_offsets[valid_ids + 1] - first_tok
        root_tokens, node = np.unique(tokens[first_tok], return_inverse=True)
        self._root_child = np.full(v + 1, -1, dtype=np.int32)  # index -1 (unknown token) -> -1
        self._root_child[root_tokens] = np.arange(len(root_tokens), dtype=np.int32)
        n_nodes = len(root_tokens)
        parents: list[np.ndarray] = []
        edge_keys: list[np.ndarray] = []
        edge_vals: list[np.ndarray] = []
        level = 1
        active = np.flatnonzero(n_tok > 1)
        while active.size:
            parent = node[active]
            keys = parent * v + tokens[first_tok[active] + level]
            uniq, inv = np.unique(keys, return_inverse=True)
            parents.append(parent)
            edge_keys.append(uniq)
            edge_vals.append(np.arange(n_nodes, n_nodes + len(uniq), dtype=np.int32))
            node[active] = n_nodes + inv
            n_nodes += len(uniq)
            level += 1
            active = active[n_tok[active] > level]
        self._has_children = np.zeros(n_nodes + 1, dtype=bool)
        for parent in parents:
            self._has_children[parent] = True
        self._edges = _IntTable(np.concatenate(edge_keys) if edge_keys else np.zeros(0, np.int64),
                                np.concatenate(edge_vals) if edge_vals else np.zeros(0, np.int32))
        # Terminal nodes: one key per distinct token sequence; equal entries share a key.
        terminal, key_of_entry = np.unique(node, return_inverse=True)
        self._node_key = np.full(n_nodes + 1, -1, dtype=np.int32)
        self._node_key[terminal] = np.arange(len(terminal), dtype=np.int32)
        order = np.argsort(key_of_entry, kind="stable")
        counts = np.bincount(key_of_entry, minlength=len(terminal))
        self._key_offsets = np.zeros(len(terminal) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._key_offsets[1:])
        self._key_ids_flat = valid_ids[order].astype(np.int32)
        self._key_first_id = self._key_ids_flat[self._key_offsets[:-1]]
        self._shared_keys = bool((counts > 1).any())

    def __len__(self) -> int:
        return self.n_entries

    # ------------------------------------------------------------------ compiled form
    def save(self, path: str) -> str:
        """Write the built matcher as one file that :meth:`load` maps into memory (atomic rename).

        Why: building from 500k entries costs ~1 s and ~0.5 GB of scratch memory in *every* worker
        process; loading the compiled file costs milliseconds, and workers on one host share its
        pages (one copy of the tables in RAM and in the shared CPU cache)."""
        arrays = {name: getattr(self, name) for name in _STATE_ARRAYS}
        arrays.update({f"_edges.{name}": getattr(self._edges, name) for name in ("keys", "values")})
        header: dict = {"format": COMPILED_FORMAT, "fingerprint": self.fingerprint,
                        "scalars": {name: getattr(self, name) for name in _STATE_SCALARS},
                        "edges_bits": self._edges.bits, "arrays": {}}
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
    def load(cls, path: str, fingerprint: str | None = None) -> "FastMatcher":
        """A matcher over the (read-only, memory-mapped) arrays of a file written by :meth:`save`.

        ``fingerprint``, when given, must equal the file's: a stale compiled file is an error, never
        a silent mismatch. ``entries`` is not kept (``None``); matching needs only the tables."""
        with open(path, "rb") as f:
            magic = f.read(len(_MAGIC))
            if magic != _MAGIC:
                raise InputError(f"{path} is not a compiled metacurate matcher (bad magic {magic!r})")
            head_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(head_len))
            if header.get("format") != COMPILED_FORMAT:
                raise InputError(f"{path}: compiled matcher format {header.get('format')} is not "
                                 f"{COMPILED_FORMAT}; rebuild it")
            if fingerprint is not None and header["fingerprint"] != fingerprint:
                raise InputError(f"{path} was compiled from other metadata (fingerprint "
                                 f"{header['fingerprint']}, expected {fingerprint}); rebuild it")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data_start = _data_start(head_len)
        self = cls.__new__(cls)
        self.entries = None
        self._fingerprint = header["fingerprint"]
        self.build_seconds = 0.0
        for name, value in header["scalars"].items():
            setattr(self, name, value)
        arrays = {}
        for name, (dtype, shape, offset) in header["arrays"].items():
            dt = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            arrays[name] = np.frombuffer(mm, dtype=dt, count=count, offset=data_start + offset).reshape(shape)
        for name in _STATE_ARRAYS:
            setattr(self, name, arrays[name])
        edges = _IntTable.__new__(_IntTable)
        edges.bits = int(header["edges_bits"])
        edges.mask = (1 << edges.bits) - 1
        edges.shift = _U64(64 - edges.bits)
        edges.keys, edges.values = arrays["_edges.keys"], arrays["_edges.values"]
        self._edges = edges
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
        """(rows, entry_ids) sorted by (row, id), unique, for rows each ended by a 0xFF byte.

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

        out_pos: list[np.ndarray] = []
        out_key: list[np.ndarray] = []

        def emit(p: np.ndarray, nodes: np.ndarray) -> None:
            key = self._node_key[nodes]
            m = key >= 0
            out_pos.append(p[m])
            out_key.append(key[m])

        nodes = self._root_child[tok]
        p = np.flatnonzero(nodes >= 0)
        nodes = nodes[p]
        emit(p, nodes)
        keep = self._has_children[nodes]
        p, nodes = p[keep], nodes[keep]
        k = 1
        v = self._vocab_size
        while p.size:
            nt = tok[p + k]
            ok = nt >= 0
            p, nodes, nt = p[ok], nodes[ok], nt[ok]
            child = self._edges.lookup(nodes.astype(np.int64) * v + nt)
            ok = child >= 0
            p, nodes = p[ok], child[ok]
            emit(p, nodes)
            keep = self._has_children[nodes]
            p, nodes = p[keep], nodes[keep]
            k += 1

        p = np.concatenate(out_pos)
        key = np.concatenate(out_key)
        rows = np.searchsorted(barriers, p)  # barriers before p = row index
        if self._shared_keys:
            counts = self._key_offsets[key + 1] - self._key_offsets[key]
            rows = np.repeat(rows, counts)
            first = np.repeat(self._key_offsets[key] - np.cumsum(counts) + counts, counts)
            eids = self._key_ids_flat[first + np.arange(len(rows))]
        else:
            eids = self._key_first_id[key]
        combined = np.sort(rows.astype(np.int64) * self.n_entries + eids)
        if len(combined) > 1:  # np.unique is hash-based (unsorted, slower) in numpy 2.x
            combined = combined[np.concatenate([[True], combined[1:] != combined[:-1]])]
        rows = combined // self.n_entries
        return rows, (combined - rows * self.n_entries).astype(np.int32)

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
        joined = np.insert(data, rel[1:], np.uint8(_ROW_SEP))
        padded = np.concatenate([joined, np.zeros(PAD, np.uint8)])
        rows, eids = self._match_buffer(padded)
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


_CACHE: dict[str, FastMatcher] = {}  # at most one: one metadata per process at a time
_CACHE_LOCK = threading.Lock()


def get_fast_matcher(entries: Sequence[str], fingerprint: str | None = None) -> FastMatcher:
    """The process-wide FastMatcher for ``entries`` (built on first use, then reused by tasks).

    Pass the driver's ``fingerprint`` to skip hashing 500k entries in every task.
    """
    key = fingerprint or entries_fingerprint(entries)
    with _CACHE_LOCK:  # uncontended in a Python worker; also stops two threads building twice
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = FastMatcher(entries, fingerprint=key)
        return _CACHE[key]


def load_fast_matcher(path: str, fingerprint: str) -> FastMatcher:
    """The process-wide matcher loaded from a compiled file (see :meth:`FastMatcher.save`)."""
    with _CACHE_LOCK:
        if fingerprint not in _CACHE:
            _CACHE.clear()
            _CACHE[fingerprint] = FastMatcher.load(path, fingerprint)
        return _CACHE[fingerprint]
