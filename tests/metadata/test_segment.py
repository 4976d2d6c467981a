"""Tokenisers per language (metadata.segment) and counting with them (no Spark)."""
from __future__ import annotations

import pytest

from curation.errors import InputError
from metadata import segment, wiki
from metadata.ngram_arrow import count_texts, merge_count_tables


def test_english_keeps_its_rule_other_languages_keep_case_and_marks():
    assert segment.tokenizer("words_lower") is wiki.tokens_with_breaks
    words = segment.tokenizer("words")
    assert words("Der Hund läuft über die Straße.\nNew York") == [
        "Der", "Hund", "läuft", "über", "die", "Straße", "", "", "New", "York"]
    # Devanagari vowel signs are marks, not \w: the word stays whole (English's rule cuts it)
    assert words("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
    assert "हिन्दी" not in wiki.tokens_with_breaks("हिन्दी भाषा")
    assert words("don't 1999 T-shirt") == ["don't", "", "T-shirt"]


def test_defaults_and_joiners():
    assert segment.default_segmenter("en") == "words_lower"
    assert segment.default_segmenter("de") == "words"
    assert segment.default_segmenter("zh") == "jieba" and segment.default_segmenter("ja") == "mecab"
    assert segment.default_segmenter("th") == "thai" and segment.default_segmenter("km") is None
    assert segment.bigram_joiner("jieba") == "" and segment.bigram_joiner("words") == " "


def test_chars_cuts_han_and_kana_and_breaks_at_spaces_numbers_and_punctuation():
    chars = segment.tokenizer("chars")
    assert chars("北京大学，图书馆 iPhone手机 1949年") == [
        "北", "京", "大", "学", "", "图", "书", "馆", "", "iPhone", "手", "机", "", "年", ""]


def test_missing_package_names_the_pip_install(monkeypatch):
    def broken():
        raise ImportError("No module named 'jieba'")

    monkeypatch.setitem(segment._LOADERS, "jieba", broken)
    segment.tokenizer.cache_clear()
    try:
        with pytest.raises(InputError, match=r"pip install jieba.*segmenters: \{zh: chars\}"):
            segment.check_available("jieba", "zh")
    finally:
        segment.tokenizer.cache_clear()
    with pytest.raises(InputError, match="unknown tokeniser"):
        segment.check_available("nope", "zh")


def test_jieba_words_from_unspaced_text():
    pytest.importorskip("jieba")
    tok = segment.tokenizer("jieba")
    assert tok("北京大学的学生在图书馆里看书。我们喜欢吃冰淇淋") == [
        "北京大学", "的", "学生", "在", "图书馆", "里", "看书", "", "我们", "喜欢", "吃", "冰淇淋", ""]


def test_mecab_and_thai_segmenters():
    pytest.importorskip("MeCab")
    pytest.importorskip("ipadic")
    assert segment.tokenizer("mecab")("東京大学の学生は図書館で本を読みます。") == [
        "東京大学", "の", "学生", "は", "図書館", "で", "本", "を", "読み", "ます", ""]
    pytest.importorskip("pythainlp")
    assert segment.tokenizer("thai")("ฉันชอบกินไอศกรีม ประเทศไทย") == [
        "ฉัน", "ชอบ", "กิน", "ไอศกรีม", "", "ประเทศ", "ไทย", ""]


def test_arrow_counts_equal_the_reference_with_any_tokeniser():
    texts = ["北京大学，图书馆 iPhone手机。", "图书馆图书馆 [[北京|北京]]大学", "Der Hund\n''Hund'' Katze"]
    for name in ("chars", "words"):
        tok = segment.tokenizer(name)
        ref = wiki.NgramCounts.empty(tok)
        for t in texts:
            ref.add_page(t)
        table = merge_count_tables(list(count_texts(texts, flush_pairs=2, tokenize=tok))).to_pylist()
        uni = {r["w1"]: r["c"] for r in table if r["kind"] == 0}
        bi = {(r["w1"], r["w2"]): r["c"] for r in table if r["kind"] == 1}
        totals = {r["w1"]: r["c"] for r in table if r["kind"] == 2}
        assert uni == dict(ref.unigrams) and bi == dict(ref.bigrams), name
        assert totals["n_unigrams"] == ref.n_unigrams and totals["n_bigrams"] == ref.n_bigrams
