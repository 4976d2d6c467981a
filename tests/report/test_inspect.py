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
    assert "DOWNLOAD" in full and "downloaded: 123 MB" in full and "shards: 3" in full
    assert "Hamming distance k: 8" in full and "cifar10 10,000 images" in full
    assert "=-" not in full and "reconciled" not in full
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


def test_inspect_reports_the_audit_and_the_summaries_reconciled_flag(fixture_run):
    """`audit yes` (with its overlap count) once RUN/audit/audit.json exists; the in=out+rej column
    follows each stage's summary, also for a summary that only says ``reconciled: true``."""
    import json

    run, _ = fixture_run(n_entries=300, n_texts=2000, t=5, later_stages=True)
    text = format_inspect(str(run), top=3)
    assert re.search(r"^  audit\s+NO\s+metacurate audit ", text, re.M)
    assert re.search(r"^  report\s+NO\s+metacurate report ", text, re.M)
    (run / "audit").mkdir()
    (run / "audit" / "audit.json").write_text(json.dumps(
        {"k": 8, "pool_images": 1200, "overlapping_pool_images": 5, "pairs": 5, "phash_pairs": 12,
         "max_colour_distance": 6.0}))
    shard = run / "shards" / "_summary.json"
    s = json.loads(shard.read_text())
    shard.write_text(json.dumps({"stage": "shard", "reconciled": True, "shards": s["shards"]}))
    text = format_inspect(str(run), top=3)
    assert re.search(r"^  audit\s+yes\s+5 of 1,200 pool images overlap the eval sets at k = 8$", text, re.M)
    assert "12 pHash pairs, 5 confirmed by the colour check" in text
    rows = {line.split()[0]: line for line in text.splitlines() if re.match(r"^  [a-z]+\s+(yes|NO)\s", line)}
    for stage in ("download", "dedup", "shard"):
        assert re.search(r"\s+ok\s", rows[stage]), rows[stage]
    # paths are printed whole (to be copied); everything else fits
    long = [line for line in text.splitlines() if str(run) not in line and len(line) > WIDTH]
    assert not long, long
