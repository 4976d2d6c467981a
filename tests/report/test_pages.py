"""curation.pages (the one page style) and the eval summary page built on it (no Spark, no browser)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from curation import pages
from eval.report import SCHEMA, recall_chance, retrieval_chance, write_results, write_summary


def test_numbers_read_as_people_read_them():
    assert pages.num(1234567) == "1,234,567" and pages.num(np.int64(693)) == "693"
    assert pages.num(422.49443753812983) == "422" and pages.num(0.7142857142857143) == "0.714"
    assert pages.num(12.5) == "12.5" and pages.num(None) == "–" and pages.num(float("nan")) == "–"
    assert pages.num(True) == "yes" and pages.num(np.bool_(False)) == "no"
    assert pages.pct(0.39913793103448275) == "39.9%" and pages.pct(None) == "–"
    assert pages.seconds(0.1223) == "0.12 s" and pages.seconds(8.649) == "8.6 s"
    assert pages.seconds(245) == "4 min 05 s" and pages.seconds(0.001) == "< 0.01 s"
    assert pages.nbytes(123456789) == "123 MB"


def test_tables_escape_data_and_say_when_empty():
    t = pages.table(["entry", "count"], [["<script>", 1234]], numeric=[False, True])
    assert "&lt;script&gt;" in t and "<td class='n'>1,234</td>" in t
    assert pages.table(["a"], [], empty="Nothing found.") == "<p class='na'>Nothing found.</p>"
    kv = pages.kv_table([("rows in", "1,000 rows", True, False), ("de", "38", True, True)])
    assert "<tr class=sub><th>de</th>" in kv


def test_chance_levels():
    """Random ranking: K of N candidates with one right answer; more with several right answers."""
    assert recall_chance(1, 100) == pytest.approx(0.01) and recall_chance(10, 100) == pytest.approx(0.1)
    assert recall_chance(1, 200, 2) == pytest.approx(0.01)
    miss = (198 / 200) * (197 / 199) * (196 / 198) * (195 / 197) * (194 / 196)  # 5 draws, both right ones missed
    assert recall_chance(5, 200, 2) == pytest.approx(1 - miss)
    assert recall_chance(10, 6) == 1.0  # more slots than candidates
    ch = retrieval_chance({"n_images": 100, "n_texts": 200, "image_to_text": {"R@1": 0.1},
                           "text_to_image": {"R@5": 0.1}})
    assert ch["text_to_image"]["R@5"] == pytest.approx(0.05) and ch["image_to_text"]["R@1"] == pytest.approx(0.01)


def test_eval_page_uses_the_page_style_and_shows_chance(tmp_path):
    results = {
        "schema": SCHEMA, "created_utc": "2025-01-01T00:00:00+00:00", "checkpoint": "ckpt<1>",
        "model": {"class": "EvalCLIP", "image_size": 64, "gmacs_per_sample": 0.083264512, "embed_dim": 8},
        "samples_seen": 1920, "compute_gmacs": 159.86798,
        "zeroshot": {"digits": {"n": 40, "top1": 0.25, "top5": 0.6, "per_class": {str(i): 0.25 for i in range(10)},
                                "class_counts": {str(i): 4 for i in range(10)}, "mean_per_class": 0.25,
                                "num_templates": 2}},
        "retrieval": {"heldout": {"n_images": 10, "n_texts": 20, "image_to_text": {"R@1": 0.1, "R@5": 0.5},
                                  "text_to_image": {"R@1": 0.1, "R@5": 0.5}, "mean_recall": 0.3}},
        "linear_probe": {}, "collapsed": ["digits"],
        "diagnostics": {"digits": {"why": "image features nearly identical"}},
    }
    write_results(results, tmp_path / "r.json")
    index = Path(write_summary(json.loads((tmp_path / "r.json").read_text()), tmp_path / "html"))
    html = index.read_text()
    assert "<style>" in html and ".card .v" in html and "ckpt&lt;1&gt;" in html
    assert "chance top-1" in html and "10.0%" in html  # 1 / 10 classes
    assert "image features nearly identical" in html
    assert "0.083264512" not in html and not re.search(r"\d\.\d{6,}", html)
    for png in ("zeroshot_digits.png", "retrieval_heldout.png"):
        assert f"src='{png}'" in html and (tmp_path / "html" / png).read_bytes()[:4] == b"\x89PNG"
