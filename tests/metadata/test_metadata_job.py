"""The Spark metadata build end to end on generated dumps in the real formats + real WordNet."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from jobs.cli import main as cli_main
from tests.metadata.conftest import build_metadata
from metadata import wiki
from metadata.synthetic import write_pageviews

SMALL = dict(unigram_min_count=40, bigram_min_count=3, bigram_min_pmi=2.0, pageview_min_total_views=70)


def _entries(out: Path) -> dict:
    return pq.read_table(out / "entries.parquet").to_pydict()


def _reference(dump: str) -> wiki.NgramCounts:
    return wiki.count_file(dump)


@pytest.fixture(scope="module")
def wiki_build(spark, wiki_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "M"
    report = build_metadata(spark, str(out), None, wiki_inputs["dump"], wiki_inputs["pageviews"],
                            **SMALL, unit_mb=0.002)
    return out, report


def test_unigrams_bigrams_titles_match_hand_counts(wiki_build, wiki_inputs):
    out, report = wiki_build
    ref = _reference(wiki_inputs["dump"])
    assert report["wikipedia"]["work_units"] > 3  # really split across tasks
    assert report["wikipedia"]["articles"] == 150  # the talk page and the redirect are skipped
    assert report["wikipedia"]["n_unigrams"] == ref.n_unigrams
    assert report["wikipedia"]["n_bigrams"] == ref.n_bigrams
    t = _entries(out)
    rows = list(zip(t["entry"], t["source"], t["score"]))
    assert t["entry_id"] == list(range(len(rows)))
    unigrams = {e: s for e, src, s in rows if src == "unigram"}
    assert unigrams == {w: float(c) for w, c in ref.unigrams.items() if c >= 40}
    assert "talkonly" not in ref.unigrams and "zzcell" not in ref.unigrams  # talk page, table
    # PMI by hand for "ice cream": counts from the Spark-free reference
    c_xy, c_x, c_y = ref.bigrams[("ice", "cream")], ref.unigrams["ice"], ref.unigrams["cream"]
    assert c_xy == c_x == c_y == 60  # "ice cream" twice in each of 30 articles, nowhere else
    hand = math.log2((c_xy / ref.n_bigrams) / ((c_x / ref.n_unigrams) * (c_y / ref.n_unigrams)))
    bigrams = {e: s for e, src, s in rows if src == "bigram"}
    assert bigrams["ice cream"] == pytest.approx(hand, rel=1e-12)
    expected = {f"{a} {b}": wiki.pmi(c, ref.unigrams[a], ref.unigrams[b], ref.n_unigrams, ref.n_bigrams)
                for (a, b), c in ref.bigrams.items() if c >= 3}
    expected = {k: v for k, v in expected.items() if v >= 2.0}
    assert bigrams.keys() == expected.keys()
    for k, v in expected.items():
        assert bigrams[k] == pytest.approx(v, rel=1e-12)
    titles = {e: s for e, src, s in rows if src == "title"}
    assert titles == {"Hot dog": 115.0, "New York City": 80.0, "Washington, D.C.": 90.0, "Dog": 75.0}
    # order inside a source: score desc, then entry
    assert [e for e, src, _ in rows if src == "title"] == ["Hot dog", "Washington, D.C.", "New York City", "Dog"]
    assert json.loads((out / "metadata.json").read_text("utf-8")) == t["entry"]
    assert report["lint"]["counts"]["wrapped_char"] == 1  # "Washington, D.C." can never match
    assert report["sources"]["title"]["candidates"] == 4
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["in"] == summary["out"] + sum(summary["rejected"].values())
    assert json.loads((out / "_SUCCESS").read_text())["stage"] == "metadata"


def test_same_inputs_byte_identical_whatever_the_split(spark, wiki_build, wiki_inputs, tmp_path):
    out, report = wiki_build
    out2 = tmp_path / "M"
    report2 = build_metadata(spark, str(out2), None, wiki_inputs["dump"], wiki_inputs["pageviews"],
                             **SMALL, unit_mb=1000)
    assert report2["wikipedia"]["work_units"] == 1
    for name in ("entries.parquet", "metadata.json"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes(), name
    for r2, r in ((report2, report), (report2["languages"]["en"], report["languages"]["en"])):
        r2["wikipedia"]["work_units"] = r["wikipedia"]["work_units"]
    assert report2 == report


def test_caps_and_parquet_input(spark, wiki_inputs, tmp_path):
    ref = _reference(wiki_inputs["dump"])
    articles = [p for p in wiki_inputs["pages"] if p.ns == 0 and not p.redirect]
    pq.write_table(pa.table({"title": [p.title for p in articles], "text": [p.text for p in articles]}),
                   tmp_path / "wiki.parquet")
    report = build_metadata(spark, str(tmp_path / "M"), None, str(tmp_path / "wiki.parquet"), None, **SMALL,
                            cap_unigram=3, cap_bigram=1)
    t = _entries(tmp_path / "M")
    top3 = sorted(((w, c) for w, c in ref.unigrams.items()), key=lambda wc: (-wc[1], wc[0]))[:3]
    assert list(zip(t["entry"], t["score"]))[:3] == [(w, float(c)) for w, c in top3]
    assert t["source"] == ["unigram"] * 3 + ["bigram"]
    assert report["sources"]["unigram"]["over_cap"] == report["sources"]["unigram"]["candidates"] - 3
    assert report["wikipedia"]["n_unigrams"] == ref.n_unigrams


def test_full_build_with_wordnet_via_cli(spark, wiki_inputs, wordnet_dir, tmp_path, capsys):
    out = tmp_path / "M"
    rc = cli_main(["metadata", "build", "--wordnet", str(wordnet_dir), "--wiki", wiki_inputs["dump"],
                   "--pageviews", wiki_inputs["pageviews"], "--out", str(out),
                   "--unigram-min-count", "40", "--bigram-min-count", "3", "--bigram-min-pmi", "2"])
    assert rc == 0
    report = json.loads((out / "_report.json").read_text())
    assert report["wordnet"] == {"synsets": 117_659, "distinct_names": 86_554}
    t = _entries(out)
    source = dict(zip(t["entry"], t["source"]))
    assert source["dog"] == "wordnet" and source["new york"] == "wordnet"
    assert source["ice cream"] == "wordnet"  # WordNet has it, so the bigram is a duplicate
    assert source["Hot dog"] == "title"
    wordnet_names = set(t["entry"][:86_554])
    ref = _reference(wiki_inputs["dump"])
    assert {e for e, s in source.items() if s == "unigram"} == {
        w for w, c in ref.unigrams.items() if c >= 40 and w not in wordnet_names}
    assert t["source"][:86_554] == ["wordnet"] * 86_554
    assert report["sources"]["unigram"]["duplicates_of_earlier"] > 0
    assert "86554" in capsys.readouterr().out
    # WordNet alone needs no Spark and no other source
    assert cli_main(["metadata", "build", "--wordnet", str(wordnet_dir), "--out", str(tmp_path / "W")]) == 0
    assert len(json.loads((tmp_path / "W" / "metadata.json").read_text())) == 86_554


def test_malformed_inputs_name_the_file_and_write_nothing(spark, wiki_inputs, tmp_path):
    good = Path(wiki_inputs["dump"]).read_bytes()
    trunc = tmp_path / "enwiki-trunc-pages-articles.xml.bz2"
    trunc.write_bytes(good[: len(good) // 2])
    out = tmp_path / "M"
    with pytest.raises(InputError, match="enwiki-trunc-pages-articles.xml.bz2"):
        build_metadata(spark, str(out), None, str(trunc), None, **SMALL, unit_mb=0.002)
    bad_pv = tmp_path / "pv" / "pageviews-bad.gz"
    bad_pv.parent.mkdir()
    write_pageviews(str(bad_pv), [("en", "Dog", 80), ("en", "Cat", "n/a")])
    with pytest.raises(InputError, match=r"pageviews-bad\.gz:2: views 'n/a' is not a number"):
        build_metadata(spark, str(out), None, None, str(bad_pv), **SMALL)
    with pytest.raises(InputError, match="not found: .*missing-dump.xml.bz2"):
        build_metadata(spark, str(out), None, str(tmp_path / "missing-dump.xml.bz2"), None)
    # nothing that looks complete: no marker, no entry list
    assert not (out / "_SUCCESS").exists() and not (out / "metadata.json").exists()
    assert cli_main(["metadata", "build", "--out", str(out)]) == 2


def test_pageview_decoding_and_rebuild_only_when_an_input_changes(spark, tmp_path):
    pv_dir = tmp_path / "pv"
    pv_dir.mkdir()
    hour = pv_dir / "pageviews-20240101-000000.gz"
    write_pageviews(str(hour), [("en", "Café", 60), ("en", "Caf%C3%A9", 55), ("en", "Caf%E9", 80),
                                ("en", "Special%3ARandom", 500)])
    out = tmp_path / "M"
    cfg = {"pageview_min_total_views": 70}
    report = build_metadata(spark, str(out), None, None, str(pv_dir), **cfg)
    t = _entries(out)
    assert dict(zip(t["entry"], t["score"])) == {"Café": 115.0, "Caf%E9": 80.0}
    assert {k: report["pageviews"][k] for k in ("percent_decoded", "undecodable")} == {
        "percent_decoded": 2, "undecodable": 1}
    marker = json.loads((out / "_SUCCESS").read_bytes())["fingerprint"]
    stamp = (out / "_SUCCESS").stat().st_mtime_ns
    # unchanged inputs and settings: skipped (no Spark needed), outputs untouched
    assert build_metadata(None, str(out), None, None, str(pv_dir), **cfg) == report
    assert (out / "_SUCCESS").stat().st_mtime_ns == stamp
    # another setting: rebuilt
    build_metadata(spark, str(out), None, None, str(pv_dir), pageview_min_total_views=100)
    assert _entries(out)["entry"] == ["Café"]
    build_metadata(spark, str(out), None, None, str(pv_dir), **cfg)
    assert json.loads((out / "_SUCCESS").read_bytes())["fingerprint"] == marker  # back to the first settings
    # the file rewritten in place (a later mtime): rebuilt
    write_pageviews(str(hour), [("en", "Café", 90), ("en", "Caf%C3%A9", 55), ("en", "Caf%E9", 80),
                                ("en", "Special%3ARandom", 500)])
    st = hour.stat()
    os.utime(hour, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report2 = build_metadata(spark, str(out), None, None, str(pv_dir), **cfg)
    assert dict(zip(_entries(out)["entry"], _entries(out)["score"]))["Café"] == 145.0
    assert report2["sources"]["title"]["candidates"] == 2
    # a new file matching the glob: rebuilt too; --force rebuilds even when nothing changed
    write_pageviews(str(pv_dir / "pageviews-20240101-010000.gz"), [("en", "Dog", 75)])
    build_metadata(spark, str(out), None, None, str(pv_dir / "*.gz"), **cfg)
    assert "Dog" in _entries(out)["entry"]
    stamp = (out / "_SUCCESS").stat().st_mtime_ns
    build_metadata(spark, str(out), None, None, str(pv_dir / "*.gz"), force=True, **cfg)
    assert (out / "_SUCCESS").stat().st_mtime_ns != stamp


def test_input_stamps_cover_every_wordnet_file(tmp_path):
    from curation.storage import Storage
    from jobs.config import load_config
    from jobs.stages.metadata import build_input_stamps

    wn = tmp_path / "wn"
    wn.mkdir()
    (wn / "data.noun").write_text("a")
    (wn / "index.noun").write_text("b")
    settings = load_config(None, values={"run_dir": str(tmp_path / "r"), "metadata.wordnet": str(wn)}).metadata
    before = build_input_stamps(settings, Storage())
    assert [Path(p).name for p, _, _ in before[0]["wordnet"]] == ["data.noun", "index.noun"]
    st = (wn / "index.noun").stat()
    os.utime(wn / "index.noun", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert build_input_stamps(settings, Storage()) != before
    settings.wordnet = str(tmp_path / "nope")
    with pytest.raises(InputError, match="WordNet folder not found"):
        build_input_stamps(settings, Storage())
