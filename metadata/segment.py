"""Tokenisers of Wikipedia text per language: which strings become unigrams, and which pairs bigrams.

Every tokeniser turns plain text into a list of tokens with ``""`` wherever a run of tokens breaks
(the format of :func:`metadata.wiki.tokens_with_breaks`): bigrams are only formed between two
tokens with no ``""`` between them. Tokens without a letter (numbers) are never counted.

Why these choices (MetaCLIP 2, ``metaclip/metadata/build_ngram.py`` and ``lang_tokenizers/``):

* ``words_lower``: MetaCLIP 1's English rule, the one this project always used (lowercased runs of
  letters/digits with inner ``'`` or ``-``; punctuation, line breaks and numbers break runs). It
  is English's default and is not changed, so an English build stays byte-identical.
* ``words``: the same runs with their case kept, and combining marks kept inside words (Python's
  ``\\w`` leaves out the vowel signs of Devanagari, Thai, ...; without them Hindi words would be
  cut at every vowel sign). Default of every other language written with spaces: MetaCLIP 2 keeps
  the case of non-English unigrams, and matching is case-sensitive, so German ``Hund`` must stay
  ``Hund`` to match German captions.
* Languages written without spaces: MetaCLIP 2 segments zh with CKIP (a BERT model: a model
  download and a GPU), ja with MeCab + IPAdic in wakati mode, th with thai-segmenter, and joins a
  bigram's two words *without* a space. Here, with dictionaries that ship inside their pip
  packages (nothing is downloaded at run time): ``jieba`` for zh (dictionary-based, ~200k
  characters/s per core), ``mecab`` for ja (mecab-python3 + ipadic: MetaCLIP 2's own) and
  ``thai`` for th (pythainlp's ``newmm`` with its bundled dictionary, ~900k characters/s, where
  thai-segmenter, MetaCLIP 2's choice, measured ~11k on the same text). ``chars`` (each Han/kana
  character one token; bigrams by PMI then make the two-character words) needs no package and
  suits Chinese and Japanese only. The text is first cut into chunks at white space and
  punctuation (a pair written with a space between is not one word in these scripts), then each
  chunk is segmented.

A tokeniser is built once per process (:func:`tokenizer`), so a Spark worker loads a dictionary
once, not per task.
"""
from __future__ import annotations

import logging
import re
import sys
import unicodedata
from functools import lru_cache
from typing import Callable

from curation.errors import InputError
from metadata.wiki import tokens_with_breaks

Tokenizer = Callable[[str], list]

#: English's tokeniser (MetaCLIP 1); every other language with spaces gets ``words``.
ENGLISH = "words_lower"
CASED = "words"
#: name -> (what it is, the pip packages it needs)
SEGMENTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "words_lower": ("lowercased words (MetaCLIP 1 English)", ()),
    "words": ("words, case kept (languages written with spaces)", ()),
    "chars": ("one token per Han/kana character (zh/ja without a segmenter)", ()),
    "jieba": ("jieba word segmenter (zh)", ("jieba",)),
    "mecab": ("MeCab + IPAdic, wakati (ja)", ("mecab-python3", "ipadic")),
    "thai": ("pythainlp newmm (th)", ("pythainlp",)),
}
#: Segmenters whose bigram entries are the two words with no space between (MetaCLIP 2's rule for
#: languages written without spaces).
JOINED = frozenset({"chars", "jieba", "mecab", "thai"})
DEFAULTS = {"en": ENGLISH, "zh": "jieba", "ja": "mecab", "th": "thai"}
#: Written without spaces, with no segmenter here: the user must choose (``words`` would make each
#: phrase one token, ``chars`` each letter one token).
NO_DEFAULT = frozenset({"bo", "dz", "km", "lo", "my"})


def default_segmenter(lang: str) -> str | None:
    """The tokeniser a language gets unless ``metadata.segmenters`` names one; None: must be named."""
    if lang in DEFAULTS:
        return DEFAULTS[lang]
    return None if lang in NO_DEFAULT else CASED


def bigram_joiner(name: str) -> str:
    """What goes between a bigram's two words in its entry."""
    return "" if name in JOINED else " "


# --------------------------------------------------------------------------------------------
# character classes
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _marks_class() -> str:
    """Every combining mark (Unicode category M*) as regex class ranges (built once, ~0.3 s)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp))[0] == "M":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@lru_cache(maxsize=1)
def _cased_pattern() -> re.Pattern:
    marks = _marks_class()
    seg = rf"(?!\b\d+\b)(?:[^\W_]|[{marks}])+"
    return re.compile(rf"({seg}(?:['\u2019\-]{seg})*)|\b\d+\b|\n|[^\w\s'\u2019\-{marks}]+")


@lru_cache(maxsize=1)
def _chunk_pattern() -> re.Pattern:
    """Maximal runs of letters, digits and marks: white space and punctuation cut between them."""
    return re.compile(rf"(?:[^\W_]|[{_marks_class()}])+")


_HAN_KANA = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"
                       r"\U00020000-\U0003134f])")


def _has_letter(token: str) -> bool:
    return any(c.isalpha() for c in token)


# --------------------------------------------------------------------------------------------
# the tokenisers
# --------------------------------------------------------------------------------------------
def cased_words(text: str) -> list[str]:
    """``words``: the English runs, case kept, combining marks kept inside words."""
    return _cased_pattern().findall(text)


def _segmented(text: str, segment: Callable[[str], list]) -> list[str]:
    """Cut at white space and punctuation, segment each chunk, break at every token without a
    letter (numbers) and between chunks."""
    out: list[str] = []
    for chunk in _chunk_pattern().findall(text):
        for tok in segment(chunk):
            tok = tok.strip()
            if tok and _has_letter(tok):
                out.append(tok)
            elif out and out[-1]:
                out.append("")
        if out and out[-1]:
            out.append("")
    return out


def _chars_segment(chunk: str) -> list[str]:
    """Han and kana characters one token each; runs of other letters stay whole."""
    return [p for p in _HAN_KANA.split(chunk) if p]


def _jieba_segment() -> Callable[[str], list]:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter goes to stderr otherwise
    tk = jieba.Tokenizer()
    tk.initialize()
    return lambda chunk: tk.lcut(chunk, cut_all=False, HMM=True)


def _mecab_segment() -> Callable[[str], list]:
    import ipadic
    import MeCab

    tagger = MeCab.Tagger(ipadic.MECAB_ARGS + " -Owakati")
    return lambda chunk: tagger.parse(chunk).split()


def _thai_segment() -> Callable[[str], list]:
    from pythainlp.tokenize import word_tokenize

    return lambda chunk: word_tokenize(chunk, engine="newmm", keep_whitespace=False)


_LOADERS: dict[str, Callable[[], Callable[[str], list]]] = {
    "jieba": _jieba_segment, "mecab": _mecab_segment, "thai": _thai_segment}


def check_available(name: str, lang: str) -> None:
    """Raise an InputError naming the pip packages when segmenter ``name`` cannot be loaded."""
    if name not in SEGMENTERS:
        raise InputError(f"metadata.segmenters.{lang}: unknown tokeniser {name!r}; one of {sorted(SEGMENTERS)}")
    if name in _LOADERS:
        try:
            tokenizer(name)
        except ImportError as exc:
            packages = " ".join(SEGMENTERS[name][1])
            raise InputError(f"language {lang!r} is tokenised with {name!r}, which needs `pip install {packages}` "
                             f"(on the driver and every Spark executor): {exc}; or choose another tokeniser "
                             f"with `metadata.segmenters: {{{lang}: chars}}`") from exc


def package_versions(name: str) -> dict[str, str | None]:
    """The installed versions of the packages a tokeniser uses (its dictionary decides the words,
    so a build fingerprints them); None for a package that is not installed."""
    from importlib import metadata as importlib_metadata

    out: dict[str, str | None] = {}
    for package in SEGMENTERS[name][1]:
        try:
            out[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            out[package] = None
    return out


@lru_cache(maxsize=None)
def tokenizer(name: str) -> Tokenizer:
    """The tokeniser called ``name`` (built once per process: dictionaries load once)."""
    if name == ENGLISH:
        return tokens_with_breaks
    if name == CASED:
        return cased_words
    if name == "chars":
        return lambda text: _segmented(text, _chars_segment)
    if name in _LOADERS:
        segment = _LOADERS[name]()
        return lambda text: _segmented(text, segment)
    raise InputError(f"unknown tokeniser {name!r}; one of {sorted(SEGMENTERS)}")

