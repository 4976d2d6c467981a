"""Wikipedia dump reading, markup stripping, tokenising and PMI (no Spark)."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from curation.errors import InputError
from metadata import wiki
from metadata.synthetic import SynthPage, synthetic_article, write_dump

VOCAB = ["alpha", "beta", "gamma", "delta", "new", "york", "hot", "dog"]


def _pages(n: int, seed: int = 0) -> list[SynthPage]:
    rng = random.Random(seed)
    pages = [SynthPage(f"Page {i}", synthetic_article(rng, VOCAB, 6)) for i in range(n)]
    pages.insert(3, SynthPage("Talk:Page 1", "talk talk talk", ns=1))
    pages.insert(5, SynthPage("Old name", "#REDIRECT [[Page 2]]", redirect="Page 2"))
    return pages


def test_strip_markup_handles_templates_tables_links_refs():
    text = ("{{Infobox|a={{nested|x}}}}'''Bold''' [[Target page|shown label]] and [[plain]] "
            "text<ref name=\"r\">{{cite|zzref}}</ref><ref name=\"r\" /> [http://e.org external label] "
            "http://bare.example/x <!-- zzcomment -->&amp; &nbsp;end\n"
            "== Heading ==\n* item one\n{| class=\"wikitable\"\n| zzcell {{tpl}} || zzcell2\n|}\n"
            "[[File:X.jpg|thumb|caption with [[zzlink]]]][[Category:Zzcat]][[de:Zzinterwiki]]"
            "<math>zzmath</math> <small>small words</small>")
    plain = wiki.strip_markup(text)
    assert "zz" not in plain  # everything marked zz must be gone
    for kept in ("Bold", "shown label", "plain", "external label", "Heading", "item one", "small words", "&", "end"):
        assert kept in plain, kept
    for gone in ("{{", "}}", "[[", "]]", "'''", "==", "<ref", "http", "Target page", "Infobox"):
        assert gone not in plain, gone


def test_token_runs_break_on_punctuation_lines_and_numbers():
    runs = list(wiki.token_runs("New York, USA. Don't stop 1990 T-shirt\nnext line 3d"))
    assert runs == [["new", "york"], ["usa"], ["don't", "stop"], ["t-shirt"], ["next", "line", "3d"]]


def test_ngram_counts_and_pmi_by_hand():
    counts = wiki.NgramCounts.empty()
    counts.add_text("new york is big. new york city\nbig dog")
    # runs: [new york is big] [new york city] [big dog]
    assert counts.unigrams == Counter({"new": 2, "york": 2, "big": 2, "is": 1, "city": 1, "dog": 1})
    assert counts.bigrams == Counter({("new", "york"): 2, ("york", "is"): 1, ("is", "big"): 1,
                                      ("york", "city"): 1, ("big", "dog"): 1})
    assert (counts.n_unigrams, counts.n_bigrams) == (9, 6)
    # p(new york) = 2/6, p(new) = p(york) = 2/9  ->  log2((1/3) / (4/81)) = log2(27/4)
    assert wiki.pmi(2, 2, 2, 9, 6) == pytest.approx(math.log2(27 / 4))
    assert wiki.pmi_upper_bound(2, 9, 6) == pytest.approx(math.log2(81 / 12))


def test_iter_pages_streams_namespaced_dump(tmp_path):
    path = str(tmp_path / "enwiki-pages-articles.xml.bz2")
    write_dump(path, _pages(12), multistream=False)
    pages = list(wiki.iter_pages(path))
    assert len(pages) == 14
    assert [p.title for p in pages][:4] == ["Page 0", "Page 1", "Page 2", "Talk:Page 1"]
    assert pages[3].ns == 1 and pages[5].redirect
    assert len(list(wiki.article_texts(pages))) == 12


@pytest.mark.parametrize("layout", ["multistream", "split_inside_pages", "single"])
def test_units_count_every_page_once(tmp_path, layout):
    """Whatever the unit size and stream layout, units together equal the whole-file reference."""
    path = str(tmp_path / f"{layout}.xml.bz2")
    kwargs = {"multistream": layout != "single", "pages_per_stream": 7}
    if layout == "split_inside_pages":
        kwargs["split_inside_pages"] = 1500  # streams end in the middle of pages
    write_dump(path, _pages(60), **kwargs)
    reference = wiki.count_file(path)
    titles_ref = [p.title for p in wiki.iter_pages(path)]
    offsets, size = wiki.scan_stream_offsets(path)
    if layout != "single":
        assert len(offsets) > 5
    for unit_bytes in (1, 700, 5000, size):
        units = wiki.plan_units(path, unit_bytes)
        titles = [p.title for u in units for p in wiki.iter_unit_pages(*u)]
        assert titles == titles_ref, unit_bytes
        total = wiki.NgramCounts.empty()
        for u in units:
            c = wiki.count_unit(*u)
            total.unigrams.update(c.unigrams)
            total.bigrams.update(c.bigrams)
            total.n_unigrams += c.n_unigrams
            total.n_bigrams += c.n_bigrams
        assert total.unigrams == reference.unigrams
        assert total.bigrams == reference.bigrams
        assert (total.n_unigrams, total.n_bigrams) == (reference.n_unigrams, reference.n_bigrams)


def test_truncated_bz2_names_the_file(tmp_path):
    path = tmp_path / "trunc.xml.bz2"
    write_dump(str(path), _pages(30), multistream=True, pages_per_stream=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="trunc.xml.bz2"):
        list(wiki.iter_pages(str(path)))
    with pytest.raises(InputError, match="trunc.xml.bz2.*(ends early|not closed)"):
        for unit in wiki.plan_units(str(path), 1):
            list(wiki.iter_unit_pages(*unit))


def test_page_without_text_and_missing_file(tmp_path):
    path = str(tmp_path / "notext.xml.bz2")
    write_dump(path, [SynthPage("Good", "fine text"), SynthPage("Broken", None)])
    with pytest.raises(InputError, match=r"notext\.xml\.bz2.*'Broken'.*no <text>"):
        list(wiki.iter_pages(path))
    with pytest.raises(InputError, match="no <text>"):
        list(wiki.iter_unit_pages(*wiki.plan_units(path)[0]))
    with pytest.raises(InputError, match="missing.xml.bz2"):
        wiki.plan_units(str(tmp_path / "missing.xml.bz2"))
    not_bz2 = tmp_path / "plain.bz2"
    not_bz2.write_bytes(b"<mediawiki></mediawiki>")
    with pytest.raises(InputError, match="plain.bz2.*not a bzip2"):
        wiki.plan_units(str(not_bz2))
