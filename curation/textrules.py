"""The matching rules and the character classes they need (ARCHITECTURE.md, "Matching").

Two rules decide how an entry is spaced before the substring test (the text is always spaced by
``curation.matching.normalize``, the same ``spacing()`` in MetaCLIP 1 and 2):

* ``metaclip1`` (the default): every entry is padded, ``" " + e + " "``;
* ``metaclip2`` ("worldwide"): a side of the entry whose edge character is *unspaced* (see
  :func:`is_unspaced`) is left unpadded, so ``"北京"`` matches inside ``"我爱北京天安门"`` and
  ``"(dog)"`` inside ``"hot(dog)s"``; the caption is ``str.strip()``-ped before spacing.

What "unspaced" means is read off MetaCLIP 2's ``metaclip/curation/substr_matching.py``
(``is_cjk_or_similar``): Python's ``string.punctuation``, 25 CJK / fullwidth punctuation marks,
and fixed code-point ranges for CJK ideographs and the Thai, Lao, Burmese, Khmer and Tibetan
blocks. The ranges are MetaCLIP 2's own, gaps included: kana (U+3040-30FF), Hangul, the CJK
symbols block (U+3000-303F, apart from the listed marks) and CJK Compatibility Ideographs
Supplement (U+2F800-2FA1F) are *not* unspaced, so a kana-only Japanese entry stays padded.
Kept here as data so that the reference matcher, the fast matcher and the tests share one list.
"""
from __future__ import annotations

import string

import numpy as np

from curation.errors import InputError

RULES = ("metaclip1", "metaclip2")
DEFAULT_RULE = "metaclip1"

#: The CJK / fullwidth punctuation MetaCLIP 2 adds to ``string.punctuation``.
EXTRA_PUNCTUATION = (
    "\uff0c"  # FULLWIDTH COMMA
    "\u3002"  # IDEOGRAPHIC FULL STOP
    "\u3001"  # IDEOGRAPHIC COMMA
    "\uff1b"  # FULLWIDTH SEMICOLON
    "\uff1a"  # FULLWIDTH COLON
    "\uff1f"  # FULLWIDTH QUESTION MARK
    "\uff01"  # FULLWIDTH EXCLAMATION MARK
    "\u201c\u201d"  # LEFT / RIGHT DOUBLE QUOTATION MARK
    "\u2018\u2019"  # LEFT / RIGHT SINGLE QUOTATION MARK
    "\uff08\uff09"  # FULLWIDTH LEFT / RIGHT PARENTHESIS
    "\u3010\u3011"  # LEFT / RIGHT BLACK LENTICULAR BRACKET
    "\u300a\u300b"  # LEFT / RIGHT DOUBLE ANGLE BRACKET
    "\u3008\u3009"  # LEFT / RIGHT ANGLE BRACKET
    "\u300c\u300d"  # LEFT / RIGHT CORNER BRACKET
    "\u300e\u300f"  # LEFT / RIGHT WHITE CORNER BRACKET
    "\uff5e"  # FULLWIDTH TILDE
    "\u2014"  # EM DASH
)
PUNCTUATION = frozenset(string.punctuation) | frozenset(EXTRA_PUNCTUATION)

#: Inclusive code-point ranges of the scripts MetaCLIP 2 writes without spaces between words.
UNSPACED_RANGES = (
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x20000, 0x2A6DF),  # CJK Extension B
    (0x2A700, 0x2B73F),  # CJK Extension C
    (0x2B740, 0x2B81F),  # CJK Extension D
    (0x2B820, 0x2CEAF),  # CJK Extension E
    (0x2CEB0, 0x2EBEF),  # CJK Extension F (and I)
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x2E80, 0x2EFF),  # CJK Radicals Supplement
    (0x2F00, 0x2FDF),  # Kangxi Radicals
    (0x2FF0, 0x2FFF),  # Ideographic Description Characters
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar (Burmese)
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
)

_PUNCT_CPS = np.array(sorted(ord(c) for c in PUNCTUATION), dtype=np.int64)


def check_rule(rule: str) -> str:
    """``rule`` itself when known; an :class:`InputError` naming the choices otherwise."""
    if rule not in RULES:
        raise InputError(f"unknown matching rule {rule!r}: use one of {', '.join(RULES)}")
    return rule


def is_unspaced(ch: str) -> bool:
    """MetaCLIP 2's ``is_cjk_or_similar`` for one character: an entry side ending in it is not padded."""
    if ch in PUNCTUATION:
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in UNSPACED_RANGES)


def unspaced_mask(cps: np.ndarray) -> np.ndarray:
    """:func:`is_unspaced` over an integer array of code points (vectorised, for 500k entries)."""
    cps = np.asarray(cps, dtype=np.int64)
    out = np.isin(cps, _PUNCT_CPS)
    for lo, hi in UNSPACED_RANGES:
        out |= (cps >= lo) & (cps <= hi)
    return out
