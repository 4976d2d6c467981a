"""jobs.report / `metacurate report` on fixture run directories written by code (no Spark)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from jobs import cli
from jobs.report import load_run, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = dict(n_entries=1500, n_texts=12000, t=20)  # same as conftest's reported_run


def _img_sources(index: Path) -> list[str]:
    return re.findall(r"<img\s+src='([^']+)'", index.read_text(encoding="utf-8"))


def _assert_images_ok(index: Path, expected: set[str]) -> None:
    srcs = _img_sources(index)
    assert set(srcs) == expected
    for src in srcs:
        png = index.parent / src
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, src


def _table_text(html: str) -> str:
    """The text of the page's tables (where raw keys and long floats used to show)."""
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", html, flags=re.S)
    return "\n".join(re.sub(r"<[^>]+>", "", c) for c in cells)


def _assert_readable(html: str) -> None:
    """Tables in words: no summary keys, no `None`, no 16-digit floats, no dotted key paths."""
    text = _table_text(html)
    assert "None" not in text
    assert not re.search(r"\d\.\d{5,}", text), re.search(r".{30}\d\.\d{5,}.{10}", text)
    for key in ("task_seconds", "expected_kept", "head_entries", "target_size", "wall_seconds", "reconciled"):
        assert key not in text, key
    assert not re.search(r"\b[a-z_]+\.[a-z_]+\b", text.replace("index.html", "")), \
        re.findall(r"\b[a-z_]+\.[a-z_]+\b", text)[:5]
    assert "<table id='stages'" in html and "<table id='rejects'" in html and "class='kv' id='balance'" in html


def test_report_on_fixture_run_writes_html_pngs_and_exact_summary(reported_run):
    run, info, index = reported_run
    index = Path(index)
    assert index == run / "report" / "index.html"
    _assert_images_ok(index, {"counts_sorted.png", "cumulative_share.png", "sources.png", "top_head.png",
                              "tail_coverage.png", "kept_vs_t.png"})
    summary = json.loads((run / "report" / "summary.json").read_text())
    counts, kept, t = info["counts"], info["kept"], info["t"]
    assert summary["t"] == t
    assert summary["head_tail"]["head_entries"] == int((counts > t).sum())
    assert summary["head_tail"]["tail_entries"] == int(((counts > 0) & (counts <= t)).sum())
    assert summary["tail_coverage"] == pytest.approx(((counts > 0) & (counts <= t)).sum() / (counts > 0).sum())
    assert summary["kept_matches"] == int(kept.sum())
    assert sum(r["matches"] for r in summary["sources"]) == int(counts.sum())
    assert sum(r["kept"] for r in summary["sources"]) == int(kept.sum())
    # metadata/entries.parquet present: entries per source count every entry, matched or not
    assert sum(r["entries"] for r in summary["sources"]) == len(counts)
    top = summary["top_head"]
    assert len(top) == 50
    best = int(np.argmax(counts))
    assert (top[0]["entry"], top[0]["count"], top[0]["kept"]) == (info["names"][best], int(counts[best]),
                                                                  int(kept[best]))
    assert [r["count"] for r in top] == sorted((r["count"] for r in top), reverse=True)
    assert summary["kept_fraction_vs_t"]["chosen_t"] == t
    html = index.read_text(encoding="utf-8")
    for needle in (info["names"][best], f"{info['pool']:,}", f"{info['n_kept']:,}", "no_match", "empty_text",
                   "text is empty", "wiki_bigram", "Not run yet"):
        assert needle in html, needle
    # stages without output degrade: download/dedup/shard all announced as not run; lid is optional
    assert html.count("Not run yet") == 3 and "Not run (an optional stage" in html
    _assert_readable(html)


def test_cli_report_later_stages_no_sweep_no_metadata_and_mismatch(fixture_run, tmp_path, capsys):
    """One render covering the variations: later stages present, optional inputs absent, a stage
    whose counts do not reconcile, output written elsewhere through the CLI."""
    run, info = fixture_run(later_stages=True, with_metadata=False, **SMALL)
    (run / "balance" / "_stats" / "t_sweep.json").unlink()
    p = run / "match" / "_summary.json"
    broken = json.loads(p.read_text())
    broken["out"] += 1  # in != out + rejected: the page must say so
    p.write_text(json.dumps(broken))
    out = tmp_path / "elsewhere"
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    index = out / "index.html"
    assert printed == str(index) and index.is_file()
    assert not (run / "report").exists()
    html = index.read_text(encoding="utf-8")
    for needle in ("http_404", "decode_error", "eval_near_duplicate", "Hamming distance k", "eval images per set",
                   "cifar10", "10,000 images", "shards", "downloaded", "123 MB", "12.5 s"):
        assert needle in html, needle
    _assert_readable(html)
    assert html.count("Not run yet") == 1 and "metacurate metadata --config" in html  # no metadata stage here
    assert html.count("does not add up") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["match", "count", "balance", "download",
                                                      "dedup", "shard"]
    assert [s["reconciles"] for s in summary["stages"]] == [False, True, True, True, True, True]
    assert all(s["done"] for s in summary["stages"])
    # no t_sweep.json: no kept-vs-t plot, every other plot present and referenced
    _assert_images_ok(index, {"counts_sorted.png", "cumulative_share.png", "sources.png", "top_head.png",
                              "tail_coverage.png"})
    assert "kept_fraction_vs_t" not in summary
    # no metadata/entries.parquet: entries per source = rows of the count table (count > 0 here)
    assert sum(r["entries"] for r in summary["sources"]) == int((info["counts"] > 0).sum())


@pytest.mark.parametrize("missing, stage", [
    ("count/entry_counts.parquet", "count"),
    ("balance/_stats/kept_counts.parquet", "balance"),
    ("balance/_summary.json", "balance"),
])
def test_missing_required_input_names_file_and_stage(fixture_run, missing, stage):
    run, _ = fixture_run(**SMALL)
    (run / missing).unlink()
    with pytest.raises(InputError) as err:
        write_report(str(run))
    assert missing in str(err.value) and f"metacurate {stage}" in str(err.value)
    assert not (run / "report" / "index.html").exists()


def test_missing_column_and_inconsistent_kept_are_input_errors(fixture_run):
    run, _ = fixture_run(**SMALL)
    kept_path = run / "balance" / "_stats" / "kept_counts.parquet"
    good = pq.read_table(kept_path)
    pq.write_table(good.rename_columns(["entry_id", "n"]), kept_path)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['kept'\]"):
        write_report(str(run))
    too_many = pa.table({"entry_id": good["entry_id"],
                         "kept": pa.array(np.asarray(good["kept"]) + 10**9, pa.int64())})
    pq.write_table(too_many, kept_path)
    with pytest.raises(InputError, match="re-run balance"):
        write_report(str(run))


def test_nonexistent_run_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_report(str(tmp_path / "nope"))


def test_cli_report_exit_2_on_missing_input(fixture_run, capsys):
    run, _ = fixture_run(**SMALL)
    (run / "count" / "entry_counts.parquet").unlink()
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "count/entry_counts.parquet" in err and "Traceback" not in err


def test_source_column_falls_back_to_metadata_entries(fixture_run):
    run, info = fixture_run(n_entries=200, n_texts=1500, t=5)
    path = run / "count" / "entry_counts.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["source"]), path)
    data = load_run(str(run))
    ids = table.column("entry_id").to_pylist()
    assert data.stats.source.tolist() == [info["sources"][i] for i in ids]
    (run / "metadata" / "entries.parquet").unlink()
    with pytest.raises(InputError, match="no 'source' column"):
        load_run(str(run))


def test_tables_in_words_times_by_phase_and_per_language(reported_run):
    """The fields real stages write (nested times, None, per-language figures) read as words."""
    _, info, index = reported_run
    html = Path(index).read_text(encoding="utf-8")
    assert "Time by phase" in html and "t sweep" in html and "duplicate-uid check" in html
    assert "<table id='per-language'" in html and "39.9%" in html
    assert "target size" not in html  # None: the row is left out
    assert f"{info['n_kept']:,} texts" in html and "wall time" in html and "2.1 s" in html
    assert "metadata fingerprint" not in html and "3f97c419" not in html  # an internal


def test_axes_fit_the_data():
    """A log axis ends just past the largest value (no empty decade); a narrow count range gets a
    linear axis from 0."""
    from matplotlib.figure import Figure

    from jobs.report import _count_axis

    ax = Figure().add_subplot()
    assert _count_axis(ax, "x", 20, 693)  # > 30x: log
    lo, hi = ax.get_xlim()
    assert 693 < hi < 1000 and 10 < lo < 20
    labels = [t.get_text() for t in ax.xaxis.get_majorticklabels()]
    assert not any("^" in s for s in labels)  # 1k, 200, ... not 10^3
    ax = Figure().add_subplot()
    assert not _count_axis(ax, "x", 21, 92)
    lo, hi = ax.get_xlim()
    assert lo == 0 and 92 < hi < 100


def test_several_languages_get_a_plot_a_table_and_inspect_lines(fixture_run):
    """MetaCLIP 2 worldwide runs: the report draws each language's share before/after balancing
    and its head/tail entries; inspect prints a line per language; the head/tail card uses the
    balance stage's per-language figures."""
    from jobs.commands.inspect import WIDTH, format_inspect
    from jobs.report import write_report

    run, info = fixture_run(**SMALL)
    path = run / "balance" / "_summary.json"
    b = json.loads(path.read_text())
    per = {"en": {"t": 60.0, "tail_proportion": 0.289, "entries": 900, "matched_entries": 114, "head_entries": 24,
                  "matches": 5000, "rows_in": 1596, "rows_kept": 1281},
           "de": {"t": 26.0, "tail_proportion": 0.27, "entries": 40, "matched_entries": 35, "head_entries": 13,
                  "matches": 900, "rows_in": 375, "rows_kept": 330},
           "zh": {"t": 30.0, "tail_proportion": 0.269, "entries": 40, "matched_entries": 35, "head_entries": 14,
                  "matches": 800, "rows_in": 328, "rows_kept": 315}}
    b.update(per_language=per, head_entries=51, tail_entries=133)
    path.write_text(json.dumps(b))
    index = Path(write_report(str(run)))
    _assert_images_ok(index, {"counts_sorted.png", "cumulative_share.png", "sources.png", "top_head.png",
                              "tail_coverage.png", "kept_vs_t.png", "languages.png"})
    html = index.read_text(encoding="utf-8")
    assert "head / tail entries (t per language)" in html and "51 / 133" in html
    assert "<table id='per-language'" in html
    text = format_inspect(str(run))
    assert "PER LANGUAGE" in text and "at one t; per language below" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.strip() and line.split()[0] in per and len(line.split()) == 9}
    assert set(rows) == {"en", "de", "zh"}
    assert rows["de"][1] == "26" and rows["de"][5] == "375" and rows["zh"][7] == "315"
    assert rows["en"][6] == f"{100 * 1596 / 2299:.1f}%"  # share of the texts matched
    assert max(len(line) for line in text.splitlines() if str(run) not in line) <= WIDTH
