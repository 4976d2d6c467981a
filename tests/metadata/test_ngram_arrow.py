"""The vectorised counter and the bucketed sum agree with the plain reference (no Spark)."""
from __future__ import annotations

import random

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from metadata import ngram_arrow as na
from metadata import wiki

ALPHABET = "ab cé_-'\u2019\n12.,;Z9 x-1 \t"


def _runs_from_breaks(text: str) -> list[list[str]]:
    runs, cur = [], []
    for tok in wiki.tokens_with_breaks(text):
        if tok:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_one_scan_tokeniser_equals_token_runs(text):
    assert _runs_from_breaks(text) == list(wiki.token_runs(text))


def test_tokeniser_edge_cases_by_hand():
    # numbers are dropped and break runs, also inside hyphen/apostrophe compounds
    assert _runs_from_breaks("ab-12-cd x'12 a_12 3d 1990 New\nYork") == [
        ["ab"], ["cd", "x"], ["a", "12", "3d"], ["new"], ["york"]]


def _table_dict(table: pa.Table) -> tuple[dict, dict, dict]:
    d = table.to_pydict()
    uni, bi, tot = {}, {}, {}
    for k, w1, w2, c in zip(d["kind"], d["w1"], d["w2"], d["c"]):
        target = uni if k == na.KIND_UNIGRAM else bi if k == na.KIND_BIGRAM else tot
        key = (w1, w2) if k == na.KIND_BIGRAM else w1
        assert key not in target, f"duplicate key {key}"
        target[key] = c
    return uni, bi, tot


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "new", "york", "hot", "dog", "café", "t-shirt", "don't"]
    out = []
    for _ in range(n):
        parts = [rng.choice(words + [",", ".", "\n", "42", "'''"]) for _ in range(rng.randint(0, 30))]
        out.append("[[Link|" + rng.choice(words) + "]] " + " ".join(parts))
    return out


def test_counter_with_flushes_and_buckets_sums_to_the_reference():
    texts = _texts(300, seed=3)
    ref = wiki.NgramCounts.empty()
    for t in texts:
        ref.add_page(t)
    # tiny chunk / flush sizes: many vectorised passes, merges and partial tables
    partials = list(na.count_texts(texts, chunk_tokens=50, flush_pairs=20))
    assert len(partials) > 3
    blobs = [(b, na.to_ipc(part)) for table in partials for b, part in na.split_buckets(table, 7)]
    by_bucket: dict[int, list[pa.Table]] = {}
    for b, blob in blobs:
        by_bucket.setdefault(b, []).append(na.from_ipc(blob))
    assert len(by_bucket) == 7
    merged = [na.merge_count_tables(tables) for tables in by_bucket.values()]
    uni, bi, tot = _table_dict(pa.concat_tables(merged))  # also: no key in two buckets
    assert uni == dict(ref.unigrams)
    assert bi == dict(ref.bigrams)
    assert tot == {"n_unigrams": ref.n_unigrams, "n_bigrams": ref.n_bigrams, "articles": 300}


def test_buckets_are_stable_and_drop_rare_keeps_what_pmi_needs():
    table = next(na.count_texts(_texts(50, seed=4)))
    again = next(na.count_texts(list(reversed(_texts(50, seed=4)))))  # other ids, same keys
    key = lambda t, b: {(k, w1, w2): int(x) for k, w1, w2, x in zip(
        t.column("kind").to_pylist(), t.column("w1").to_pylist(), t.column("w2").to_pylist(), b)}
    assert key(table, na.key_buckets(table, 5)) == key(again, na.key_buckets(again, 5))
    kept = na.drop_rare(table, min_unigram=3, min_bigram=4)
    uni, bi, tot = _table_dict(kept)
    all_uni, all_bi, _ = _table_dict(table)
    assert bi == {k: c for k, c in all_bi.items() if c >= 4}
    assert uni == {k: c for k, c in all_uni.items() if c >= 3}
    assert set(tot) == {"n_unigrams", "n_bigrams", "articles"}
    assert all(a in uni and b in uni for a, b in bi)
