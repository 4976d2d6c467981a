"""FastMatcher gives exactly Matcher's ids (and the naive definition's) on every input shape."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings

import curation.fastmatch as fastmatch
import curation.hashing as hashing
from curation.errors import InputError
from curation.fastmatch import FastMatcher, get_fast_matcher
from curation.matching import Matcher, entries_fingerprint


def _load_sibling(name: str):
    """The shared strategies / naive reference live in test_matching.py (no packages under tests/)."""
    spec = importlib.util.spec_from_file_location(f"_metacurate_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ref = _load_sibling("test_matching")
naive_match = _ref.naive_match


def arrow_ids(fm: FastMatcher, texts: list[str | None]) -> dict[str, list[list[int]]]:
    """Every Arrow input shape the Spark job may hand over, as Python lists."""
    n = len(texts)
    out = {
        "string": fm.match_arrow(pa.array(texts, pa.string())),
        "large_string": fm.match_arrow(pa.array(texts, pa.large_string())),
        "chunked": fm.match_arrow(pa.chunked_array(
            [pa.array(texts[: n // 2], pa.string()), pa.array(texts[n // 2:], pa.string())], pa.string())),
        # a slice has a non-zero offset into shared buffers
        "sliced": fm.match_arrow(pa.array(["pad dog", None] + texts + ["hot dog"], pa.string()).slice(2, n)),
    }
    out["no_dedup"] = fm.match_arrow(pa.array(texts, pa.string()), dedup=False)
    saved = fastmatch.MATCH_BATCH_ROWS
    fastmatch.MATCH_BATCH_ROWS = 3  # several passes per chunk, results concatenated in order
    try:
        out["batched"] = fm.match_arrow(pa.chunked_array(
            [pa.array(texts[: n // 2], pa.string()), pa.array(texts[n // 2:], pa.string())], pa.string()))
    finally:
        fastmatch.MATCH_BATCH_ROWS = saved
    # three copies: the repeated-text path (match distinct texts once, then take) must kick in
    tripled = fm.match_arrow(pa.array(texts * 3, pa.string()))
    assert tripled.to_pylist() == fm.match_arrow(pa.array(texts), dedup=False).to_pylist() * 3
    for name, arr in out.items():
        assert arr.type == pa.list_(pa.int32()), name
        assert arr.null_count == 0, name
    return {name: arr.to_pylist() for name, arr in out.items()}


def assert_all_agree(entries: list[str], texts: list[str | None]) -> None:
    expected = naive_match(entries, texts)
    assert Matcher(entries).match_batch(texts) == expected
    fm = FastMatcher(entries)
    assert fm.match_batch(texts) == expected
    for name, got in arrow_ids(fm, texts).items():
        assert got == expected, name


@_ref.PROPERTY_SETTINGS
@given(_ref.entries_strategy, _ref.texts_strategy)
def test_fast_matcher_equals_matcher_and_naive(entries, texts):
    assert_all_agree(entries, texts)


@settings(_ref.PROPERTY_SETTINGS, max_examples=120)
@given(_ref.entries_strategy, _ref.texts_strategy.filter(lambda ts: any(t is not None for t in ts)))
def test_exact_even_when_every_hash_collides(entries, texts):
    """With a degenerate hash every lookup probes and must fall back on comparing bytes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastmatch, "mix", lambda h: h & np.uint64(3))  # trie edges
        mp.setattr(hashing, "mix", lambda h: h & np.uint64(3))  # vocabulary and text tokens
        assert_all_agree(entries, texts)


@pytest.mark.parametrize("degenerate_hash", [False, True])
def test_tokens_equal_but_for_one_byte_never_confused(degenerate_hash):
    """Tokens of equal length differing in one byte anywhere (first word, middle, last word)."""
    base = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"
    entries, texts = [], []
    for length in (1, 7, 8, 9, 16, 17, 24, 25, 33, 40):
        word = base[:length]
        for pos in sorted({0, length // 2, length - 1}):
            entries.append(word[:pos] + "_" + word[pos + 1:])
        texts.append(word)
        texts.append(entries[-1] + " " + word)
    with pytest.MonkeyPatch.context() as mp:
        if degenerate_hash:
            mp.setattr(fastmatch, "mix", lambda h: h & np.uint64(1))
            mp.setattr(hashing, "mix", lambda h: h & np.uint64(1))
        assert_all_agree(entries, texts)
        assert_all_agree(entries + [t for t in texts if " " not in t], texts)


def test_nested_overlapping_duplicate_and_odd_entries():
    entries = ["hot dog", "hot", "dog", "hot dog", "", " a", "a  b", ".", "a.b", "x\ty",
               "abcdefghXXXXXXXXXijklmnop", "é 日本", ",", "a .", "dog hot"]
    texts = ["I ate a hot dog, hot dog.", None, "", " ", "a  b", "x\ty", "a.b", "a. b",
             "abcdefghXXXXXXXXXijklmnop!", "abcdefghYYYYYYYYYijklmnop", "é 日本", "xx,yy"]
    assert_all_agree(entries, texts)
    fm = FastMatcher(entries)
    assert fm.n_never_match == 2  # "a.b" and "x\ty"
    assert fm.match("a hot dog") == [0, 1, 2, 3]  # equal entries: every id matches


def test_entries_spanning_rows_never_match():
    fm = FastMatcher(["end start", "end", "start"])
    assert fm.match_batch(["the end", "start here"]) == [[1], [2]]
    assert fm.match_arrow(pa.array(["the end", "start here"])).to_pylist() == [[1], [2]]


def test_lone_surrogates_in_match_batch():
    entries = ["a\ud800b", "b", "\udfff"]
    texts = ["x a\ud800b b", "\udfff.", None]
    assert FastMatcher(entries).match_batch(texts) == Matcher(entries).match_batch(texts)


def test_arrow_edge_shapes():
    fm = FastMatcher(["dog", ""])
    empty = fm.match_arrow(pa.array([], pa.string()))
    assert len(empty) == 0 and empty.type == pa.list_(pa.int32())
    assert fm.match_arrow(pa.array([None, None], pa.string())).to_pylist() == [[], []]
    assert fm.match_arrow(pa.nulls(3)).to_pylist() == [[], [], []]
    assert fm.match_arrow(pa.chunked_array([], pa.string())).to_pylist() == []
    assert fm.match_arrow(pa.array(["dog", "", None], pa.string_view())).to_pylist() == [[0], [1], []]
    assert fm.match_batch([]) == []


def test_larger_batch_equals_matcher():
    """Thousands of rows, so vectorised paths see long probe chains, many levels and batches."""
    rng = np.random.default_rng(7)
    words = np.array(_ref.WORDS + ["cat", "sat", "mat", "the", "on", "big", "red", "car"])
    entries = sorted({" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(400)})
    seps = np.array([" ", " ", " ", ", ", ". ", "\n", "  "])
    texts = []
    for _ in range(3000):
        k = int(rng.integers(0, 20))
        parts = [w + s for w, s in zip(rng.choice(words, size=k), rng.choice(seps, size=k))]
        texts.append("".join(parts) if rng.random() > 0.05 else None)
    ref = Matcher(entries).match_batch(texts)
    fm = FastMatcher(entries)
    assert fm.match_batch(texts) == ref
    assert fm.match_arrow(pa.array(texts)).to_pylist() == ref
    assert sum(map(len, ref)) > 3000  # the data really exercises matching


def test_get_fast_matcher_cache_and_fingerprint():
    a = get_fast_matcher(["x", "y"])
    assert get_fast_matcher(["x", "y"]) is a
    assert a.fingerprint == entries_fingerprint(["x", "y"])
    b = get_fast_matcher(["x", "z"], fingerprint=entries_fingerprint(["x", "z"]))
    assert b is not a and b.match("z") == [1]
    assert FastMatcher(["q"]).fingerprint == entries_fingerprint(["q"])


def test_compiled_matcher_file_matches_like_the_built_one(tmp_path):
    """save() + load(): the mapped tables give the built matcher's ids, read-only, with its fingerprint."""
    rng = np.random.default_rng(3)
    words = np.array(_ref.WORDS + ["cat", "sat", "mat", "the", "on", "big", "red", "car"])
    entries = sorted({" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(300)})
    entries += ["hot dog", "hot dog", "", "a.b", "é 日本", "abcdefghXXXXXXXXXijklmnop", "."]  # shared keys, odd ones
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 15)))) for _ in range(2000)]
    texts += ["I ate a hot dog, hot dog.", None, "", "é 日本 .", "abcdefghXXXXXXXXXijklmnop!"]
    built = FastMatcher(entries)
    path = built.save(str(tmp_path / "m.bin"))
    loaded = FastMatcher.load(path, built.fingerprint)
    expected = Matcher(entries).match_batch(texts)
    assert built.match_batch(texts) == expected
    assert loaded.match_batch(texts) == expected
    assert loaded.match_arrow(pa.array(texts * 2)).to_pylist() == expected * 2  # the repeated-text path
    assert sum(map(len, expected)) > 2000
    assert (loaded.n_entries, loaded.n_never_match, loaded.fingerprint) == (
        built.n_entries, built.n_never_match, built.fingerprint)
    assert loaded.entries is None
    with pytest.raises(ValueError):  # the mapping is read-only: no task can corrupt it for the next
        loaded._slot_vid[0] = 1
    assert fastmatch.load_fast_matcher(path, built.fingerprint) is fastmatch.load_fast_matcher(path, built.fingerprint)


def test_compiled_matcher_errors_name_the_file(tmp_path):
    path = FastMatcher(["dog"]).save(str(tmp_path / "m.bin"))
    with pytest.raises(InputError, match="other metadata"):
        FastMatcher.load(path, entries_fingerprint(["cat"]))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a matcher")
    with pytest.raises(InputError, match="bad.bin is not a compiled"):
        FastMatcher.load(str(bad))
    with open(path, "rb") as f:
        data = f.read()
    newer = data.replace(f'"format": {fastmatch.COMPILED_FORMAT}'.encode(), b'"format": 9', 1)  # same length
    assert newer != data
    (tmp_path / "newer.bin").write_bytes(newer)
    with pytest.raises(InputError, match="rebuild it"):
        FastMatcher.load(str(tmp_path / "newer.bin"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic save left no temp


def test_bad_entries_raise_input_error():
    with pytest.raises(InputError, match="empty"):
        FastMatcher([])
    with pytest.raises(InputError, match="expected a string"):
        FastMatcher(["ok", None])


@pytest.mark.slow  # Python worker start-up; ~45 s on a loaded 2-core machine
def test_spark_map_in_arrow_uses_fast_matcher(spark):
    """The way the match job calls it: Arrow batches in (Spark's string/large_string), list<int> out."""
    entries = ["hot dog", "hot", "dog", "ice cream", "."]
    texts = ["a hot dog.", None, "ICE cream", "ice cream, hot", "", "dog\tdog"] * 5
    fingerprint = entries_fingerprint(entries)

    def match_batches(batches):
        matcher = get_fast_matcher(entries, fingerprint)  # built once per Python worker
        for batch in batches:
            ids = matcher.match_arrow(batch.column("text"))
            yield pa.RecordBatch.from_arrays([batch.column("i"), ids], names=["i", "entry_ids"])

    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i long, text string").repartition(2)
    rows = df.mapInArrow(match_batches, "i long, entry_ids array<int>").collect()
    got = {r["i"]: list(r["entry_ids"]) for r in rows}
    assert [got[i] for i in range(len(texts))] == Matcher(entries).match_batch(texts)
