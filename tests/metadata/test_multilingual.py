"""Multilingual metadata (MetaCLIP 2 worldwide): per-language WordNet (OMW), dumps, tokenisers,
thresholds and pageview projects; one list with a `lang` column, ids global; English unchanged."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from curation.storage import Storage
from jobs.cli import main as cli_main
from metadata import segment, wiki
from metadata.merge import effective_cap
from metadata.synthetic import SynthPage, synthetic_article, write_dump, write_pageviews
from tests.metadata.conftest import build_metadata
from tests.metadata.test_omw import write_tab

SMALL = dict(unigram_min_count=40, bigram_min_count=3, bigram_min_pmi=2.0, pageview_min_total_views=70)
DE_VOCAB = ["Hund", "Katze", "Haus", "Stadt", "Fluss", "und", "der", "die", "das", "ist", "groß", "schön"]
ZH_VOCAB = ["城市", "河流", "北京", "上海", "学生", "图书馆", "我们", "喜欢", "老师", "音乐", "电影", "公园", "天气",
            "朋友", "历史"]
#: The English-only build of the `wiki_inputs` dump and pageview files with real WordNet and SMALL
#: thresholds, recorded before entries.parquet had a lang column: the first four columns must
#: not change. Parquet files carry the writer's version, so the file hash is compared only under
#: the pyarrow that recorded it; the content hash always.
ENGLISH_BEFORE_LANG = {"pyarrow": "26.0.1", "rows": 86_560,
                       "file": "f3e44b138de58b2167f0f9217afcc7c382397336633e297baff479d1c1dd9338",
                       "content": "c234d0146af797b8e63acea2c160c7c209089fd81fed41ba63e5bbd52f5997b6",
                       "list": "11c161a5f2cf87df42ad3973b531057dbc6028ec1d84f040932c5423986255e5"}


def zh_article(rng: random.Random, i: int) -> str:
    """Chinese wikitext written without spaces; every fourth says 冰淇淋蛋糕 (a high-PMI pair)."""
    sentences = []
    for _ in range(8):
        words = [rng.choice(ZH_VOCAB) for _ in range(rng.randint(4, 9))]
        k = rng.randrange(len(words))
        words[k] = f"[[{words[k]}]]"
        sentences.append("".join(words) + rng.choice(["。", "，", "；"]))
    text = ("{{Infobox 城市|名称=模板词}}\n" + "".join(sentences[:4]) + "<ref>引用文献</ref>\n== 章节 ==\n"
            + "".join(sentences[4:]))
    if i % 4 == 0:
        text += "\n我们吃冰淇淋蛋糕。冰淇淋蛋糕很好。"
    return text


def de_pages(n: int) -> list[SynthPage]:
    rng = random.Random(2)
    pages = []
    for i in range(n):
        text = synthetic_article(rng, DE_VOCAB, 6)
        if i % 4 == 0:
            text += "\nWir essen Schwarzwälder Kirschtorte. Schwarzwälder Kirschtorte, wieder."
        pages.append(SynthPage(f"Artikel {i}", text))
    return pages


@pytest.fixture(scope="module")
def world_inputs(wiki_inputs, tmp_path_factory):
    """en (the English fixture's dump), de and zh dumps named {lang}wiki-..., one pageview file
    holding every project, and OMW tab files for de and zh."""
    d = tmp_path_factory.mktemp("world")
    dumps = d / "dumps"
    dumps.mkdir()
    name = "{lang}wiki-20240101-pages-articles-multistream.xml.bz2"
    (dumps / name.format(lang="en")).write_bytes(Path(wiki_inputs["dump"]).read_bytes())
    write_dump(str(dumps / name.format(lang="de")), de_pages(80), pages_per_stream=10)
    rng = random.Random(3)
    zh_pages = [SynthPage(f"条目{i}", zh_article(rng, i)) for i in range(80)]
    write_dump(str(dumps / name.format(lang="zh")), zh_pages, pages_per_stream=10)
    pv = d / "pageviews"
    pv.mkdir()
    write_pageviews(str(pv / "pageviews-20240101-000000.gz"), [
        ("en", "Berlin", 100), ("en", "Hot_dog", 80), ("de", "Berlin", 90), ("de", "München", 85),
        ("de", "Hund", 80), ("de.m", "Katze", 500), ("zh", "长城", 150), ("zh", "北京", 120), ("zh", "故宫", 80),
        ("fr", "Chien", 900)])
    omw = d / "omw"
    write_tab(omw / "deu" / "wn-data-deu.tab", "deu", [
        "02084071-n\tdeu:lemma\tHund", "02084071-n\tdeu:lemma\tHaushund", "02121620-n\tdeu:lemma\tKatze",
        "02121620-n\tdeu:def\t0\tein Haustier"])
    write_tab(omw / "cow" / "wn-data-cmn.tab", "cmn", [
        "02084071-n\tcmn:lemma\t狗", "07614500-n\tcmn:lemma\t冰淇淋", "03661043-n\tcmn:lemma\t图书馆"])
    return {"wiki": str(dumps / name), "dumps": {k: str(dumps / name.format(lang=k)) for k in ("en", "de", "zh")},
            "pageviews": str(pv / "*.gz"), "omw": str(omw)}


WORLD = dict(languages=["en", "de", "zh"], **SMALL, unit_mb=0.002,
             thresholds={"zh": {"unigram_min_count": 15, "pageview_min_total_views": 100}, "de": {"cap_title": 1},
                         "en": {"cap_title_share": 0.5}})


@pytest.fixture(scope="module")
def world_build(spark, world_inputs, tmp_path_factory):
    pytest.importorskip("jieba")  # zh's default tokeniser (the test extra installs it)
    out = tmp_path_factory.mktemp("world-build") / "M"
    report = build_metadata(spark, str(out), None, world_inputs["wiki"], world_inputs["pageviews"],
                            omw=world_inputs["omw"], **WORLD)
    return out, report


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "entries.parquet").to_pylist()


def test_three_languages_one_list_with_lang_and_global_ids(world_build, world_inputs):
    out, report = world_build
    rows = _rows(out)
    assert [r["entry_id"] for r in rows] == list(range(len(rows)))
    langs = [r["lang"] for r in rows]
    # language blocks in `languages` order: en, then de, then zh
    assert langs == sorted(langs, key=["en", "de", "zh"].index)
    assert json.loads((out / "metadata.json").read_text("utf-8")) == [r["entry"] for r in rows]
    for lang in ("en", "de", "zh"):
        assert json.loads((out / "_lists" / f"{lang}.json").read_text("utf-8")) == [
            r["entry"] for r in rows if r["lang"] == lang]
    by = {lang: {(r["entry"], r["source"]): r["score"] for r in rows if r["lang"] == lang} for lang in langs}
    # the same string in two languages is two entries (two ids)
    berlin = [(r["entry_id"], r["lang"]) for r in rows if r["entry"] == "Berlin"]
    assert [lang for _, lang in berlin] == ["en", "de"] and berlin[0][0] != berlin[1][0]
    assert report["entries_per_lang"] == {k: langs.count(k) for k in ("en", "de", "zh")}
    assert report["entries"] == len(rows)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["in"] == summary["out"] + sum(summary["rejected"].values())
    assert summary["entries_per_lang"] == report["entries_per_lang"]

    # en: the English rule and thresholds, unchanged
    ref_en = wiki.count_file(world_inputs["dumps"]["en"])
    assert {e: s for (e, src), s in by["en"].items() if src == "unigram"} == {
        w: float(c) for w, c in ref_en.unigrams.items() if c >= 40}
    # en's titles capped at half their candidates (MetaCLIP 2's share cap): the best one of two
    assert {e: s for (e, src), s in by["en"].items() if src == "title"} == {"Berlin": 100.0}
    en_titles = report["languages"]["en"]["sources"]["title"]
    assert (en_titles["candidates"], en_titles["cap"], en_titles["cap_share"]) == (2, 1, 0.5)

    # de: OMW names first (case kept), then cased unigrams (the OMW names are duplicates of earlier)
    ref_de = wiki.count_file(world_inputs["dumps"]["de"], segment.tokenizer("words"))
    assert {e for (e, src) in by["de"] if src == "wordnet"} == {"Hund", "Haushund", "Katze"}
    assert {e: s for (e, src), s in by["de"].items() if src == "unigram"} == {
        w: float(c) for w, c in ref_de.unigrams.items() if c >= 40 and w not in {"Hund", "Katze"}}
    assert ("Stadt", "unigram") in by["de"] and ("stadt", "unigram") not in by["de"]
    assert ("Schwarzwälder Kirschtorte", "bigram") in by["de"]
    # de's own cap: one title; Hund is a WordNet name already; project de only (not de.m)
    assert {e for (e, src) in by["de"] if src == "title"} == {"Berlin"}
    de_titles = report["languages"]["de"]["sources"]["title"]
    assert de_titles["cap"] == 1 and de_titles["over_cap"] == 1 and de_titles["duplicates_of_earlier"] == 1
    assert de_titles["project"] == "de"

    # zh: jieba words from unspaced text, zh's own unigram threshold (15, not 40)
    ref_zh = wiki.count_file(world_inputs["dumps"]["zh"], segment.tokenizer("jieba"))
    zh_uni = {e: s for (e, src), s in by["zh"].items() if src == "unigram"}
    assert zh_uni == {w: float(c) for w, c in ref_zh.unigrams.items() if c >= 15 and w not in {"冰淇淋", "图书馆"}}
    assert "吃" in zh_uni and 15 <= ref_zh.unigrams["吃"] < 40  # kept only by zh's threshold
    assert {"城市", "学生", "蛋糕"} <= zh_uni.keys() and "模板词" not in ref_zh.unigrams  # templates stripped
    zh_bi = {e for (e, src) in by["zh"] if src == "bigram"}
    assert "冰淇淋蛋糕" in zh_bi  # MetaCLIP 2: a no-space language's bigram is joined without a space
    assert not any(" " in e for (e, _) in by["zh"])
    # zh titles: project zh, zh's total-views threshold (故宫: 80 < 100); 北京 is a unigram already
    assert {e for (e, src) in by["zh"] if src == "title"} == {"长城"}
    zh = report["languages"]["zh"]
    assert zh["settings"]["unigram_min_count"] == 15 and zh["settings"]["segmenter"] == "jieba"
    assert zh["wikipedia"]["n_unigrams"] == ref_zh.n_unigrams
    assert zh["wordnet"]["distinct_names"] == 3 and zh["sources"]["title"]["candidates"] == 2
    assert report["languages"]["de"]["wordnet"]["files"] == {
        "deu/wn-data-deu.tab": {"lemmas": 3, "lines": 4, "other_type": 1}}
    # lint per language, added up at the top: "Berlin" twice is not a duplicate
    assert report["lint"]["counts"]["duplicate"] == 0
    assert set(report["languages"]) == {"en", "de", "zh"}


def test_english_alone_is_the_list_it_always_was(spark, wiki_inputs, wordnet_dir, tmp_path):
    """entries.parquet of an English-only build: today's first four columns, byte for byte, plus
    `lang`; metadata.json unchanged."""
    out = tmp_path / "M"
    build_metadata(spark, str(out), str(wordnet_dir), wiki_inputs["dump"], wiki_inputs["pageviews"], **SMALL,
                   unit_mb=0.002)
    table = pq.read_table(out / "entries.parquet")
    assert table.column_names == ["entry_id", "entry", "source", "score", "lang"]
    assert set(table.column("lang").to_pylist()) == {"en"} and table.num_rows == ENGLISH_BEFORE_LANG["rows"]
    before = table.drop_columns(["lang"])
    h = hashlib.sha256(str(before.schema.remove_metadata()).encode())
    h.update(json.dumps(before.to_pylist(), sort_keys=True).encode())
    assert h.hexdigest() == ENGLISH_BEFORE_LANG["content"]
    if pa.__version__ == ENGLISH_BEFORE_LANG["pyarrow"]:
        Storage().write_parquet(before, str(tmp_path / "before.parquet"))
        assert hashlib.sha256((tmp_path / "before.parquet").read_bytes()).hexdigest() == ENGLISH_BEFORE_LANG["file"]
    assert hashlib.sha256((out / "metadata.json").read_bytes()).hexdigest() == ENGLISH_BEFORE_LANG["list"]
    assert json.loads((out / "_lists" / "en.json").read_text("utf-8")) == table.column("entry").to_pylist()


def test_import_keeps_languages_and_dedups_within_a_language(world_build, tmp_path):
    out, _ = world_build
    report = build_metadata(None, str(tmp_path / "I"), path=str(out))
    assert pq.read_table(tmp_path / "I" / "entries.parquet").to_pylist() == _rows(out)
    assert report["entries_per_lang"] == json.loads((out / "_report.json").read_text())["entries_per_lang"]
    # a plain list takes `metadata.lang`; a repeat within it is removed
    src = tmp_path / "metadata.json"
    src.write_text(json.dumps(["Hund", "Katze", "Hund"]), encoding="utf-8")
    report = build_metadata(None, str(tmp_path / "D"), path=str(src), lang="de")
    t = pq.read_table(tmp_path / "D" / "entries.parquet").to_pydict()
    assert t["lang"] == ["de", "de"] and report["duplicates_removed"] == 1
    assert json.loads((tmp_path / "D" / "_lists" / "de.json").read_text()) == ["Hund", "Katze"]
    # the same string in two languages, described by an entries.parquet beside the list: both kept
    b = tmp_path / "B"
    b.mkdir()
    (b / "metadata.json").write_text(json.dumps(["Berlin", "Berlin", "Berlin"]))
    pq.write_table(pa.table({"entry_id": pa.array([0, 1, 2], pa.int32()), "entry": ["Berlin"] * 3,
                             "lang": ["en", "de", "en"]}), b / "entries.parquet")
    report = build_metadata(None, str(tmp_path / "E"), path=str(b / "metadata.json"))
    assert pq.read_table(tmp_path / "E" / "entries.parquet").column("lang").to_pylist() == ["en", "de"]
    assert report["duplicate_examples"] == [{"original_id": 2, "entry": "Berlin", "kept_as": 0}]
    assert report["entries_per_lang"] == {"en": 1, "de": 1}


def test_cli_build_with_languages_and_per_language_settings(spark, world_inputs, tmp_path, capsys):
    out = tmp_path / "M"
    rc = cli_main(["metadata", "build", "--languages", "de", "--languages", "zh", "--omw", world_inputs["omw"],
                   "--out", str(out), "--set", "metadata.segmenters={zh: chars}",
                   "--set", "metadata.thresholds={de: {cap_unigram: 0}}"])
    assert rc == 0, capsys.readouterr().err
    assert "in 2 languages (de 3, zh 3)" in capsys.readouterr().out
    rows = _rows(out)
    assert [r["lang"] for r in rows] == ["de"] * 3 + ["zh"] * 3
    assert cli_main(["metadata", "import", str(out / "metadata.json"), "--lang", "xx yy", "--out",
                     str(tmp_path / "I")]) == 2
    assert "metadata.lang" in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    (dict(languages=["en", "de"], wiki="one-dump.xml.bz2"), r"put \{lang\} in the path"),
    (dict(languages=["de"], wordnet="/usr/share/wordnet"), "has no en"),
    (dict(languages=["en", "en"], pageviews="x"), "names a language twice"),
    (dict(languages=["en", "de"], pageviews="x", thresholds={"fr": {"unigram_min_count": 1}}), r"names \['fr'\]"),
    (dict(languages=["en", "zh"], pageviews="x", thresholds={"zh": {"unigram_min_cnt": 1}}),
     r"metadata\.thresholds\.zh\.unigram_min_cnt.*did you mean"),
    (dict(languages=["zh"], pageviews="x", thresholds={"zh": {"cap_title": -1}}),
     r"metadata\.thresholds\.zh\.cap_title. must be >= 0"),
    (dict(languages=["zh"], pageviews="x", segmenters={"zh": "icu"}), "segmenters.zh.*one of"),
    (dict(languages=["km"], wiki="dumps/{lang}wiki.xml.bz2"), r"written without spaces.*segmenters: \{km"),
    (dict(languages=["en", "de"], pageviews="x", pageview_project="de"), "both read pageview project 'de'"),
    (dict(pageviews="x", lang="English"), "language code"),
])
def test_settings_errors_name_the_key(tmp_path, settings, message):
    from jobs.config import load_config

    with pytest.raises(InputError, match=message):
        load_config(None, values={"run_dir": str(tmp_path), **{f"metadata.{k}": v for k, v in settings.items()}})


def test_missing_inputs_name_the_language(tmp_path, world_inputs):
    with pytest.raises(InputError, match=r"Wikipedia dump of fr .*mapping \{lang: path\}"):
        build_metadata(None, str(tmp_path / "M"), None, world_inputs["wiki"], None, languages=["en", "fr"])
    with pytest.raises(InputError, match="no source for fr"):
        build_metadata(None, str(tmp_path / "M"), None, None, None, omw=world_inputs["omw"], languages=["de", "fr"])


def test_effective_cap_is_metaclip2s_share():
    assert effective_cap(251_465, 0.1, 1_000) == 100
    assert effective_cap(100, 0.76, 1_000) == 100
    assert effective_cap(None, 0.29, 100) == 29
    assert effective_cap(5, None, 1_000) == 5
