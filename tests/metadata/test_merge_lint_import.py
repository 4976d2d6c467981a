"""Merge order/dedup/caps, lint findings, atomic writes and metadata.json import (no Spark)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from jobs.cli import main as cli_main
from metadata.lint import entry_findings, lint_entries
from metadata.merge import SourceCandidates, build_report, merge_sources, rank, write_outputs


def test_rank_breaks_ties_by_string():
    assert rank([("b", 1.0), ("a", 1.0), ("c", 2.0)]) == [("c", 2.0), ("a", 1.0), ("b", 1.0)]


def test_merge_order_dedup_and_caps():
    sources = [
        SourceCandidates("wordnet", [("dog", 2.0), ("cat", 1.0)]),
        SourceCandidates("unigram", [("dog", 500.0), ("the", 900.0), ("zebra", 100.0), ("apple", 100.0)]),
        SourceCandidates("bigram", [("new york", 31.0), ("hot dog", 35.0)], total=5),
        SourceCandidates("title", [("Dog", 130.0), ("new york", 99.0)]),
    ]
    merged, stats = merge_sources(sources, {"unigram": 2, "bigram": 1, "title": None})
    assert merged == [("dog", "wordnet", 2.0), ("cat", "wordnet", 1.0),
                      ("the", "unigram", 900.0), ("apple", "unigram", 100.0),
                      ("hot dog", "bigram", 35.0),
                      ("Dog", "title", 130.0), ("new york", "title", 99.0)]
    assert stats["unigram"] == {"candidates": 4, "duplicates_of_earlier": 1, "new_before_cap": 3,
                                "cap": 2, "kept": 2, "over_cap": 1}
    assert stats["bigram"]["candidates"] == 5 and stats["bigram"]["over_cap"] == 4
    assert stats["title"]["kept"] == 2


def test_lint_findings():
    assert entry_findings("a.b") == ["wrapped_char"]
    assert entry_findings("x") == ["one_char"]
    assert entry_findings(" dog") == ["edge_space"]
    assert entry_findings("hot  dog") == ["double_space"]
    assert entry_findings("tab\there") == ["control_char"]
    assert entry_findings("") == ["empty"]
    assert entry_findings("hot dog") == []
    # "?" alone can match ("what?" becomes " what ? "), and so can "a . b" ("a.b" becomes " a . b ")
    assert entry_findings("?") == ["one_char"] and entry_findings("a . b") == []
    report = lint_entries(["dog", "Washington, D.C.", "dog", "?", "x"], ["a", "t", "t", "t", "a"])
    assert report["counts"]["wrapped_char"] == 1 and report["counts"]["duplicate"] == 1
    assert report["never_match"] == 1
    assert report["by_source"] == {"a": {"one_char": 1}, "t": {"duplicate": 1, "one_char": 1, "wrapped_char": 1}}
    assert lint_entries(["c++", "(dog)"], rule="metaclip2")["never_match"] == 0
    assert report["examples"]["duplicate"] == [{"entry_id": 2, "entry": "dog"}]


def _write(out: Path, merged, report=None):
    from curation.storage import Storage

    write_outputs(str(out), merged, report or build_report(merged, {}), Storage())


def test_write_outputs_is_byte_identical(tmp_path):
    merged = [("dog", "wordnet", 2.0), ("é café", "title", 3.0)]
    a, b = tmp_path / "a" / "M", tmp_path / "b" / "M"
    _write(a, merged)
    _write(b, merged)
    for name in ("entries.parquet", "metadata.json", "_report.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert json.loads((a / "metadata.json").read_text("utf-8")) == ["dog", "é café"]
    t = pq.read_table(a / "entries.parquet")
    assert str(t.schema.field("entry_id").type) == "int32" and t.column("entry").to_pylist() == ["dog", "é café"]
    # an unserialisable report fails loudly (no NaN in JSON) and leaves no temporary files
    with pytest.raises(ValueError):
        _write(a, [("cat", "wordnet", 1.0)], {"bad": float("nan")})
    assert not [p.name for p in a.iterdir() if p.name.startswith(".tmp")]


def _import(src, out):
    from tests.metadata.conftest import build_metadata

    return build_metadata(None, str(out), path=str(src))


def test_import_validates_and_lints(tmp_path):
    src = tmp_path / "metadata.json"
    src.write_text(json.dumps(["dog", "hot dog", "St. Louis", "dog"]), encoding="utf-8")
    report = _import(src, tmp_path / "M")
    assert report["lint"]["counts"]["wrapped_char"] == 1 and report["lint"]["counts"]["duplicate"] == 0
    # the repeated "dog" is kept once (a second id would split its count); the mapping is kept
    assert report["duplicates_removed"] == 1
    assert report["duplicate_examples"] == [{"original_id": 3, "entry": "dog", "kept_as": 0}]
    t = pq.read_table(tmp_path / "M" / "entries.parquet").to_pydict()
    assert t["entry_id"] == [0, 1, 2] and set(t["source"]) == {"import"} and t["score"] == [None] * 3
    assert json.loads((tmp_path / "M" / "metadata.json").read_text()) == ["dog", "hot dog", "St. Louis"]
    id_map = pq.read_table(tmp_path / "M" / "_id_map.parquet").to_pydict()
    assert id_map == {"original_id": [0, 1, 2, 3], "entry_id": [0, 1, 2, 0]}
    summary = json.loads((tmp_path / "M" / "_summary.json").read_text())
    assert summary["in"] == 4 and summary["out"] == 3 and summary["rejected"] == {"duplicate_entry": 1}
    for bad, msg in (('{"a": 1}', "JSON list"), ('["ok", 3]', "entry #1"), ('["ok", ""]', "empty string"),
                     ("[1,", "not valid")):
        src.write_text(bad)
        with pytest.raises(InputError, match=msg):
            _import(src, tmp_path / "N")
    assert not (tmp_path / "N" / "_SUCCESS").exists() and not (tmp_path / "N" / "metadata.json").exists()


def test_import_keeps_sources_of_a_built_folder(tmp_path):
    """A folder written by a build (or its metadata.json with entries.parquet beside it) keeps
    the per-entry sources and scores; an entries.parquet of another list is not trusted."""
    merged = [("dog", "wordnet", 2.0), ("hot dog", "bigram", 31.5)]
    _write(tmp_path / "B", merged)
    for given in (tmp_path / "B", tmp_path / "B" / "metadata.json"):
        out = tmp_path / f"M-{given.name}"
        _import(given, out)
        t = pq.read_table(out / "entries.parquet").to_pydict()
        assert t["source"] == ["wordnet", "bigram"] and t["score"] == [2.0, 31.5]
    (tmp_path / "B" / "metadata.json").write_text(json.dumps(["cat", "hot dog"]))
    _import(tmp_path / "B" / "metadata.json", tmp_path / "M3")
    assert pq.read_table(tmp_path / "M3" / "entries.parquet").column("source").to_pylist() == ["import"] * 2


def test_cli_import(tmp_path, capsys):
    src = tmp_path / "metadata.json"
    src.write_text(json.dumps(["dog", "a,b"]))
    assert cli_main(["metadata", "import", str(src), "--out", str(tmp_path / "M")]) == 0
    assert "2 entries" in capsys.readouterr().out
    assert json.loads((tmp_path / "M" / "_report.json").read_text())["lint"]["never_match"] == 1
    assert cli_main(["metadata", "import", str(tmp_path / "missing.json"), "--out", str(tmp_path / "X")]) == 2
    assert "missing.json" in capsys.readouterr().err
