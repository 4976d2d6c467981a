"""Matching rule ``metaclip2`` (MetaCLIP 2 "worldwide"): the reference ``Matcher`` and ``FastMatcher``
against a naive reading of MetaCLIP 2's ``substr_match(text.strip())`` (ARCHITECTURE.md, "Matching").

The naive reference builds each key exactly as MetaCLIP 2's ``get_spaced_metadata`` does and tests
``key in spacing(text.strip())`` entry by entry; the character classes it uses are pinned
separately, character by character, at every range boundary.
"""
from __future__ import annotations

import importlib.util
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curation.fastmatch as fastmatch
import curation.hashing as hashing
from curation.errors import InputError
from curation.fastmatch import FastMatcher, get_fast_matcher, load_fast_matcher
from curation.matching import (Matcher, entries_fingerprint, entry_key, get_matcher, matcher_fingerprint,
                               metaclip2_reading, never_matches)
from curation.textrules import EXTRA_PUNCTUATION, is_unspaced, unspaced_mask


def _load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"_metacurate_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ref = _load_sibling("test_matching")
_fast = _load_sibling("test_fastmatch")
RULE = "metaclip2"


# --------------------------------------------------------------------------- the naive reading
def naive_key(entry: str) -> str:
    """MetaCLIP 2's ``get_spaced_metadata`` for one entry."""
    key = entry
    if not is_unspaced(key[0]):
        key = " " + key
    if not is_unspaced(key[-1]):
        key = key + " "
    return key


def naive_match2(entries: list[str], texts: list[str | None]) -> list[list[int]]:
    """MetaCLIP 2's ``substr_match(txt.strip())``, ids sorted, entry by entry."""
    keys = [naive_key(e) for e in entries]
    out = []
    for t in texts:
        if t is None:
            out.append([])
            continue
        spaced = _ref.naive_normalize(t.strip())
        out.append([i for i, k in enumerate(keys) if k in spaced])
    return out


def assert_all_agree2(entries: list[str], texts: list[str | None]) -> list[list[int]]:
    expected = naive_match2(entries, texts)
    assert Matcher(entries, rule=RULE).match_batch(texts) == expected
    fm = FastMatcher(entries, rule=RULE)
    assert fm.match_batch(texts) == expected
    if not any(isinstance(t, str) and any(0xD800 <= ord(c) < 0xE000 for c in t) for t in texts):
        for name, got in _fast.arrow_ids(fm, texts).items():  # Arrow strings cannot hold surrogates
            assert got == expected, name
    return expected


# --------------------------------------------------------------------------- character classes
#: (character, unspaced?) at every edge of MetaCLIP 2's ranges and lists, read off its code.
BOUNDARIES = [
    ("\u4dff", False), ("\u4e00", True), ("\u9fff", True), ("\ua000", False),  # CJK Unified
    ("\u33ff", False), ("\u3400", True), ("\u4dbf", True),  # Extension A
    ("\U00020000", True), ("\U0002a6df", True), ("\U0002a6e0", False), ("\U0002a6ff", False),  # B, gap
    ("\U0002a700", True), ("\U0002b73f", True), ("\U0002b740", True), ("\U0002b81f", True),  # C, D
    ("\U0002b820", True), ("\U0002ceaf", True), ("\U0002ceb0", True), ("\U0002ebef", True),  # E, F
    ("\U0002ebf0", False), ("\U0002f800", False), ("\U00030000", False),  # compat supplement, G: not listed
    ("\uf8ff", False), ("\uf900", True), ("\ufaff", True), ("\ufb00", False),  # compatibility ideographs
    ("\u2e7f", False), ("\u2e80", True), ("\u2eff", True), ("\u2f00", True), ("\u2fdf", True),
    ("\u2fe0", False), ("\u2fef", False), ("\u2ff0", True), ("\u2fff", True),  # radicals, IDC
    ("\u0dff", False), ("\u0e00", True), ("\u0e7f", True), ("\u0e80", True), ("\u0eff", True),  # Thai, Lao
    ("\u0f00", True), ("\u0fff", True), ("\u1000", True), ("\u109f", True), ("\u10a0", False),  # Tibetan, Burmese
    ("\u177f", False), ("\u1780", True), ("\u17ff", True), ("\u1800", False),  # Khmer
    ("\u3040", False), ("\u3042", False), ("\u30a2", False), ("\u30fc", False), ("\uff71", False),  # kana
    ("\uac00", False), ("\u1100", False),  # Hangul
    ("\u3000", False), ("\u3001", True), ("\u3002", True), ("\u3003", False), ("\u3007", False),
    ("\u3008", True), ("\u3011", True), ("\u3012", False), ("\u3014", False),  # CJK symbols: only the listed
    ("\uff01", True), ("\uff08", True), ("\uff09", True), ("\uff0c", True), ("\uff0d", False),
    ("\uff1a", True), ("\uff1b", True), ("\uff1f", True), ("\uff5e", True), ("\uff5b", False),
    ("\u2014", True), ("\u2013", False), ("\u2018", True), ("\u2019", True), ("\u201c", True),
    ("\u201d", True), ("\u201e", False), ("\u2026", False), ("\u00b7", False), ("\u00bf", False),
    ("a", False), ("Z", False), ("0", False), ("é", False), (" ", False), ("\t", False),
    ("\u00a0", False), ("\u0627", False), ("\u05d0", False),
]


@pytest.mark.parametrize("ch,expected", BOUNDARIES, ids=[f"U+{ord(c):04X}" for c, _ in BOUNDARIES])
def test_unspaced_characters_at_every_boundary(ch, expected):
    assert is_unspaced(ch) is expected
    assert bool(unspaced_mask(np.array([ord(ch)]))[0]) is expected


def test_punctuation_lists():
    assert all(is_unspaced(c) for c in string.punctuation)
    assert len(EXTRA_PUNCTUATION) == len(set(EXTRA_PUNCTUATION)) == 25
    assert all(is_unspaced(c) for c in EXTRA_PUNCTUATION)


def test_unspaced_mask_equals_scalar_rule():
    cps = np.arange(0x31000)
    expected = np.array([is_unspaced(chr(c)) for c in cps.tolist()])
    assert (unspaced_mask(cps) == expected).all()


def _rows(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    arr = pa.array([t.encode("utf-8", "surrogatepass") for t in texts], pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[: len(texts) + 1]
    return np.frombuffer(arr.buffers()[2], np.uint8)[: offsets[-1]], offsets


def test_fast_strip_is_python_strip_for_every_code_point():
    """FastMatcher strips by byte patterns: exactly str.strip()'s set, leading, trailing, repeated."""
    cps = np.arange(0x110000)
    space = np.frombuffer(bytes(chr(c).isspace() for c in range(0x110000)), np.bool_)
    assert not space[0x10000:].any()  # the byte patterns stop at U+FFFF
    # Row c is chr(c) chr(c) "a" chr(c), cut out of one encoding of every code point (fast).
    source = np.frombuffer("".join(map(chr, range(0x110000))).encode("utf-8", "surrogatepass") + b"a", np.uint8)
    utf8_len = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    at = np.cumsum(utf8_len) - utf8_len
    starts = np.stack([at, at, np.full_like(at, len(source) - 1), at], axis=1).reshape(-1)
    lens = np.stack([utf8_len, utf8_len, np.ones_like(at), utf8_len], axis=1).reshape(-1)
    data = source[np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))]
    rel = np.concatenate([[0], np.cumsum(3 * utf8_len + 1)])
    got = np.diff(fastmatch._strip_rows(data, rel)[1])
    expected = np.where(space, 1, 3 * utf8_len + 1)
    assert (got == expected).all(), [hex(c) for c in cps[got != expected][:10]]
    odd = ["", " ", "\u3000 \u00a0", " a b ", "\x85北京\u2028", "a\u200b", "\ud800 ", " \udfff", "\x1c\x1d\x1e\x1f"]
    data, rel = _rows(odd)
    new_data, new_rel = fastmatch._strip_rows(data, rel)
    assert [bytes(new_data[new_rel[i]:new_rel[i + 1]]).decode("utf-8", "surrogatepass") for i in range(len(odd))] \
        == [t.strip() for t in odd]


def test_invalid_utf8_never_crashes():
    """The match stage rejects invalid UTF-8 before matching; here ids are unspecified, but no error.
    (Not 0xFF / 0xFE: the token path joins rows with 0xFF, a byte valid UTF-8 never has.)"""
    raw = pa.array([b"\xbf\xe5\x8c\x97\xe4\xba\xac", b"\x80abc dog", b"\xe5\x8c", b"\xe5\x8c\x97\xe4\xba\xac\xe5",
                    b"(x)\xc3", b"\xc2", b"\xe2\x80", b"dog \xe3\x80"], pa.binary()).view(pa.string())
    for rule in ("metaclip1", RULE):
        got = FastMatcher(["北京", "dog", "(x)"], rule=rule).match_arrow(raw)
        assert len(got) == len(raw)


# --------------------------------------------------------------------------- the rule on tricky cases
def test_entry_keys():
    assert entry_key("dog", RULE) == " dog "
    assert entry_key("c++", RULE) == " c++"
    assert entry_key("(dog)", RULE) == "(dog)"
    assert entry_key("'s", RULE) == "'s "
    assert entry_key("Mercury (planet)", RULE) == " Mercury (planet)"
    assert entry_key("北京", RULE) == "北京"
    assert entry_key("食べる", RULE) == "食べる "  # kana is not in MetaCLIP 2's ranges
    assert entry_key("すし", RULE) == " すし "
    assert entry_key("iPhone 手机壳", RULE) == " iPhone 手机壳"
    assert entry_key("dog", "metaclip1") == " dog "
    assert "NameError" in metaclip2_reading()


CASES = [
    # (entry, text, matches under metaclip2, matches under metaclip1)
    ("c++", "I write c++", True, True),
    ("c++", "c++11 code", True, False),  # the unpadded right side is a raw substring
    ("c++", "cc++", False, False),
    ("(dog)", "hot(dog)s", True, False),
    ("(dog)", "( dog )", False, False),
    ("'s", "my dog's bowl", True, False),
    ("'s", "dog'sbowl", False, False),
    ("'hood", "the 'hood", True, True),
    ("'hood", "x'hood", True, False),
    ("'hood", "the 'hoods", False, False),
    ("Mercury (planet)", "Mercury (planet) at night", True, True),
    ("Mercury (planet)", "Mercury (planet)s", True, False),
    ("Mercury (planet)", "xMercury (planet)", False, False),
    ("北京", "我爱北京天安门", True, False),
    ("北京天安门", "我爱北京天安门", True, False),
    ("北京天安门", "我爱北京\t天安门", False, False),  # the tab became a space
    ("北京 天安门", "我爱北京\t天安门", True, False),
    ("（北京）", "我爱（北京）", True, False),  # fullwidth brackets are unspaced
    ("，", "你好，世界", True, False),
    ("“quote”", "a“quote”b", True, False),
    ("—", "a—b", True, False),
    ("-", "a-b", True, False),  # ASCII punctuation is unspaced on its own
    ("すし", "すしが好き", False, False),  # kana-only: padded both sides
    ("すし", "すし が好き", True, True),
    ("食べる", "寿司を食べる", True, False),
    ("食べる", "寿司を食べるよ", False, False),
    ("แมว", "ขายแมวน่ารัก", True, False),  # Thai
    ("ແມວ", "ຂາຍແມວ", True, False),  # Lao
    ("iPhone 手机壳", "新款 iPhone 手机壳套", True, False),
    ("iPhone 手机壳", "新款iPhone 手机壳套", False, False),
    ("القط", "صورة القط الأسود", True, True),  # Arabic is spaced
    ("القط", "صورةالقط", False, False),
    ("가방", "가방가게", False, False),  # Hangul is spaced
    ("dog", "dog\u00a0", True, False),  # str.strip() removes no-break space (metaclip2 strips)
    ("dog", "\u3000dog\u3000", True, False),  # and the ideographic space
    ("dog", "\x1cdog\x85", True, False),  # and the separators str.isspace() knows
    ("dog", "dog\u200b", False, False),  # zero-width space is not whitespace
    ("dog", "hot\u00a0dog", False, False),  # inside a caption it is no separator
    (" dog", " dog", False, True),  # the leading space is stripped before padding
    ("dog ", "hot dog ", False, True),
    ("dog", "hot dog.", True, True),
    ("dog.", "hot dog.", False, False),  # the wrapped "." is always spaced away
    (".", "a.b", True, True),  # the text spaces a wrapped character, so both rules find it
    ("?", "why?", True, True),
    ("`", "a`b", True, True),
    ("a , b", "a,b", True, True),
    ("a , b", "a, b", False, False),
    (", x", "a,x", True, True),
    (", x", "a,xy", False, False),
    ("x ,", "a x,", True, True),
    (". .", "..", False, False),  # two wrapped characters cannot share one space
    ("x:", "x:y", False, False),
]


@pytest.mark.parametrize("entry,text,m2,m1", CASES)
def test_tricky_cases(entry, text, m2, m1):
    entries = ["zzz", entry]
    assert (naive_match2(entries, [text])[0] == [1]) is m2
    assert (Matcher(entries, rule=RULE).match(text) == [1]) is m2
    assert (FastMatcher(entries, rule=RULE).match(text) == [1]) is m2
    assert (Matcher(entries).match(text) == [1]) is m1
    assert (FastMatcher(entries).match(text) == [1]) is m1


def test_all_tricky_cases_in_one_matcher():
    """Every case's entry in one list, every text in one batch (both engines, rows routed or not)."""
    entries = sorted({e for e, *_ in CASES})
    texts = [t for _, t, *_ in CASES] + [None, "", "   ", "plain english text", "dog"]
    got = assert_all_agree2(entries, texts)
    assert sum(map(len, got)) > 40  # the cases really match (many entries hit several texts)


def test_equal_entries_all_match():
    assert FastMatcher(["北京", "dog", "北京"], rule=RULE).match("北京dog") == [0, 2]
    assert Matcher(["北京", "dog", "北京"], rule=RULE).match("北京 dog") == [0, 1, 2]


def test_entries_spanning_rows_never_match():
    fm = FastMatcher(["京天", "北京", "天安门"], rule=RULE)
    assert fm.match_batch(["北京", "天安门"]) == [[1], [2]]
    assert fm.match_arrow(pa.array(["我爱北京", "天安门"] * 3)).to_pylist() == [[1], [2]] * 3


def test_only_character_entries_and_only_token_entries():
    assert_all_agree2(["北京", "(dog)"], ["我爱北京", "hot(dog)", "dog", None])
    assert_all_agree2(["dog", "hot dog"], ["我爱北京", "hot dog", None])


def test_lone_surrogates():
    entries = ["\ud800北京", "北京", "a\udfff", "\udfff"]
    texts = ["x\ud800北京y", "\udfff", "a\udfff b", None]
    assert_all_agree2(entries, texts)


# --------------------------------------------------------------------------- property tests
#: Pieces from many scripts, so entries and captions collide: CJK and Thai (unspaced), kana and
#: Hangul (spaced), Arabic, German, edge punctuation (ASCII and fullwidth), the wrapped characters,
#: long tokens (the word-by-word comparison), and strip-able / non-strip-able whitespace.
PIECES = ["dog", "hot", "Hot", "c", "c++", "+", "(dog)", "(", ")", "'s", "'", "hood", "Mercury",
          "北京", "北", "京", "我爱", "天安门", "爱", "すし", "食べる", "食", "る", "แมว", "ขาย", "ແມວ",
          "ကြောင်", "ឆ្មា", "བོད", "𠀀", "가방", "القط", "Zürich", "straße", "“", "”", "，", "。", "（",
          "）", "—", "～", "、", "-", "abcdefghij", "abcdefghik", *_ref.WRAPPED]
SEPS = [" ", "  ", "", "", "", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\x1c", "\x85", "\u2028", "\u200b"]
_char2 = st.sampled_from(list("ab 北京爱天(+).,;:?!`'，。“”\t\n\u00a0\u3000\u200bすแ"))
_piece_text = st.lists(st.sampled_from(PIECES + SEPS), max_size=14).map("".join)
texts2 = st.lists(st.one_of(st.none(), st.text(_char2, max_size=16), _piece_text), min_size=1, max_size=12)
_piece_entry = st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).flatmap(
    lambda ps: st.sampled_from(["", " ", "  "]).map(lambda glue: glue.join(ps)))
entries2 = st.lists(
    st.one_of(
        _piece_entry,
        st.text(_char2, min_size=1, max_size=5),
        st.sampled_from(["c++", "(dog)", "'s", "'hood", "Mercury (planet)", "北京", "北京 ", " 北京", ".",
                         ". .", "a .", ". a", "x\ty", " ", "\u3000", "dog.", "，北京"]),
    ),
    min_size=1,
    max_size=14,
)


@_ref.PROPERTY_SETTINGS
@given(entries2, texts2)
def test_fast_matcher_equals_matcher_and_naive_metaclip2(entries, texts):
    assert_all_agree2(entries, texts)


@settings(_ref.PROPERTY_SETTINGS, max_examples=100)
@given(entries2, texts2.filter(lambda ts: any(t is not None for t in ts)))
def test_metaclip2_exact_even_when_every_hash_collides(entries, texts):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastmatch, "mix", lambda h: h & np.uint64(3))
        mp.setattr(hashing, "mix", lambda h: h & np.uint64(3))
        assert_all_agree2(entries, texts)


def _witness(key: str) -> str:
    """A caption containing ``key`` when it can match: drop the space each wrapped character brings."""
    out, skip = [], set()
    for i, c in enumerate(key):
        if c in _ref.WRAPPED:
            skip.update({i - 1, i + 1})
    out = [c for i, c in enumerate(key) if i not in skip]
    return "x" + "".join(out) + "x"


@_ref.PROPERTY_SETTINGS
@given(st.one_of(_piece_entry, st.text(_char2, min_size=1, max_size=6)), st.sampled_from(["metaclip1", RULE]))
def test_never_matches_is_exact(entry, rule):
    can = Matcher([entry], rule=rule).match(_witness(entry_key(entry, rule))) == [0]
    assert can is not never_matches(entry, rule)
    # FastMatcher leaves such entries out: the character path by this exact test, the token path
    # by a weaker one (entries it keeps that cannot match simply never match).
    n_never = FastMatcher([entry], rule=rule).n_never_match
    if entry_key(entry, rule) != f" {entry} ":
        assert n_never == never_matches(entry, rule)
    else:
        assert n_never <= never_matches(entry, rule)


# --------------------------------------------------------------------------- larger data, compiled file
def _mixed_corpus(seed: int, n_texts: int) -> tuple[list[str], list[str | None]]:
    rng = np.random.default_rng(seed)
    pieces = np.array(PIECES + ["cat", "sat", "the", "on", "猫", "狗", "天", "安", "门"])
    entries = sorted({("" if rng.random() < 0.7 else " ").join(rng.choice(pieces, size=rng.integers(1, 4)))
                      for _ in range(400)})
    seps = np.array(SEPS + [" ", " ", ", ", ". "])
    texts: list[str | None] = []
    for _ in range(n_texts):
        k = int(rng.integers(0, 20))
        parts = [w + s for w, s in zip(rng.choice(pieces, size=k), rng.choice(seps, size=k))]
        texts.append("".join(parts) if rng.random() > 0.05 else None)
    return entries, texts


def test_larger_mixed_batch():
    entries, texts = _mixed_corpus(11, 3000)
    ref = Matcher(entries, rule=RULE).match_batch(texts)
    fm = FastMatcher(entries, rule=RULE)
    assert fm.match_batch(texts) == ref
    assert fm.match_arrow(pa.array(texts)).to_pylist() == ref
    assert sum(map(len, ref)) > 5000


def test_compiled_file_carries_the_rule(tmp_path):
    entries, texts = _mixed_corpus(5, 500)
    built = FastMatcher(entries, rule=RULE)
    assert built.fingerprint == matcher_fingerprint(entries, RULE) != entries_fingerprint(entries)
    assert FastMatcher(entries).fingerprint == matcher_fingerprint(entries) == entries_fingerprint(entries)
    path = built.save(str(tmp_path / "m2.bin"))
    loaded = FastMatcher.load(path, built.fingerprint, rule=RULE)
    expected = Matcher(entries, rule=RULE).match_batch(texts)
    assert loaded.rule == RULE and loaded.match_batch(texts) == expected
    assert loaded.match_arrow(pa.array(texts * 2)).to_pylist() == expected * 2
    with pytest.raises(ValueError):  # read-only mapping
        loaded._char_ids[0] = 1
    assert load_fast_matcher(path, built.fingerprint, rule=RULE).match_batch(texts) == expected
    with pytest.raises(InputError, match="rule 'metaclip2', not 'metaclip1'"):
        FastMatcher.load(path, rule="metaclip1")
    with pytest.raises(InputError, match="compiled for matching rule"):
        load_fast_matcher(path, built.fingerprint)  # the default rule is metaclip1
    path1 = FastMatcher(entries).save(str(tmp_path / "m1.bin"))
    with pytest.raises(InputError, match="rebuild it with rule='metaclip2'"):
        load_fast_matcher(path1, entries_fingerprint(entries), rule=RULE)
    with pytest.raises(InputError, match="other metadata"):
        FastMatcher.load(path, entries_fingerprint(entries), rule=RULE)


def test_caches_keep_rules_apart():
    a = get_fast_matcher(["北京"], rule=RULE)
    assert a.rule == RULE and a.match("我爱北京") == [0]
    b = get_fast_matcher(["北京"])
    assert b is not a and b.match("我爱北京") == []
    assert get_matcher(["北京"], rule=RULE).match("我爱北京") == [0]
    assert get_matcher(["北京"]).match("我爱北京") == []


def test_bad_rule_and_empty_entry():
    for make in (Matcher, FastMatcher):
        with pytest.raises(InputError, match="unknown matching rule 'metaclip3'"):
            make(["dog"], rule="metaclip3")
        with pytest.raises(InputError, match="#1 is the empty string.*remove it"):
            make(["dog", ""], rule=RULE)
    assert Matcher(["dog", ""]).match("a  b") == [1]  # metaclip1 keeps its empty-entry meaning
