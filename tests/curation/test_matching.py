"""MetaCLIP parity of ``curation.matching`` against a deliberately naive reference (ARCHITECTURE.md, "Matching").

The strategies and the naive reference here are also used by ``test_fastmatch.py`` (loaded by
path), so both matchers are held to the same independent definition.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.errors import InputError
from curation.matching import Matcher, get_matcher, load_metadata_json, normalize

WRAPPED = ",.;:?!`"

#: Words chosen so that entries and texts collide often: nesting ("hot dog"/"hot"/"dog"), case,
#: non-ASCII, the seven wrapped characters, and tokens longer than 8 and 16 bytes that share
#: their first/last 8 bytes (they stress FastMatcher's word-by-word comparison).
WORDS = ["a", "b", "ab", "A", "hot", "dog", "Hot", "é", "日本", "\x00", "ÿ",
         "abcdefghij", "abcdefghik", "abcdefgh12345678", "abcdefgh12345679",
         "abcdefghXXXXXXXXXijklmnop", "abcdefghYYYYYYYYYijklmnop", *WRAPPED]
SEPARATORS = [" ", "  ", "\t", "\n", "\r", "\r\n", ", ", ". ", ""]

# \x0b, \x0c and no-break space are NOT separators in MetaCLIP's normalisation
_char = st.sampled_from(list("ab AÄé日.,;:?!`\t\n\r\x0b\x0c\u00a0") + [" ", " "])
_word_text = st.lists(st.sampled_from(WORDS + SEPARATORS), max_size=14).map("".join)
texts_strategy = st.lists(
    st.one_of(st.none(), st.text(_char, max_size=16), _word_text), min_size=1, max_size=12
)
_word_entry = st.lists(st.sampled_from(WORDS + [""]), min_size=1, max_size=3).map(" ".join)
entries_strategy = st.lists(
    st.one_of(
        _word_entry,
        st.text(_char, max_size=5),
        st.sampled_from(["hot dog", "hot", "dog", "", " ", "  ", " a", "a ", "a  b", "a.b", ".",
                         "a .", ". a", "a\tb", "\n", "hot dog ."]),
    ),
    min_size=1,
    max_size=14,
)

PROPERTY_SETTINGS = settings(max_examples=250, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def naive_normalize(text: str) -> str:
    """MetaCLIP's ``spacing`` written out character by character (independent of the code under test)."""
    out = []
    for ch in text:
        if ch in WRAPPED:
            out.append(" " + ch + " ")
        elif ch in "\t\n\r":
            out.append(" ")
        else:
            out.append(ch)
    return " " + "".join(out) + " "


def naive_match(entries: list[str], texts: list[str | None]) -> list[list[int]]:
    """The definition itself: entry ``i`` matches when ``" "+e+" "`` is in the normalised text."""
    result = []
    for t in texts:
        if t is None:
            result.append([])
            continue
        n = naive_normalize(t)
        result.append([i for i, e in enumerate(entries) if " " + e + " " in n])
    return result


@PROPERTY_SETTINGS
@given(st.one_of(st.text(_char, max_size=30), _word_text))
def test_normalize_equals_naive_spacing(text):
    assert normalize(text) == naive_normalize(text)


@PROPERTY_SETTINGS
@given(entries_strategy, texts_strategy)
def test_matcher_equals_naive_reference(entries, texts):
    matcher = Matcher(entries)
    expected = naive_match(entries, texts)
    assert matcher.match_batch(texts) == expected
    for t, ids in zip(texts, expected):
        if t is not None:
            assert matcher.match(t) == ids


def test_nested_and_overlapping_entries():
    entries = ["hot dog", "hot", "dog", "dog hot", "cat"]
    m = Matcher(entries)
    assert m.match("a hot dog hot dog.") == [0, 1, 2, 3]
    assert m.match("Hot Dog") == []  # no case folding
    assert m.match("hotdog") == []


def test_wrapped_characters_and_whitespace():
    m = Matcher(["dog", "dog.", ".", "a  b", "x\ty", ""])
    assert m.match("dog.") == [0, 2, 5]  # "." is its own token; "dog." can never match
    assert m.match("a\tb") == []
    assert m.match("a  b") == [3, 5]
    assert m.match("x\ty") == []  # tab became a space
    assert m.match("dog") == [0]  # the empty entry needs two spaces in a row


def test_equal_entries_all_match():
    m = Matcher(["dog", "cat", "dog"])
    assert m.match("dog and cat") == [0, 1, 2]


def test_lone_surrogate_text_and_entry():
    m = Matcher(["a\ud800b", "b"])
    assert m.match_batch(["x a\ud800b b", None]) == [[0, 1], []]


def test_get_matcher_caches_per_fingerprint():
    a = get_matcher(["x", "y"])
    assert get_matcher(["x", "y"]) is a
    b = get_matcher(["x", "z"])
    assert b is not a and b.match("z") == [1]


def test_bad_entries_raise_input_error():
    with pytest.raises(InputError, match="empty"):
        Matcher([])
    with pytest.raises(InputError, match="expected a string"):
        Matcher(["ok", 3])


def test_load_metadata_json(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps(["dog", "hot dog"]), encoding="utf-8")
    assert load_metadata_json(str(good)) == ["dog", "hot dog"]
    cases = {"[]": "empty", '{"a": 1}': "JSON list", '["a", ""]': "empty string",
             '["a", 1]': "must be a string", "not json": "not valid"}
    for i, (content, message) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.json"
        p.write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=message):
            load_metadata_json(str(p))
    with pytest.raises(InputError, match="not found"):
        load_metadata_json(str(tmp_path / "missing.json"))
