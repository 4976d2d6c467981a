"""clip_benchmark's WebDataset layout as an eval input, and its result schema as an output.

The datasets are generated here in the layout ``clip_benchmark_export_wds`` writes (classnames.txt,
zeroshot_classification_templates.txt with ``{c}``, dataset_type.txt for retrieval, test/nshards.txt
and test/0.tar.., samples ``s%07d`` with an image plus ``cls`` or newline-separated ``txt``). The
hand-built VectorModel makes every expected number computable by hand.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.datasets import load_dataset
from eval.evaluate import EvalPlan, run_evaluation
from eval.report import write_clip_benchmark, write_results
from eval.zeroshot import clip_benchmark_metrics
from jobs.cli import main

COLOURS = ["red", "green", "blue"]
WORDS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}


def _image_bytes(values: list[int], fmt: str) -> bytes:
    row = np.zeros((1, len(values), 3), dtype=np.uint8)
    row[0, :, 0] = values
    buf = io.BytesIO()
    if fmt == "webp":
        Image.fromarray(row, mode="RGB").save(buf, format="WEBP", lossless=True)
    else:
        Image.fromarray(row, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_classification(root: Path, labels: list[int], shards: int = 2,
                         templates: tuple[str, ...] = ("a photo of a {c}.", "itap of the {c}")) -> Path:
    """Sample i is a one-hot image of class labels[i] (class c lights pixel c)."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(COLOURS) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    samples = []
    for i, label in enumerate(labels):
        values = [0, 0, 0]
        values[label] = 255
        fmt = "webp" if i % 2 else "png"
        samples.append({"__key__": f"s{i:07d}", fmt: _image_bytes(values, fmt), "cls": str(label).encode()})
    per = -(-len(samples) // shards)
    for s in range(shards):
        _tar(root / "test" / f"{s}.tar", samples[s * per:(s + 1) * per])
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root


def write_retrieval(root: Path) -> Path:
    """Three images (one per colour), two captions each; the blue image's captions say green."""
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    captions = {0: ["a red thing", "red red"], 1: ["green", "a green square"], 2: ["green again", "more green"]}
    samples = []
    for i in range(3):
        values = [0, 0, 0]
        values[i] = 255
        samples.append({"__key__": f"s{i:07d}", "png": _image_bytes(values, "png"),
                        "txt": "\n".join(captions[i]).encode()})
    _tar(root / "test" / "0.tar", samples)
    (root / "test" / "nshards.txt").write_text("1\n")
    return root


class _Recording:
    """VectorModel that remembers the texts it encoded (to see which templates were used)."""

    def __init__(self, base) -> None:
        self.base, self.texts = base, []
        self.image_size, self.gmacs_per_sample = base.image_size, 0.0

    def preprocess(self, image):
        return self.base.preprocess(image)

    def encode_image(self, x):
        return self.base.encode_image(x)

    def encode_text(self, texts):
        self.texts += list(texts)
        return self.base.encode_text(texts)


def test_reads_the_classification_layout(tmp_path):
    root = write_classification(tmp_path / "colours", [0, 1, 2, 0, 1, 2, 2])
    ds = load_dataset(str(root))
    assert ds.name == "colours" and ds.classnames == COLOURS
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 2]
    assert ds.keys[:2] == ["s0000000", "s0000001"] and len(ds) == 7
    assert ds.templates == ["a photo of a {c}.", "itap of the {c}"]
    assert ds.meta["source"] == "clip_benchmark" and ds.meta["shards"] == 2
    assert np.asarray(ds.image(1))[0, :, 0].tolist() == [0, 255, 0]  # lossless webp decoded
    # a split folder given directly names the dataset after its parent
    assert load_dataset(str(root / "test")).name == "colours"


def test_zeroshot_uses_the_dataset_templates_and_writes_both_schemas(tmp_path, vector_model_cls):
    labels = [0, 1, 2, 0, 1, 2, 2]
    root = write_classification(tmp_path / "colours", labels)
    model = _Recording(vector_model_cls(3, WORDS))
    res = run_evaluation(model, EvalPlan(zeroshot=[str(root)]), checkpoint="ckpt/step_3.pt")
    assert "a photo of a red." in model.texts and "itap of the blue" in model.texts  # {c} filled in
    ours = res["zeroshot"]["colours"]
    assert ours["top1"] == 1.0 and ours["num_templates"] == 2  # our names stay
    (record,) = res["clip_benchmark"]
    assert record == {"dataset": "wds/colours", "model": "_Recording", "pretrained": "ckpt/step_3.pt",
                      "task": "zeroshot_classification", "language": "en",
                      "metrics": {"acc1": 1.0, "acc5": None, "mean_per_class_recall": 1.0}}
    out = write_results(res, tmp_path / "results.json")
    assert json.loads(Path(out).read_text())["clip_benchmark"][0]["metrics"]["acc5"] is None  # valid JSON null
    files = write_clip_benchmark(res, tmp_path / "cb")
    assert [Path(f).name for f in files] == ["colours_step_3.pt__Recording_en_zeroshot_classification.json"]
    assert json.loads(Path(files[0]).read_text()) == record


def test_clip_benchmark_metrics_are_computed_its_way():
    # 6 classes; rows: right at rank 0, right at rank 2, wrong everywhere but top-5
    logits = torch.tensor([[9, 1, 2, 3, 4, 5], [1, 9, 8, 7, 0, 0], [9, 8, 7, 6, 5, 0.0]])
    labels = np.array([0, 3, 4])
    m = clip_benchmark_metrics(logits, labels, logits.argmax(1).numpy())
    assert m["acc1"] == pytest.approx(1 / 3) and m["acc5"] == 1.0
    # balanced accuracy: classes 0, 3, 4 occur; recalls 1, 0, 0
    assert m["mean_per_class_recall"] == pytest.approx(1 / 3)
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # sklearn notes that class 1 is predicted but never true
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(labels, logits.argmax(1).numpy())
    assert m["mean_per_class_recall"] == pytest.approx(expected)


def test_retrieval_layout_and_recall_names(tmp_path, vector_model_cls):
    root = write_retrieval(tmp_path / "tiny_flickr")
    ds = load_dataset(str(root))
    assert ds.captions[0] == ["a red thing", "red red"] and ds.labels is None
    res = run_evaluation(vector_model_cls(3, WORDS), EvalPlan(retrieval=[str(root)]), checkpoint="c.pt")
    ours = res["retrieval"]["tiny_flickr"]
    (record,) = res["clip_benchmark"]
    assert record["task"] == "zeroshot_retrieval" and record["dataset"] == "wds/tiny_flickr"
    m = record["metrics"]
    # texts -> images: the blue image's two captions are about green and retrieve the green image
    # (4 of 6 texts hit); images -> texts: only the red image's captions stand alone at the top (the
    # green image ties with the blue one's green captions, the blue image matches nothing)
    assert m["image_retrieval_recall@1"] == pytest.approx(ours["text_to_image"]["R@1"]) == pytest.approx(4 / 6)
    assert m["text_retrieval_recall@1"] == pytest.approx(ours["image_to_text"]["R@1"]) == pytest.approx(1 / 3)
    assert m["image_retrieval_recall@5"] == 1.0 and set(m) == {
        f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10)}


def test_bad_layouts_say_what_is_wrong(tmp_path):
    from curation.errors import InputError

    root = write_classification(tmp_path / "c", [0, 1])
    (root / "test" / "1.tar").unlink()
    with pytest.raises(InputError, match="says 2 shards but 1 are missing"):
        load_dataset(str(root))
    bad = write_classification(tmp_path / "d", [0, 1])
    (bad / "classnames.txt").write_text("red\n")
    with pytest.raises(InputError, match="names 1 classes"):
        load_dataset(str(bad))
    multi = write_classification(tmp_path / "m", [0, 1])
    (multi / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(InputError, match="multilabel"):
        load_dataset(str(multi))


def test_eval_cli_on_a_checkpoint_writes_clip_benchmark_files(tmp_path, capsys):
    from training.checkpoint import save_checkpoint
    from training.model import CLIP, get_config
    from training.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    tok = ByteTokenizer()
    cfg = get_config("micro", vocab_size=tok.vocab_size)
    save_checkpoint({"model_config": cfg.to_dict(), "model": CLIP(cfg).state_dict(), "tokenizer": tok.to_json(),
                     "train_config": {"model": "micro"}}, tmp_path / "run" / "checkpoints" / "step_5.pt")
    classes = write_classification(tmp_path / "colours", [0, 1, 2, 1])
    captions = write_retrieval(tmp_path / "tiny_flickr")
    rc = main(["eval", "--checkpoint", str(tmp_path / "run"), "--zeroshot", str(classes), "--retrieval",
               str(captions), "--out", str(tmp_path / "r.json"), "--clip-benchmark-out", str(tmp_path / "cb")])
    assert rc == 0 and "clip_benchmark results: 2 file(s)" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "cb").iterdir())
    assert names == ["colours_run_metacurate-micro_en_zeroshot_classification.json",
                     "tiny_flickr_run_metacurate-micro_en_zeroshot_retrieval.json"]
    for name in names:
        doc = json.loads((tmp_path / "cb" / name).read_text())
        assert set(doc) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
        assert doc["model"] == "metacurate-micro" and doc["dataset"].startswith("wds/")
    ours = json.loads((tmp_path / "r.json").read_text())
    assert set(ours["zeroshot"]["colours"]) >= {"top1", "top5", "mean_per_class"}
    assert set(ours["retrieval"]["tiny_flickr"]["image_to_text"]) == {"R@1", "R@5", "R@10"}
