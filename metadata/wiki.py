"""Wikipedia text: read ``pages-articles*.xml.bz2`` dumps, strip markup, tokenise, count n-grams.

Why these choices:

* Dumps are tens of GB, so nothing here loads a file whole. ``iter_pages`` streams one file with
  ``iterparse`` over a ``bz2`` stream (the Spark-free reference path). For Spark, a file is cut
  into *work units* at bz2 stream boundaries (``plan_units``: a sequential byte scan, no
  decompression), and each executor decompresses and parses its own unit (``iter_unit_pages``).
  Wikipedia's ``*-multistream.xml.bz2`` files hold 100 pages per stream, so they split finely; a
  single-stream file (plain ``bzip2`` output) is one unit and only parallelises across files.
* A unit owns the pages whose ``<page>`` tag starts inside the bytes its streams decompress to; it
  reads on into the next streams only to finish its last page (Hadoop's rule for split records).
  So any split of a file counts every page exactly once.
* Tokens: lowercased runs of letters/digits with inner ``'`` or ``-`` (``don't``, ``t-shirt``);
  tokens without a letter (plain numbers) are dropped. Bigrams are pairs of adjacent tokens with
  only white space between them: punctuation, a line break or a dropped number breaks the pair,
  so ``"Paris, France"`` gives no bigram. ``N_uni`` is the number of counted tokens, ``N_bi`` the
  number of counted pairs; PMI uses those totals (see :func:`pmi`).
"""
from __future__ import annotations

import bz2
import html
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator

from curation.errors import InputError
from curation.storage import Storage

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# markup stripping
# --------------------------------------------------------------------------------------------
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_DROP_ELEMENTS = re.compile(
    r"<(ref|math|gallery|timeline|score|syntaxhighlight|source|chem|ce|graph|mapframe|imagemap)"
    r"\b[^>]*?(?:/>|>.*?</\1\s*>)", re.S | re.I)
_SELF_CLOSING_REF = re.compile(r"<ref\b[^>]*/>", re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_DROP_NAMESPACES = {"file", "image", "category", "media"}
_INTERWIKI = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)?$")


def _link_text(match: re.Match) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith(":"):  # [[:Category:X]] is a visible link
        target = target[1:]
    elif ":" in target:
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in _DROP_NAMESPACES or _INTERWIKI.match(prefix):
            return ""
    if label:
        return label.rsplit("|", 1)[-1]
    return target.split("#", 1)[0] if not target.startswith("#") else target[1:]


def _until_stable(pattern: re.Pattern, repl, text: str, limit: int = 20) -> str:
    """Apply a substitution until nothing changes (innermost-first for nested constructs)."""
    for _ in range(limit):
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new
    return text


def strip_markup(wikitext: str) -> str:
    """Wiki markup -> plain text: drops templates, tables, refs, files, categories, tags.

    Link text is kept (``[[a|b]]`` -> ``b``), emphasis quotes and heading marks are removed and
    entities decoded. Lines stay lines (bigrams never cross them).
    """
    # each pass is skipped when its opening token is absent (most of the time on real pages)
    text = _COMMENT.sub("", wikitext) if "<!--" in wikitext else wikitext
    if "<" in text:
        text = _DROP_ELEMENTS.sub(" ", text)
        text = _SELF_CLOSING_REF.sub(" ", text)
    if "{{" in text:
        text = _until_stable(_TEMPLATE, " ", text)
    if "{|" in text:
        text = _until_stable(_TABLE, "\n", text)
    if "[[" in text:
        text = _until_stable(_LINK, _link_text, text)
    if "//" in text:
        text = _EXT_LINK.sub(r"\1", text)
        text = _BARE_URL.sub(" ", text)
    if "''" in text:
        text = _QUOTES.sub("", text)
    if "=" in text:
        text = _HEADING.sub(r"\2", text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    text = _LIST_MARK.sub("", text)
    if "__" in text:
        text = _MAGIC.sub(" ", text)
    # leftovers of unbalanced constructs in broken articles
    text = text.replace("{{", " ").replace("}}", " ").replace("[[", " ").replace("]]", " ")
    return html.unescape(text) if "&" in text else text


# --------------------------------------------------------------------------------------------
# tokenising and counting
# --------------------------------------------------------------------------------------------
_BREAK = re.compile(r"[^\w\s'\u2019\-]+|\n|\b\d+\b")
_WORD = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*")


# The same tokens and run breaks in one left-to-right scan (the fast path of the Spark job):
# ``findall`` yields each token, and ``""`` for every break. A word segment may not be a number
# that ``_BREAK`` would cut out (``\b\d+\b``), so a token never spans a dropped number.
_SEGMENT = r"(?!\b\d+\b)[^\W_]+"
_TOKEN_OR_BREAK = re.compile(rf"({_SEGMENT}(?:['\u2019\-]{_SEGMENT})*)|\b\d+\b|\n|[^\w\s'\u2019\-]+")


def token_runs(plain_text: str) -> Iterator[list[str]]:
    """Runs of adjacent tokens (lowercased); bigrams are only formed inside one run."""
    for chunk in _BREAK.split(plain_text.lower()):
        toks = _WORD.findall(chunk)
        if toks:
            yield toks


def tokens_with_breaks(plain_text: str) -> list[str]:
    """The tokens of :func:`token_runs` in one list, ``""`` wherever a run may break.

    One regex scan instead of a split plus a scan per chunk; consecutive tokens with no ``""``
    between them are exactly the pairs ``token_runs`` pairs up (tested for equivalence).
    """
    return _TOKEN_OR_BREAK.findall(plain_text.lower())


@dataclass
class NgramCounts:
    """Unigram and bigram counts with their totals (``N_uni`` tokens, ``N_bi`` pairs)."""

    unigrams: Counter
    bigrams: Counter
    n_unigrams: int = 0
    n_bigrams: int = 0
    pages: int = 0
    #: tokens with ``""`` breaks (``metadata.segment``); None: English's :func:`token_runs`
    tokenize: Callable[[str], list] | None = None

    @classmethod
    def empty(cls, tokenize: Callable[[str], list] | None = None) -> "NgramCounts":
        return cls(Counter(), Counter(), tokenize=tokenize)

    def add_text(self, plain_text: str) -> None:
        uni, bi = self.unigrams, self.bigrams
        runs = token_runs(plain_text) if self.tokenize is None else _split_runs(self.tokenize(plain_text))
        for toks in runs:
            uni.update(toks)
            self.n_unigrams += len(toks)
            if len(toks) > 1:
                bi.update(zip(toks, toks[1:]))
                self.n_bigrams += len(toks) - 1

    def add_page(self, wikitext: str) -> None:
        self.add_text(strip_markup(wikitext))
        self.pages += 1


def _split_runs(tokens: list[str]) -> Iterator[list[str]]:
    run: list[str] = []
    for t in tokens:
        if t:
            run.append(t)
        elif run:
            yield run
            run = []
    if run:
        yield run


def pmi(c_xy: float, c_x: float, c_y: float, n_unigrams: float, n_bigrams: float) -> float:
    """``log2(p(xy) / (p(x) p(y)))`` with p(xy) = c_xy/N_bi and p(x) = c_x/N_uni."""
    return math.log2((c_xy / n_bigrams) / ((c_x / n_unigrams) * (c_y / n_unigrams)))


def pmi_upper_bound(min_pair_count: int, n_unigrams: int, n_bigrams: int) -> float:
    """The largest PMI any pair seen ``min_pair_count`` times can reach (when c_x = c_y = c_xy).

    PMI falls as a pair gets more frequent, so a high PMI threshold plus a minimum count can be
    unreachable on a small corpus; the report shows this bound so the user sees why.
    """
    if min_pair_count <= 0 or n_bigrams <= 0:
        return math.inf
    return math.log2(n_unigrams * n_unigrams / (n_bigrams * min_pair_count))


# --------------------------------------------------------------------------------------------
# reading pages
# --------------------------------------------------------------------------------------------
@dataclass
class Page:
    title: str
    ns: int
    text: str
    redirect: bool


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def page_from_element(elem: ET.Element, source: str) -> Page:
    """A ``<page>`` element (namespaced or not) -> Page; a page without ``<text>`` is an error."""
    title, ns, text, redirect, has_text = "", 0, "", False, False
    for child in elem.iter():
        name = _local(child.tag)
        if name == "title":
            title = child.text or ""
        elif name == "ns":
            try:
                ns = int((child.text or "0").strip())
            except ValueError as exc:
                raise InputError(f"{source}: page {title!r} has a non-numeric <ns> {child.text!r}") from exc
        elif name == "redirect":
            redirect = True
        elif name == "text":
            has_text = True
            text = child.text or ""
    if not has_text:
        raise InputError(f"{source}: page {title!r} has no <text> element; this is not a "
                         "pages-articles dump (use the pages-articles*.xml.bz2 files)")
    if text[:9].upper() == "#REDIRECT":
        redirect = True
    return Page(title, ns, text, redirect)


def _open_raw(path: str, storage: Storage | None) -> IO[bytes]:
    try:
        fs, p = (storage or Storage.from_env()).fs(path)
        return fs.open(p, "rb")
    except FileNotFoundError as exc:
        raise InputError(f"Wikipedia dump not found: {path}") from exc


def _open_dump(path: str, storage: Storage | None = None) -> IO[bytes]:
    f = _open_raw(path, storage)
    return bz2.BZ2File(f) if path.endswith(".bz2") else f


def iter_pages(path: str, storage: Storage | None = None) -> Iterator[Page]:
    """Stream every page of one dump file (``.xml`` or ``.xml.bz2``) with iterparse."""
    f = _open_dump(path, storage)
    try:
        context = ET.iterparse(f, events=("start", "end"))
        root = None
        for event, elem in context:
            if root is None:
                root = elem
            if event == "end" and _local(elem.tag) == "page":
                yield page_from_element(elem, path)
                root.clear()  # free the pages already seen: memory stays flat
    except EOFError as exc:
        raise InputError(f"{path}: the bz2 stream ends early (truncated download?): {exc}") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot decompress ({exc}); is it a complete .bz2 file?") from exc
    except ET.ParseError as exc:
        raise InputError(f"{path}: malformed XML ({exc})") from exc
    finally:
        f.close()


def article_texts(pages: Iterable[Page]) -> Iterator[str]:
    """Wikitext of real articles: namespace 0, not redirects."""
    for page in pages:
        if page.ns == 0 and not page.redirect:
            yield page.text


def count_file(path: str, tokenize: Callable[[str], list] | None = None) -> NgramCounts:
    """Spark-free reference: n-gram counts of one whole dump file."""
    counts = NgramCounts.empty(tokenize)
    for text in article_texts(iter_pages(path)):
        counts.add_page(text)
    return counts


# --------------------------------------------------------------------------------------------
# work units for Spark: bz2 stream boundaries
# --------------------------------------------------------------------------------------------
_STREAM_START = re.compile(rb"BZh[1-9]1AY&SY")
_SCAN_CHUNK = 8 << 20


def scan_stream_offsets(path: str, chunk_size: int = _SCAN_CHUNK, storage: Storage | None = None
                        ) -> tuple[list[int], int]:
    """Byte offsets of every bz2 stream start in a file, and the file size (sequential scan).

    A stream starts byte-aligned with ``BZh<level>`` and the block magic ``1AY&SY``; a random
    10-byte match inside compressed data is ~2^-80 likely, and a false one would fail loudly in
    the executor's decompressor rather than be silently miscounted.
    """
    f = _open_raw(path, storage)
    offsets: list[int] = []
    pos, tail = 0, b""
    with f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            buf = tail + chunk
            base = pos - len(tail)
            for m in _STREAM_START.finditer(buf):
                off = base + m.start()
                if not offsets or off > offsets[-1]:
                    offsets.append(off)
            tail = buf[-9:]
            pos += len(chunk)
    if not offsets or offsets[0] != 0:
        raise InputError(f"{path}: not a bzip2 file (no 'BZh' stream header at byte 0)")
    return offsets, pos


def plan_units(path: str, target_bytes: int = 32 << 20, storage: Storage | None = None
               ) -> list[tuple[str, int, int]]:
    """Cut one ``.bz2`` dump into ``(path, start, end)`` units of about ``target_bytes`` compressed."""
    if not path.endswith(".bz2"):
        return [(path, 0, -1)]
    offsets, size = scan_stream_offsets(path, storage=storage)
    units, start = [], 0
    for off in offsets[1:]:
        if off - start >= target_bytes:
            units.append((path, start, off))
            start = off
    units.append((path, start, size))
    return units


def _decompressed_chunks(f: IO[bytes], source: str, start: int, end: int,
                         read_size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Yield ``(compressed position reached, decompressed bytes)`` over consecutive streams.

    Reads never cross ``end`` in one chunk, so when the position first reaches ``end`` the output
    so far is exactly what the unit's own streams decompress to.
    """
    f.seek(start)
    pos = start
    dec = bz2.BZ2Decompressor()
    fed = False  # the current decompressor has input but has not reached its stream's end
    pending = b""
    while True:
        if pending:
            data, pending = pending, b""
        else:
            size = min(read_size, end - pos) if pos < end else read_size
            data = f.read(size)
            pos += len(data)
            if not data:
                if fed:
                    raise InputError(f"{source}: the bz2 stream ends early near byte {pos} "
                                     "(truncated download?)")
                return
        try:
            out = dec.decompress(data)
        except OSError as exc:
            raise InputError(f"{source}: corrupt bz2 data near byte {pos} ({exc})") from exc
        fed = True
        if dec.eof:
            pending = dec.unused_data
            dec = bz2.BZ2Decompressor()
            fed = False
        yield pos - len(pending), out


def iter_unit_pages(path: str, start: int, end: int, storage: Storage | None = None) -> Iterator[Page]:
    """Pages owned by one work unit ``[start, end)`` of a dump (see the module docstring)."""
    if end == -1:  # not splittable (plain .xml): the whole file is one unit
        yield from iter_pages(path, storage)
        return
    f = _open_raw(path, storage)
    with f:
        buf = b""
        owned_limit = None  # decompressed length owned by this unit, once known
        consumed = 0  # decompressed bytes dropped from the front of buf
        for comp_pos, out in _decompressed_chunks(f, path, start, end):
            buf += out
            if owned_limit is None and comp_pos >= end:
                # everything decompressed so far came from streams starting before `end`
                owned_limit = consumed + len(buf)
            at = 0  # scan position in buf; buf is trimmed once per chunk (no quadratic copies)
            while True:
                i = buf.find(b"<page>", at)
                if i < 0:
                    at = max(at, len(buf) - 6)  # the tag may be split across chunks
                    break
                if owned_limit is not None and consumed + i >= owned_limit:
                    return  # the next page belongs to the next unit
                j = buf.find(b"</page>", i)
                if j < 0:
                    at = i
                    break
                j += len(b"</page>")
                yield _parse_page_bytes(buf[i:j], path)
                at = j
            consumed += at
            buf = buf[at:]
        if buf.find(b"<page>") >= 0:
            raise InputError(f"{path}: a <page> is not closed before the end of the file "
                             "(truncated dump?)")


def _parse_page_bytes(data: bytes, source: str) -> Page:
    try:
        elem = ET.fromstring(data)
    except ET.ParseError as exc:
        raise InputError(f"{source}: malformed XML in a <page> ({exc})") from exc
    return page_from_element(elem, source)


def count_unit(path: str, start: int, end: int) -> NgramCounts:
    """N-gram counts of the pages one work unit owns."""
    counts = NgramCounts.empty()
    for text in article_texts(iter_unit_pages(path, start, end)):
        counts.add_page(text)
    return counts
