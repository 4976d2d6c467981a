"""Vectorised n-gram counting into Arrow tables, and summing such tables by key bucket.

Why this exists next to :class:`metadata.wiki.NgramCounts` (the plain reference):

* Counting with ``Counter`` over ``(w1, w2)`` tuples cost most of a counting task's Python time,
  and emitting one Spark row per distinct key of every task made the JVM hash-aggregate tens of
  millions of rows (in ``local[1]`` that JVM work even overlapped with the Python worker, so one
  "core" used more than one). Here a task maps tokens to integer ids with one task-wide
  vocabulary, counts unigrams with ``bincount`` and bigrams as ``id1 << 32 | id2`` codes with a
  sort, and keeps everything as numpy arrays until it emits.
* The task's counts are split into ``n_buckets`` by a stable hash of the key (``crc32`` of the
  words, the same in every process) and each bucket is shipped as one Arrow IPC blob: Spark only
  moves a few thousand binary rows. The reduce side (:func:`merge_count_tables`) sums the tables
  of one bucket with Arrow's hash aggregation. So nearly all work runs in parallel Python tasks.

Table schema: ``kind:int8`` (0 unigram, 1 bigram, 2 total), ``w1``, ``w2`` (null unless bigram),
``c:int64``. Totals rows carry ``w1`` = ``n_unigrams`` / ``n_bigrams`` / ``articles``.
"""
from __future__ import annotations

import zlib
from array import array
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metadata.wiki import strip_markup, tokens_with_breaks

KIND_UNIGRAM, KIND_BIGRAM, KIND_TOTAL = 0, 1, 2
COUNT_SCHEMA = pa.schema([("kind", pa.int8()), ("w1", pa.string()), ("w2", pa.string()), ("c", pa.int64())])
_LOW32 = np.int64(0xFFFFFFFF)


class _Vocab(dict):
    """token -> id, assigning the next id on first sight (id 0 is the run break ``""``)."""

    def __missing__(self, token: str) -> int:
        idx = self[token] = len(self)
        return idx


def _sum_sorted(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``counts`` per distinct code (exact integer sums); codes come back sorted."""
    if codes.size == 0:
        return codes, counts
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return codes[starts], np.add.reduceat(counts, starts)


class ArrowNgramCounter:
    """Counts unigrams and adjacent-token bigrams of plain texts, like ``NgramCounts``.

    ``chunk_tokens`` bounds the id buffer between vectorised passes; ``flush_pairs`` bounds the
    distinct bigrams held before :meth:`pending_flush` says the caller should emit partial counts.
    ``tokenize`` turns plain text into tokens with ``""`` breaks (``metadata.segment``); the
    default is English's :func:`metadata.wiki.tokens_with_breaks`.
    """

    def __init__(self, chunk_tokens: int = 2_000_000, flush_pairs: int = 8_000_000,
                 tokenize: Callable[[str], list] | None = None) -> None:
        self.tokenize = tokenize or tokens_with_breaks
        self.vocab = _Vocab({"": 0})
        self.chunk_tokens = chunk_tokens
        self.flush_pairs = flush_pairs
        self._ids = array("q")
        self._unigrams = np.zeros(0, np.int64)
        self._pair_codes: list[np.ndarray] = []
        self._pair_counts: list[np.ndarray] = []
        self._pairs_held = 0
        self.n_unigrams = 0
        self.n_bigrams = 0
        self.pages = 0

    # ---------------------------------------------------------------- adding text
    def add_text(self, plain_text: str) -> None:
        self._ids.extend(map(self.vocab.__getitem__, self.tokenize(plain_text)))
        self._ids.append(0)  # texts never pair across each other
        if len(self._ids) >= self.chunk_tokens:
            self._count_chunk()

    def add_page(self, wikitext: str) -> None:
        self.add_text(strip_markup(wikitext))
        self.pages += 1

    def _count_chunk(self) -> None:
        ids = np.frombuffer(self._ids, dtype=np.int64) if len(self._ids) else np.zeros(0, np.int64)
        self._ids = array("q")
        if ids.size == 0:
            return
        uni = np.bincount(ids, minlength=len(self.vocab))
        uni[0] = 0
        if self._unigrams.size < uni.size:
            self._unigrams = np.concatenate([self._unigrams, np.zeros(uni.size - self._unigrams.size, np.int64)])
        self._unigrams[: uni.size] += uni
        self.n_unigrams += int(uni.sum())
        a, b = ids[:-1], ids[1:]
        keep = (a > 0) & (b > 0)
        codes = (a[keep] << 32) | b[keep]
        self.n_bigrams += int(codes.size)
        codes, counts = np.unique(codes, return_counts=True)
        self._pair_codes.append(codes)
        self._pair_counts.append(counts.astype(np.int64))
        self._pairs_held += codes.size
        if len(self._pair_codes) > 1 and self._pairs_held > self.flush_pairs // 2:
            merged = _sum_sorted(np.concatenate(self._pair_codes), np.concatenate(self._pair_counts))
            self._pair_codes, self._pair_counts = [merged[0]], [merged[1]]
            self._pairs_held = merged[0].size

    def pending_flush(self) -> bool:
        """True when the held distinct pairs exceed ``flush_pairs`` (emit, then go on)."""
        return self._pairs_held >= self.flush_pairs

    # ---------------------------------------------------------------- output
    def take_table(self, with_totals: bool) -> pa.Table:
        """The counts so far as a COUNT_SCHEMA table; resets the counts (not the vocabulary).

        ``with_totals`` adds the totals rows (once per task, at its end: partial flushes must
        not repeat them).
        """
        self._count_chunk()
        words = pa.array(list(self.vocab), pa.string())
        uni_ids = np.flatnonzero(self._unigrams)
        if self._pair_codes:
            codes, counts = _sum_sorted(np.concatenate(self._pair_codes), np.concatenate(self._pair_counts))
        else:
            codes, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        parts = [
            pa.table([pa.array(np.full(uni_ids.size, KIND_UNIGRAM, np.int8)), words.take(uni_ids),
                      pa.nulls(uni_ids.size, pa.string()), pa.array(self._unigrams[uni_ids])], schema=COUNT_SCHEMA),
            pa.table([pa.array(np.full(codes.size, KIND_BIGRAM, np.int8)), words.take(codes >> 32),
                      words.take(codes & _LOW32), pa.array(counts, pa.int64())], schema=COUNT_SCHEMA),
        ]
        if with_totals:
            parts.append(totals_table({"n_unigrams": self.n_unigrams, "n_bigrams": self.n_bigrams,
                                       "articles": self.pages}))
        self._unigrams = np.zeros(0, np.int64)
        self._pair_codes, self._pair_counts, self._pairs_held = [], [], 0
        return pa.concat_tables(parts)


def totals_table(totals: dict[str, int]) -> pa.Table:
    names = sorted(totals)
    return pa.table([pa.array([KIND_TOTAL] * len(names), pa.int8()), pa.array(names, pa.string()),
                     pa.nulls(len(names), pa.string()), pa.array([totals[n] for n in names], pa.int64())],
                    schema=COUNT_SCHEMA)


def count_texts(wikitexts: Iterable[str], chunk_tokens: int = 2_000_000,
                flush_pairs: int = 8_000_000, tokenize: Callable[[str], list] | None = None) -> Iterator[pa.Table]:
    """Partial count tables of article wikitexts: one per ``flush_pairs`` distinct bigrams, the
    last one with the totals rows. Summing them (:func:`merge_count_tables`) gives the counts."""
    counter = ArrowNgramCounter(chunk_tokens, flush_pairs, tokenize)
    for text in wikitexts:
        counter.add_page(text)
        if counter.pending_flush():
            yield counter.take_table(with_totals=False)
    yield counter.take_table(with_totals=True)


# -------------------------------------------------------------------------------- buckets
def _word_hashes(words: pa.Array) -> np.ndarray:
    """crc32 of each distinct word's UTF-8 (nulls -> 0): stable across processes and runs."""
    if len(words) == 0:
        return np.zeros(0, np.uint64)
    encoded = words.dictionary_encode()
    distinct = encoded.dictionary.to_pylist()
    hashes = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in distinct), np.uint64, len(distinct))
    idx = pc.fill_null(encoded.indices, -1).to_numpy()
    return np.where(idx >= 0, hashes[np.maximum(idx, 0)] if hashes.size else 0, 0).astype(np.uint64)


def key_buckets(table: pa.Table, n_buckets: int) -> np.ndarray:
    """The bucket of every row's key ``(kind, w1, w2)``; equal keys share a bucket everywhere."""
    h1 = _word_hashes(table.column("w1").combine_chunks())
    h2 = _word_hashes(table.column("w2").combine_chunks())
    with np.errstate(over="ignore"):
        h = h1 * np.uint64(0x9E3779B1) + h2 + table.column("kind").to_numpy().astype(np.uint64)
    return (h % np.uint64(n_buckets)).astype(np.int64)


def split_buckets(table: pa.Table, n_buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """``(bucket, rows of that bucket)`` for every non-empty bucket (zero-copy slices)."""
    if table.num_rows == 0:
        return
    buckets = key_buckets(table, n_buckets)
    order = np.argsort(buckets, kind="stable")
    table, buckets = table.take(order), buckets[order]
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], buckets.size]
    for s, e in zip(starts, ends):
        yield int(buckets[s]), table.slice(int(s), int(e - s))


_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def to_ipc(table: pa.Table) -> bytes:
    """A count table as a compact blob: words dictionary-encoded per blob, buffers LZ4-compressed.

    The blobs are what Spark shuffles, so their size is the JVM's work; this makes them ~3x
    smaller than plain string columns.
    """
    table = table.combine_chunks()
    cols = [table.column("kind"), table.column("w1").dictionary_encode(), table.column("w2").dictionary_encode(),
            table.column("c")]
    table = pa.table(cols, names=COUNT_SCHEMA.names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(blob: bytes) -> pa.Table:
    """Inverse of :func:`to_ipc` (plain string columns again)."""
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all().cast(COUNT_SCHEMA)


def merge_count_tables(tables: list[pa.Table]) -> pa.Table:
    """Sum the counts of equal keys over several COUNT_SCHEMA tables."""
    if not tables:
        return COUNT_SCHEMA.empty_table()
    merged = pa.concat_tables(tables).group_by(["kind", "w1", "w2"], use_threads=False).aggregate([("c", "sum")])
    return merged.select(["kind", "w1", "w2", "c_sum"]).rename_columns(COUNT_SCHEMA.names).cast(COUNT_SCHEMA)


def drop_rare(table: pa.Table, min_unigram: int, min_bigram: int) -> pa.Table:
    """Rows that can still matter: unigrams with ``c >= min_unigram``, bigrams with
    ``c >= min_bigram``, and every totals row."""
    kind, c = table.column("kind"), table.column("c")
    keep = pc.or_(pc.or_(pc.and_(pc.equal(kind, KIND_UNIGRAM), pc.greater_equal(c, min_unigram)),
                         pc.and_(pc.equal(kind, KIND_BIGRAM), pc.greater_equal(c, min_bigram))),
                  pc.equal(kind, KIND_TOTAL))
    return table.filter(keep)
