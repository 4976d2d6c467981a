"""`metacurate eval` end to end on a tiny random checkpoint built with training's own API.

Nothing is trained: the point is that eval runs on a real checkpoint file through
``training.checkpoint.load_for_eval`` (the trained-model contract) and writes the documented
results, table and summary.
"""
from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval.report import SCHEMA, collect_csv, new_results
from jobs.cli import main

try:
    import torch

    from training.checkpoint import load_for_eval, save_checkpoint
    from training.model import CLIP, get_config
    from training.tokenizer import ByteTokenizer
    _TRAINING_ERROR = None
except ImportError as exc:  # training/ is written in parallel; say why the test cannot run
    _TRAINING_ERROR = f"training.checkpoint not importable: {exc}"

needs_training = pytest.mark.skipif(_TRAINING_ERROR is not None, reason=str(_TRAINING_ERROR))


def _heldout(run):
    d = run / "heldout"
    d.mkdir(parents=True)
    colors = ["red", "green", "blue", "yellow", "white", "black"]
    with tarfile.open(d / "000000.tar", "w") as tar:
        for i, c in enumerate(colors):
            buf = io.BytesIO()
            Image.new("RGB", (80, 70), c).save(buf, format="JPEG")
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"a {c} square".encode()),
                              ("json", json.dumps({"uid": f"u{i}"}).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _checkpoint(path):
    torch.manual_seed(0)
    tok = ByteTokenizer()
    cfg = get_config("tiny", vocab_size=tok.vocab_size)
    model = CLIP(cfg)
    save_checkpoint({"model_config": cfg.to_dict(), "model": model.state_dict(),
                     "tokenizer": tok.to_json(), "samples_seen": 512, "compute_gmacs": 40.0},
                    path)
    return path


@needs_training
def test_eval_cli_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    _heldout(run)
    (run / "dedup" / "overlap").mkdir(parents=True)  # where the dedup stage writes its overlap rows
    pq.write_table(pa.table({"uid": ["x", "y"], "dataset": ["digits", "digits"],
                             "key": ["0000.png", "0005.png"], "hamming": [0, 3]}),
                   run / "dedup" / "overlap" / "part-00000.parquet")
    ckpt = _checkpoint(tmp_path / "ckpt" / "step_1.pt")
    model = load_for_eval(ckpt)
    out = tmp_path / "results.json"
    rc = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--zeroshot", "digits",
               "--retrieval", str(run / "heldout"), "--linear-probe", "digits",
               "--out", str(out), "--overlap", str(run), "--max-samples", "240",
               "--html", str(tmp_path / "html")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "retrieval" in printed and "linear probe" in printed
    res = json.loads(out.read_text())
    assert res["schema"] == SCHEMA
    assert res["model"]["image_size"] == model.image_size
    assert res["model"]["gmacs_per_sample"] == pytest.approx(model.gmacs_per_sample)
    # compute as the trainer recorded it in the checkpoint
    assert res["samples_seen"] == 512 and res["compute_gmacs"] == pytest.approx(40.0)
    fallback = new_results("x", model, samples_seen=1000)
    assert fallback["compute_gmacs"] == pytest.approx(model.gmacs_per_sample * 1000)
    zs = res["zeroshot"]["digits"]
    assert zs["n"] == 240 and 0 <= zs["top1"] <= zs["top5"] <= 1
    assert set(zs["per_class"]) <= {"zero", "one", "two", "three", "four", "five", "six",
                                    "seven", "eight", "nine"}
    assert zs["overlap"]["all"]["n"] == 240
    assert zs["overlap"]["clean"]["n"] + zs["overlap"]["n_overlapping"] == 240
    rt = res["retrieval"]["heldout"]
    assert (rt["n_images"], rt["n_texts"]) == (6, 6)
    assert all(0 <= v <= 1 for v in rt["image_to_text"].values())
    # 6 candidates: recall@10 must be exactly 1 both ways
    assert rt["image_to_text"]["R@10"] == 1.0 and rt["text_to_image"]["R@10"] == 1.0
    lp = res["linear_probe"]["digits"]
    assert lp["n_train"] + lp["n_val"] + lp["n_test"] == 240 and 0 <= lp["top1"] <= 1
    assert res["metrics"]["zeroshot/digits/top1"] == zs["top1"]
    html = (tmp_path / "html" / "index.html").read_text()
    for png in ("zeroshot_digits.png", "retrieval_heldout.png"):
        assert png in html and (tmp_path / "html" / png).exists()
    csv_path = collect_csv([out, out], tmp_path / "runs.csv")
    assert open(csv_path).read().count("\n") == 3


def test_eval_cli_needs_a_task(tmp_path, capsys):
    rc = main(["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert rc == 2
    assert "nothing to evaluate" in capsys.readouterr().err


@needs_training
def test_eval_cli_missing_checkpoint(tmp_path, capsys):
    rc = main(["eval", "--checkpoint", str(tmp_path / "none"), "--zeroshot", "digits",
               "--out", str(tmp_path / "r.json")])
    assert rc == 2
    assert "no checkpoint" in capsys.readouterr().err
