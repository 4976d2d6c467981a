"""`metacurate inspect RUN`: the terminal summary holds the key figures and fits 100 columns."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from curation.errors import InputError
from jobs import cli
from jobs.commands.inspect import WIDTH, format_inspect


def test_inspect_shows_key_figures(reported_run):
    run, info, _ = reported_run
    text = format_inspect(str(run))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    counts, kept, t = info["counts"], info["kept"], info["t"]
    for stage in ("metadata", "match", "count", "balance"):
        assert any(line.split()[:2] == [stage, "yes"] for line in lines if line.strip()), stage
    assert f"t = {t:g}" in text and "seed = 0" in text
    assert f"pool = {info['pool']:,}" in text and f"kept = {info['n_kept']:,}" in text
    assert f"head (count > t) {int((counts > t).sum()):,}" in text
    coverage = ((counts > 0) & (counts <= t)).sum() / (counts > 0).sum()
    assert f"tail coverage: {100 * coverage:.2f}%" in text
    for source in ("wordnet", "wiki_unigram", "wiki_bigram", "wiki_title"):
        assert source in text
    # top-20 head entries with count -> kept, most matched first
    order = np.lexsort((np.arange(len(counts)), -counts))[:20]
    rows = [line for line in lines if re.match(r"^\s+\d+\s{2}", line)]
    assert len(rows) == 20
    for row, i in zip(rows, order):
        assert info["names"][i][:33] in row
        assert f"{int(counts[i]):,} -> " in row and f"{int(kept[i]):,}" in row
    assert "no_match" in text and "e.g." in text


def test_inspect_partial_run_and_later_stages(fixture_run):
    run, _ = fixture_run(n_entries=300, n_texts=2000, t=5, later_stages=True)
    full = format_inspect(str(run), top=5)
    assert "DOWNLOAD" in full and "bytes=123,456,789" in full and "shards=3" in full
    assert sum(bool(re.match(r"^\s+\d+\s{2}", line)) for line in full.splitlines()) == 5
    shutil.rmtree(run / "balance")
    partial = format_inspect(str(run))
    assert "not available yet" in partial and "balance" in partial
    assert "TOP-" not in partial and "match" in partial


def test_inspect_cli_and_missing_run(fixture_run, tmp_path, capsys):
    run, info = fixture_run(n_entries=300, n_texts=2000, t=5)
    assert cli.main(["inspect", str(run), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "TOP-3 HEAD ENTRIES" in out and "BALANCE" in out
    with pytest.raises(InputError, match="does not exist"):
        format_inspect(str(tmp_path / "missing"))
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 2
