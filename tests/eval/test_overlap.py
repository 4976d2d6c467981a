"""Overlap-aware accuracy on a hand-made example, and through run_evaluation."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from eval.datasets import EvalDataset
from eval.evaluate import EvalPlan, run_evaluation
from eval.overlap import (accuracy_with_without, load_overlap, normalize_key, overlap_mask,
                          overlapping_keys)


def _write_overlap(run, rows):
    (run / "dedup").mkdir(parents=True)
    table = pa.table({"uid": [r[0] for r in rows], "dataset": [r[1] for r in rows],
                      "key": [r[2] for r in rows], "hamming": pa.array([r[3] for r in rows],
                                                                        pa.int32())})
    pq.write_table(table, run / "dedup" / "overlap.parquet")


def test_accuracy_with_and_without(tmp_path):
    _write_overlap(tmp_path, [("u1", "digits", "0001.png", 0), ("u2", "digits", "0003", 6),
                              ("u3", "digits", "0003", 2), ("u4", "other", "0000", 0)])
    table = load_overlap(str(tmp_path))
    keys = overlapping_keys(table, "digits")
    assert keys == {"0001", "0003"}
    assert overlapping_keys(table, "digits", max_hamming=4) == {"0001", "0003"}
    assert overlapping_keys(table, "digits", max_hamming=1) == {"0001"}
    correct = np.array([True, True, False, True, False, False])
    res = accuracy_with_without(correct, ["0000", "0001", "0002", "0003", "0004", "0005"], keys)
    # all: 3/6; overlapping {0001, 0003}: both right -> 1.0; clean: 1/4
    assert res["n_overlapping"] == 2
    assert res["all"] == {"n": 6, "top1": 0.5}
    assert res["overlapping"] == {"n": 2, "top1": 1.0}
    assert res["clean"] == {"n": 4, "top1": 0.25}
    assert res["delta_all_minus_clean"] == pytest.approx(0.25)


def test_key_normalisation():
    assert normalize_key("./a/0001.JPG") == "a/0001"
    assert normalize_key("x.y") == "x.y"
    assert overlap_mask(["a", "b.png"], {"b"}).tolist() == [False, True]


def test_missing_table_is_input_error(tmp_path):
    with pytest.raises(InputError, match="dedup"):
        load_overlap(str(tmp_path / "dedup" / "overlap"))
    with pytest.raises(InputError, match="no parquet"):
        load_overlap(str(tmp_path))


def test_run_evaluation_with_overlap(tmp_path, vector_model_cls, make_vector_image):
    words = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    model = vector_model_cls(2, words)
    vecs = [[255, 0], [0, 255], [255, 10], [10, 255], [0, 255], [255, 0]]
    labels = [0, 1, 0, 0, 0, 1]  # right, right, right, wrong, wrong, wrong
    ds = EvalDataset(name="toy", keys=[f"{i:04d}" for i in range(6)],
                     images=[make_vector_image(v) for v in vecs], labels=np.array(labels),
                     classnames=["a", "b"], captions=[["a"], ["b"], ["a"], ["b"], ["b"], ["a"]])
    _write_overlap(tmp_path, [("u", "toy", "0000.jpg", 1), ("v", "toy", "0002.jpg", 3)])
    plan = EvalPlan(zeroshot=["toy"], retrieval=["toy"], templates=["{}"], overlap=str(tmp_path))
    plan.cache["toy"] = ds  # pre-loaded dataset: the plan resolves specs through its cache
    res = run_evaluation(model, plan, checkpoint="hand-built")
    zs = res["zeroshot"]["toy"]
    assert zs["top1"] == pytest.approx(0.5)
    assert zs["overlap"]["clean"] == {"n": 4, "top1": 0.25}
    assert zs["overlap"]["overlapping"] == {"n": 2, "top1": 1.0}
    ov = res["retrieval"]["toy"]["overlap"]
    assert ov["n_overlapping"] == 2 and ov["clean"]["n_images"] == 4
    assert ov["clean"]["n_texts"] == 4
