"""Results document: stable schema and metric names, table, HTML summary, CSV for scaling."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from eval.datasets import EvalDataset
from eval.evaluate import EvalPlan, run_evaluation
from eval.report import SCHEMA, collect_csv, format_table, write_results, write_summary


class _Model:
    """Two-axis vector model; ``samples_seen`` set to exercise the compute bookkeeping."""

    image_size = 2
    gmacs_per_sample = 0.5

    def __init__(self, vector_model_cls, samples_seen):
        self.inner = vector_model_cls(2, {"a": [1.0, 0.0], "b": [0.0, 1.0]})
        self.samples_seen = samples_seen

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _results(vector_model_cls, make_vector_image, samples_seen=100):
    ds = EvalDataset(name="toy", keys=["0", "1", "2", "3"],
                     images=[make_vector_image(v) for v in ([255, 0], [0, 255], [255, 9], [9, 255])],
                     labels=np.array([0, 1, 1, 1]), classnames=["a", "b"],
                     captions=[["a"], ["b"], ["a"], ["b"]])
    plan = EvalPlan(zeroshot=["toy"], retrieval=["toy"], templates=["{}"])
    plan.cache["toy"] = ds
    return run_evaluation(_Model(vector_model_cls, samples_seen), plan, checkpoint="m.pt")


def test_schema_and_metrics(tmp_path, vector_model_cls, make_vector_image):
    res = _results(vector_model_cls, make_vector_image)
    path = write_results(res, tmp_path / "out" / "results.json")
    assert path == str(tmp_path / "out" / "results.json")
    doc = json.loads(Path(path).read_text())
    assert doc["schema"] == SCHEMA
    assert set(doc) >= {"schema", "created_utc", "checkpoint", "model", "samples_seen",
                        "compute_gmacs", "zeroshot", "retrieval", "linear_probe", "metrics"}
    assert doc["compute_gmacs"] == pytest.approx(50.0) and doc["model"]["embed_dim"] == 2
    assert doc["zeroshot"]["toy"]["top1"] == pytest.approx(0.75)
    assert doc["metrics"]["zeroshot/toy/top1"] == pytest.approx(0.75)
    assert set(doc["metrics"]) == {
        "zeroshot/toy/top1", "zeroshot/toy/top5", "zeroshot/toy/mean_per_class",
        "retrieval/toy/image_to_text/R@1", "retrieval/toy/image_to_text/R@5",
        "retrieval/toy/image_to_text/R@10", "retrieval/toy/text_to_image/R@1",
        "retrieval/toy/text_to_image/R@5", "retrieval/toy/text_to_image/R@10",
        "retrieval/toy/mean_recall"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json"]  # no temporary left
    table = format_table(doc)
    assert "zero-shot" in table and "75.00%" in table and "image→text" in table
    html = Path(write_summary(doc, tmp_path / "html")).read_text()
    for png in ("zeroshot_toy.png", "retrieval_toy.png"):
        assert png in html and (tmp_path / "html" / png).read_bytes()[:4] == b"\x89PNG"


def test_collect_then_scaling_fit(tmp_path, vector_model_cls, make_vector_image):
    from eval.scaling import fit_scaling, load_results_csv

    paths = []
    for i, seen in enumerate((10, 100, 1000)):
        res = _results(vector_model_cls, make_vector_image, samples_seen=seen)
        paths.append(write_results(res, tmp_path / f"r{i}.json"))
    out = collect_csv(paths, tmp_path / "runs.csv")
    rows = list(csv.DictReader(Path(out).open()))
    assert [float(r["compute"]) for r in rows] == [5.0, 50.0, 500.0]
    assert rows[0]["zeroshot/toy/top1"] == "0.75"
    compute, error = load_results_csv(out, accuracy_column="zeroshot/toy/top1")
    assert compute.tolist() == [5.0, 50.0, 500.0] and np.allclose(error, 0.25)
    fit = fit_scaling(compute, error)
    assert fit.alpha == pytest.approx(0.0, abs=1e-9)  # flat error: zero slope
    (tmp_path / "bad.json").write_text('{"schema": "other/1"}')
    with pytest.raises(ValueError, match="not a metacurate eval"):
        collect_csv([tmp_path / "bad.json"], tmp_path / "x.csv")
