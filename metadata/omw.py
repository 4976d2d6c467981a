"""WordNet names of other languages from Open Multilingual Wordnet tab files (``wn-data-<code>.tab``).

The format (OMW 1.x, as in the omw-data repository and the OMW 1.4 release nltk reads): UTF-8
text; a first line ``# <label>\\t<code>\\t<url>\\t<licence>``; further ``#`` lines are comments;
every other line is TAB-separated ``<offset>-<pos>\\t<code>:<type>\\t<value>...``. The synset is
a WordNet 3.0 offset and part of speech (``n v a r s``; ``s``, a satellite adjective, is the same
synset family as ``a``). Types are ``lemma``, ``def``/``exe`` (with an order column first),
``count``, ``pron``, ``lemma:root``...; only ``lemma`` lines name a synset. ``<code>`` is ISO
639-3 (``fra``, ``cmn``, ``jpn``); a type without a code prefix counts for the file's language,
one with another language's prefix does not (nltk's reader does the same).

Names as MetaCLIP 2 makes them (``build_multilingual_wordnet.py`` + ``build_metadata.py``): every
lemma of every synset (English uses only each synset's first lemma, MetaCLIP 1's rule), ``_`` ->
space, ``+`` removed (COW marks morpheme joins as ``50周年+的``), stripped; case kept; empty and
punctuation-only names dropped. Also dropped: OMW's lexical-gap markers ``GAP!`` and
``PSEUDOGAP!`` (not words), and the double quotes OMW's own converter strips from a quoted lemma.
The score of a name is the number of synsets it names, as for English.

A line that is not UTF-8 is an error naming the file and line: the file is in another encoding,
and every lemma of it would be wrong. A line with too few columns or a bad synset id is skipped
and counted (nltk's reader skips such lines too); a file of which no line could be read at all is
an error (e.g. spaces instead of TABs).
"""
from __future__ import annotations

import glob as globlib
import logging
import re
import string
from collections import Counter
from typing import Iterable

from curation.errors import InputError
from curation.storage import Storage

log = logging.getLogger(__name__)

#: OMW file codes (ISO 639-3, as the omw-data files are named) -> the metadata's language codes
#: (ISO 639-1 where one exists: Wikipedia's and the language ID's codes). ``qcn`` is the
#: Traditional Chinese wordnet: zh Wikipedia, and the caption language ID, hold both scripts.
#: A code not listed here serves the language of the same code (``wn-data-de.tab`` -> ``de``).
OMW_CODES = {
    "als": "sq", "arb": "ar", "bul": "bg", "cat": "ca", "ces": "cs", "cmn": "zh", "cym": "cy", "dan": "da",
    "deu": "de", "ell": "el", "eng": "en", "est": "et", "eus": "eu", "fas": "fa", "fin": "fi", "fra": "fr",
    "gle": "ga", "glg": "gl", "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "ind": "id", "isl": "is",
    "ita": "it", "jpn": "ja", "kor": "ko", "lav": "lv", "lit": "lt", "mkd": "mk", "nld": "nl", "nno": "nn",
    "nob": "no", "pol": "pl", "por": "pt", "qcn": "zh", "ron": "ro", "rus": "ru", "slk": "sk", "slv": "sl",
    "spa": "es", "srp": "sr", "swe": "sv", "tha": "th", "tur": "tr", "ukr": "uk", "vie": "vi", "zsm": "ms",
}
_FILE = re.compile(r"^wn-data-([A-Za-z]{2,3}(?:[_-][A-Za-z0-9]+)*)\.tab$")
_SYNSET = re.compile(r"^\d+-[nvasr]$")
GAPS = frozenset({"GAP!", "PSEUDOGAP!"})
#: MetaCLIP 2's punctuation (ASCII + the CJK marks of its ``additional_punctuation``).
PUNCTUATION = frozenset(string.punctuation) | frozenset("，。、；：？¿！“”‘’（）【】《》〈〉「」『』～—")
MAX_EXAMPLES = 5


def language_of(file_code: str) -> str:
    """The metadata language an OMW file code serves (``cmn`` -> ``zh``)."""
    code = file_code.lower().replace("_", "-")
    return OMW_CODES.get(code, code)


def lemma_entry(lemma: str) -> str:
    """An OMW lemma -> entry string ("" when it names nothing: a gap marker, punctuation only)."""
    lemma = lemma.strip()
    if len(lemma) >= 2 and lemma[0] == lemma[-1] == '"':
        lemma = lemma[1:-1]
    if lemma in GAPS:
        return ""
    entry = lemma.replace("_", " ").replace("+", "").strip()
    if all(c in PUNCTUATION for c in entry):
        return ""
    return entry


def find_tab_files(location: str, storage: Storage | None = None) -> dict[str, list[str]]:
    """``{language: [wn-data-*.tab files]}`` under a folder (searched recursively: the omw-data
    repository keeps one folder per wordnet), or for a glob or one file."""
    storage = storage or Storage.from_env()
    fs, root = storage.fs(location)
    proto = location.split("://", 1)[0] + "://" if "://" in location else ""
    if globlib.has_magic(root):
        found = sorted(fs.glob(root))
    elif fs.isdir(root):
        found = sorted(p for p in fs.find(root) if _FILE.match(p.rsplit("/", 1)[-1]))
    elif fs.exists(root):
        found = [root]
    else:
        raise InputError(f"Open Multilingual Wordnet files not found: {location} (`metadata.omw`: a folder "
                         "holding wn-data-<code>.tab files, e.g. a clone of omw-data)")
    by_lang: dict[str, list[str]] = {}
    for p in found:
        m = _FILE.match(p.rsplit("/", 1)[-1])
        if not m:
            raise InputError(f"{proto}{p}: an OMW file must be named wn-data-<code>.tab (the code says its "
                             "language, e.g. wn-data-fra.tab); rename it or narrow `metadata.omw`")
        by_lang.setdefault(language_of(m.group(1)), []).append(proto + p if proto and not p.startswith(proto) else p)
    return by_lang


def read_tab(path: str, storage: Storage | None = None) -> tuple[list[tuple[str, str]], dict]:
    """``[(synset, entry)]`` of every kept lemma line of one file, and counts of what was skipped."""
    storage = storage or Storage.from_env()
    name = path.rsplit("/", 1)[-1]
    m = _FILE.match(name)
    file_code = m.group(1).lower() if m else ""
    try:
        fs, p = storage.fs(path)
        with fs.open(p, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise InputError(f"OMW file not found: {path}") from exc
    pairs: list[tuple[str, str]] = []
    stats: Counter = Counter()
    examples: list[dict] = []
    header_code = None
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}:{line_no}: not UTF-8 (byte {raw[exc.start:exc.start + 1]!r} at column "
                             f"{exc.start + 1}: {raw[max(0, exc.start - 20):exc.start + 20]!r}); OMW tab files are "
                             "UTF-8: convert the file (e.g. `iconv -f latin1 -t utf-8`)") from exc
        if line_no == 1:
            line = line.lstrip("\ufeff")
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            if line_no == 1:
                cols = line[1:].strip().split("\t")
                header_code = cols[1].strip().lower() if len(cols) > 1 and cols[1].strip() else None
            continue
        stats["lines"] += 1
        cols = line.split("\t")
        if len(cols) < 3 or not _SYNSET.match(cols[0].strip()):
            stats["malformed"] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"line": line_no, "text": line[:120]})
            continue
        label = cols[1].strip().split(":")
        code = file_code or header_code
        if len(label) > 1 and code and language_of(label[0]) != language_of(code):
            stats["other_language"] += 1
            continue
        if label[-1] != "lemma":
            stats["other_type"] += 1
            continue
        offset, _, pos = cols[0].strip().rpartition("-")
        entry = lemma_entry(cols[2])
        if not entry:
            stats["gap_or_empty"] += 1
            continue
        pairs.append((f"{int(offset):08d}-{'a' if pos == 's' else pos}", entry))
    if stats["lines"] and not pairs and stats["malformed"] == stats["lines"]:
        raise InputError(f"{path}: none of its {stats['lines']} lines is `offset-pos<TAB>lang:lemma<TAB>lemma` "
                         f"(line {examples[0]['line']}: {examples[0]['text']!r}); is it TAB-separated?")
    if stats["malformed"]:
        log.warning("%s: %d line(s) without the 3 TAB-separated columns or with a bad synset id were skipped "
                    "(e.g. line %d: %r)", path, stats["malformed"], examples[0]["line"], examples[0]["text"])
    out = {k: int(v) for k, v in sorted(stats.items())}
    out["lemmas"] = len(pairs)
    if examples:
        out["malformed_examples"] = examples
    return pairs, out


def omw_entries(paths: Iterable[str], storage: Storage | None = None) -> tuple[list[tuple[str, int]], dict]:
    """Distinct names of the given files (one language) with how many synsets carry each, plus
    stats; sorted by name."""
    synsets_of: dict[str, set[str]] = {}
    files = {}
    all_synsets: set[str] = set()
    for path in paths:
        pairs, stats = read_tab(path, storage)
        files[path] = stats
        for synset, entry in pairs:
            synsets_of.setdefault(entry, set()).add(synset)
            all_synsets.add(synset)
    names = sorted((e, len(s)) for e, s in synsets_of.items())
    return names, {"files": files, "synsets": len(all_synsets), "distinct_names": len(names)}
