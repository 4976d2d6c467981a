"""MetaCLIP balancing on plain arrays (ARCHITECTURE.md, "Balancing").

``count[e]`` is the number of texts whose matched set contains ``e``; ``p[e] = min(1, t/count[e])``;
a text is kept with probability ``p_keep = 1 - prod_{e in matched}(1 - p[e])``. The draw is a pure
function of ``(seed, uid)``, so the kept subset never depends on partitioning, executor count or
task retries.

Matched sets are passed in CSR form — ``offsets`` (len n+1) and ``flat_ids`` — which is exactly
the memory layout of an Arrow ``ListArray``, so Spark tasks hand Arrow buffers straight in.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from curation.errors import InputError


# --------------------------------------------------------------------------- counts
def csr_from_lists(lists: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat_ids) from a list of id lists."""
    lengths = []
    flat: list[int] = []
    for ids in lists:
        lengths.append(len(ids))
        flat.extend(ids)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.asarray(flat, dtype=np.int64)


def entry_counts(flat_ids: np.ndarray, n_entries: int) -> np.ndarray:
    """Per-entry count of texts containing it (ids within a text are unique, so a bincount)."""
    flat_ids = np.asarray(flat_ids, dtype=np.int64)
    if flat_ids.size and (flat_ids.min() < 0 or flat_ids.max() >= n_entries):
        raise InputError(f"entry id out of range [0, {n_entries}): the match output does not belong "
                         "to this metadata (re-run the match stage)")
    return np.bincount(flat_ids, minlength=n_entries).astype(np.int64)


# --------------------------------------------------------------------------- probabilities
def entry_probabilities(counts: np.ndarray, t: float, dtype=np.float64) -> np.ndarray:
    """``p[e] = min(1, t / count[e])``; entries never matched get 1.0 (never used)."""
    if not t > 0:
        raise InputError(f"t must be > 0, got {t!r}")
    counts = np.asarray(counts, dtype=np.float64)
    p = np.ones(counts.shape, dtype=np.float64)
    nz = counts > 0
    p[nz] = np.minimum(1.0, t / counts[nz])
    return p.astype(dtype, copy=False)


def p_keep_csr(offsets: np.ndarray, flat_ids: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``1 - prod(1 - p[e])`` per row; rows with no match get 0."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.float64)
    if n == 0 or len(flat_ids) == 0:
        return out
    q = 1.0 - np.asarray(p, dtype=np.float64)[np.asarray(flat_ids, dtype=np.int64)]
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    # reduceat mis-handles empty segments, so reduce only over the non-empty rows' starts.
    prod = np.multiply.reduceat(q, offsets[:-1][nonempty])
    out[nonempty] = 1.0 - prod
    return out


def p_keep(matches: Sequence[Sequence[int]], p: np.ndarray) -> np.ndarray:
    """``p_keep`` for a list of matched-id lists (convenience over ``p_keep_csr``)."""
    offsets, flat = csr_from_lists(matches)
    return p_keep_csr(offsets, flat, p)


# --------------------------------------------------------------------------- the draw
def uniform_from_uid(seed: int, uid: str) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, uid)``.

    blake2b-64 of ``"<seed>\\x1f<uid>"``; the top 53 bits make an exact double. Portable across
    machines and Python versions (unlike ``hash()``), so runs reproduce anywhere.
    """
    digest = hashlib.blake2b(f"{int(seed)}\x1f{uid}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) * (1.0 / (1 << 53))


def _digests(seed: int, raw_uids) -> bytes:
    """The 8-byte draws' digests of UTF-8 uids, joined: the hash state after ``"<seed>\x1f"`` is
    built once and copied per uid (the same digest as hashing prefix + uid, without a per-row
    concatenation or keyword parsing)."""
    base = hashlib.blake2b(f"{int(seed)}\x1f".encode(), digest_size=8)
    copy = base.copy
    out = []
    append = out.append
    for b in raw_uids:
        h = copy()
        h.update(b)
        append(h.digest())
    return b"".join(out)


def _to_unit_interval(raw: bytes) -> np.ndarray:
    ints = np.frombuffer(raw, dtype="<u8")
    return (ints >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform_from_uids(seed: int, uids: Sequence[str]) -> np.ndarray:
    """``uniform_from_uid`` over many uids (float64 array)."""
    return _to_unit_interval(_digests(seed, (u.encode("utf-8", "surrogatepass") for u in uids)))


def uniform_from_uid_array(seed: int, uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``uniform_from_uids`` for an Arrow string column: hashes the UTF-8 bytes straight from
    the array (no str objects, no re-encoding): bit-identical, ~25% faster."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    raw_uids = uids.cast(pa.binary())
    # In slices: a quarter million live bytes objects at once made CPython map fresh arenas.
    raw = b"".join([_digests(seed, raw_uids.slice(i, 8192).to_pylist()) for i in range(0, len(raw_uids), 8192)])
    return _to_unit_interval(raw)


def keep_mask(p_keep_values: np.ndarray, seed: int, uids: Sequence[str]) -> np.ndarray:
    """Keep iff ``u(seed, uid) < p_keep``."""
    return uniform_from_uids(seed, uids) < np.asarray(p_keep_values, dtype=np.float64)


# --------------------------------------------------------------------------- solving t
def expected_kept_for_ts(offsets: np.ndarray, flat_ids: np.ndarray, counts: np.ndarray,
                         ts: Sequence[float]) -> np.ndarray:
    """Σ p_keep over the given rows, for every t in ``ts`` (one value per t).

    Equal to ``p_keep_csr(offsets, flat_ids, entry_probabilities(counts, t)).sum()`` per t, but
    works on the rows' own occurrences only (no entries-sized array per t), and only on the rows
    that t leaves *unsaturated*: a row holding an entry with ``count <= t`` has p = 1 for that
    entry, so p_keep = 1 exactly. Rows are ordered once by their smallest count (descending); for
    each t the unsaturated rows are a prefix, whose occurrences are a prefix too. On a real pool
    most rows hold some tail entry, so most of a geometric t grid touches few rows (the sweep was
    60% of a balance task when every t visited every occurrence)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ts = [float(t) for t in ts]
    for t in ts:
        if not t > 0:
            raise InputError(f"t must be > 0, got {t!r}")
    out = np.zeros(len(ts), dtype=np.float64)
    flat_ids = np.asarray(flat_ids, dtype=np.int64)
    if len(offsets) < 2 or flat_ids.size == 0:
        return out
    flat_ids = flat_ids[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    c = np.asarray(counts, dtype=np.float64)[flat_ids]
    c[c <= 0] = 0.0  # an entry never counted has p = 1 (entry_probabilities' convention): saturated
    lens = np.diff(offsets)
    nonempty = lens > 0  # a row without entries has p_keep = 0
    starts, lens = offsets[:-1][nonempty], lens[nonempty]
    n_rows = len(starts)
    cmin = np.minimum.reduceat(c, starts)
    order = np.argsort(-cmin, kind="stable")  # unsaturated rows first, for every t
    neg_cmin = -cmin[order]
    lens_o = lens[order]
    new_starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lens_o, out=new_starts[1:])
    # occurrences regrouped in that row order: row r's run starts[r] .. starts[r] + lens[r]
    occ = np.repeat(starts[order] - new_starts[:-1], lens_o) + np.arange(new_starts[-1], dtype=np.int64)
    c_o = c[occ]
    for i, t in enumerate(ts):
        k = int(np.searchsorted(neg_cmin, -t, side="left"))  # rows whose every count is > t
        total = float(n_rows - k)
        if k:
            q = 1.0 - t / c_o[: new_starts[k]]
            total += float((1.0 - np.multiply.reduceat(q, new_starts[:k])).sum())
        out[i] = total
    return out


def solve_t(evaluate: Callable[[np.ndarray], np.ndarray], target: float, max_count: int,
            grid: int = 32) -> int:
    """Smallest integer t >= 1 whose expected kept count reaches ``target``.

    ``evaluate(ts)`` returns the expected kept count for each t in ``ts``; in Spark it is one job
    over the matched rows, so we evaluate a whole grid per pass and narrow the bracket ``grid``-fold
    each time (the expected count is non-decreasing in t). At ``t >= max_count`` every p is 1 and
    all matched rows are kept, so a target above that is unreachable.
    """
    if target <= 0:
        raise InputError(f"target_size must be > 0, got {target}")
    max_count = max(int(max_count), 1)
    top = float(evaluate(np.array([max_count], dtype=np.float64))[0])
    if top < target:
        raise InputError(f"target_size {target:,.0f} is larger than the number of matched rows "
                         f"({top:,.0f}); lower target_size or use a larger pool")
    lo, hi = 0, max_count  # invariant: E(lo) < target (E(0) = 0) and E(hi) >= target
    while hi - lo > 1:
        ts = np.unique(np.linspace(lo, hi, grid + 2).round().astype(np.int64))
        ts = ts[(ts > lo) & (ts < hi)]
        if ts.size == 0:
            break
        values = evaluate(ts.astype(np.float64))
        reached = values >= target
        if reached.any():
            first = int(np.argmax(reached))
            hi = int(ts[first])
            lo = int(ts[first - 1]) if first > 0 else lo
        else:
            lo = int(ts[-1])
    return hi


def solve_t_local(matches: Sequence[Sequence[int]], n_entries: int, target: float) -> int:
    """``solve_t`` on in-memory matched-id lists (tests, small data)."""
    offsets, flat = csr_from_lists(matches)
    counts = entry_counts(flat, n_entries)
    return solve_t(lambda ts: expected_kept_for_ts(offsets, flat, counts, ts), target,
                   int(counts.max()) if counts.size else 1)


# --------------------------------------------------------------------------- uid
def uid_from_url(url: str) -> str:
    """Stable uid for rows that have none (MetaCLIP: ``sha224(url)[:24]``)."""
    return hashlib.sha224(url.encode("utf-8", "surrogatepass")).hexdigest()[:24]


# --------------------------------------------------------------------------- per language (MetaCLIP 2)
def t_to_p(counts: np.ndarray, t: float) -> float:
    """The tail proportion of a threshold: the share of all matches held by entries whose count is
    below ``t`` (MetaCLIP 2's definition: the tail is ``count < t``)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return 0.0
    return float(counts[counts < t].sum() / total)


def p_to_t(counts: np.ndarray, p: float) -> float:
    """The threshold whose tail proportion is closest to ``p``: counts sorted ascending, their
    cumulative share of all matches, and the count where that share is nearest ``p`` (MetaCLIP 2's
    inverse of :func:`t_to_p`; ties go to the smaller count). Zero counts take part as they do there."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"a tail proportion is between 0 and 1, got {p!r}")
    counts = np.sort(np.asarray(counts, dtype=np.int64))
    total = int(counts.sum())
    if total == 0:
        raise InputError("no matches in these counts: no threshold can be derived from them")
    share = np.cumsum(counts, dtype=np.float64) / total
    return float(counts[int(np.abs(share - p).argmin())])


def thresholds_per_language(counts: np.ndarray, langs: np.ndarray, *, t: float | None = None,
                            tail_p: float | None = None, reference: str = "en") -> dict[str, float]:
    """Each language's t, as MetaCLIP 2 sets them: the reference language (English) keeps ``t``; its
    tail proportion ``p = t_to_p(counts_ref, t)`` gives every other language
    ``t_lang = p_to_t(counts_lang, p)``. With ``tail_p`` every language, the reference included,
    gets ``p_to_t(counts_lang, tail_p)``. Without the reference language in the metadata, ``t``
    applies to every language as it is. ``counts`` and ``langs`` are per entry."""
    counts = np.asarray(counts, dtype=np.int64)
    langs = np.asarray(langs)
    names = sorted(set(langs.tolist()))
    out: dict[str, float] = {}
    if tail_p is not None:
        for lang in names:
            c = counts[langs == lang]
            out[lang] = p_to_t(c, tail_p) if c.sum() else 1.0
        return out
    if t is None:
        raise InputError("give t (the reference language's threshold) or tail_p")
    if reference not in names:
        return {lang: float(t) for lang in names}
    p = t_to_p(counts[langs == reference], t)
    for lang in names:
        c = counts[langs == lang]
        out[lang] = float(t) if lang == reference else (p_to_t(c, p) if c.sum() else float(t))
    return out


def entry_probabilities_per_language(counts: np.ndarray, langs: np.ndarray, ts: dict[str, float]) -> np.ndarray:
    """``p[e] = min(1, t_lang(e) / count[e])`` (1 for entries never matched)."""
    counts = np.asarray(counts, dtype=np.float64)
    t_of = np.array([ts[lang] for lang in np.asarray(langs).tolist()], dtype=np.float64)
    p = np.ones(counts.shape, dtype=np.float64)
    nz = counts > 0
    p[nz] = np.minimum(1.0, t_of[nz] / counts[nz])
    return p
