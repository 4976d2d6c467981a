"""Generated inputs in the real public formats, for tests and benchmarks (no downloads).

* ``write_dump``: a MediaWiki ``pages-articles`` XML export, bz2-compressed either as one stream
  (``bzip2``'s output) or multistream like Wikipedia's ``*-multistream.xml.bz2`` (the header,
  then ``pages_per_stream`` pages per stream, then the footer). ``split_inside_pages`` cuts the
  streams at arbitrary byte positions instead, so pages straddle streams (pbzip2-style).
* ``write_pageviews``: an hourly ``pageviews-YYYYMMDD-HH0000.gz`` file.
* ``synthetic_article``: wikitext with templates, links, tables, refs, files and categories.
"""
from __future__ import annotations

import bz2
import gzip
import random
from dataclasses import dataclass
from typing import Iterable, Sequence
from xml.sax.saxutils import escape

HEADER = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.11" xml:lang="en">\n'
    "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
    "    <namespaces>\n      <namespace key=\"0\" case=\"first-letter\" />\n"
    "      <namespace key=\"14\" case=\"first-letter\">Category</namespace>\n    </namespaces>\n"
    "  </siteinfo>\n"
)
FOOTER = "</mediawiki>\n"


@dataclass
class SynthPage:
    title: str
    text: str | None  # None: the page has no <text> element (malformed)
    ns: int = 0
    redirect: str | None = None


def page_xml(page: SynthPage, page_id: int) -> str:
    """One ``<page>`` element as a MediaWiki export writes it."""
    parts = [f"  <page>\n    <title>{escape(page.title)}</title>\n    <ns>{page.ns}</ns>\n    <id>{page_id}</id>\n"]
    if page.redirect:
        parts.append(f'    <redirect title="{escape(page.redirect, {chr(34): "&quot;"})}" />\n')
    parts.append(f"    <revision>\n      <id>{page_id * 10}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
                 "      <contributor>\n        <username>Synth</username>\n        <id>1</id>\n      </contributor>\n"
                 "      <model>wikitext</model>\n      <format>text/x-wiki</format>\n")
    if page.text is not None:
        parts.append(f'      <text bytes="{len(page.text.encode())}" xml:space="preserve">{escape(page.text)}</text>\n')
    parts.append("      <sha1>0</sha1>\n    </revision>\n  </page>\n")
    return "".join(parts)


def dump_xml_chunks(pages: Iterable[SynthPage]) -> Iterable[str]:
    yield HEADER
    for i, page in enumerate(pages, 1):
        yield page_xml(page, i)
    yield FOOTER


def write_dump(path: str, pages: Iterable[SynthPage], multistream: bool = True, pages_per_stream: int = 100,
               split_inside_pages: int | None = None, level: int = 9) -> int:
    """Write the dump; return the uncompressed XML size in bytes."""
    chunks = list(dump_xml_chunks(pages)) if split_inside_pages else dump_xml_chunks(pages)
    total = 0
    with open(path, "wb") as f:
        if not multistream:
            comp = bz2.BZ2Compressor(level)
            for chunk in chunks:
                data = chunk.encode()
                total += len(data)
                f.write(comp.compress(data))
            f.write(comp.flush())
            return total
        if split_inside_pages:
            data = "".join(chunks).encode()
            for i in range(0, len(data), split_inside_pages):
                f.write(bz2.compress(data[i:i + split_inside_pages], level))
            return len(data)
        buf: list[bytes] = []
        n = 0
        for chunk in chunks:
            data = chunk.encode()
            total += len(data)
            if chunk is HEADER or chunk is FOOTER:
                if buf:
                    f.write(bz2.compress(b"".join(buf), level)); buf, n = [], 0  # noqa: E702
                f.write(bz2.compress(data, level))
                continue
            buf.append(data)
            n += 1
            if n >= pages_per_stream:
                f.write(bz2.compress(b"".join(buf), level)); buf, n = [], 0  # noqa: E702
        if buf:
            f.write(bz2.compress(b"".join(buf), level))
    return total


def write_pageviews(path: str, lines: Sequence[tuple[str, str, object]]) -> None:
    """``project title views bytes`` lines (views may be any object, e.g. a bad string)."""
    text = "".join(f"{p} {t} {v} 0\n" for p, t, v in lines)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:  # type: ignore[operator]
        f.write(text)


def synthetic_article(rng: random.Random, vocab: Sequence[str], n_sentences: int = 12) -> str:
    """Wikitext with the constructs a stripper must handle; the prose uses ``vocab`` words."""
    def sentence() -> str:
        words = [rng.choice(vocab) for _ in range(rng.randint(6, 16))]
        k = rng.randrange(len(words))
        words[k] = f"[[{words[k].capitalize()}|{words[k]}]]"
        if rng.random() < 0.3:
            j = rng.randrange(len(words))
            words[j] = f"'''{words[j]}'''"
        return " ".join(words) + rng.choice([".", ".", ",", ";"])
    parts = ["{{Infobox thing\n| name = {{lang|fr|chose}}\n| image = x.jpg\n}}",
             " ".join(sentence() for _ in range(n_sentences // 2)) + "<ref>{{cite web|url=http://x.org|title=Cite}}</ref>",
             "== Section ==",
             " ".join(sentence() for _ in range(n_sentences - n_sentences // 2)),
             '{| class="wikitable"\n|-\n! zzhead !! zzcol\n|-\n| zzcell || 1\n|}',
             "[[File:Pic.jpg|thumb|A [[zzcaption]] here]]",
             "[[Category:Zzcategory]]"]
    return "\n".join(parts)
