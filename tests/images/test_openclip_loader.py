"""Our shards read by open_clip's own training data pipeline (``open_clip_train.data.get_wds_dataset``).

open_clip needs torchvision, which does not load beside this project's torch build, so the read runs
in a separate interpreter: ``$METACURATE_OPENCLIP_PYTHON``, else ``/tmp/openclip-venv/bin/python``
when it exists (needs open_clip_train, webdataset, braceexpand). Without one the test is skipped
and says why.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from curation.shards import write_shards

_READER = r'''
import json, sys
from types import SimpleNamespace
import numpy as np, torch
from open_clip_train.data import get_dataset_size, get_wds_dataset

pattern, n_shards = sys.argv[1], int(sys.argv[2])
pre = lambda im: torch.from_numpy(np.asarray(im.convert("RGB").resize((16, 16))).copy())
tok = lambda texts: [texts]  # keep the caption text itself so the test can compare it
out = {"size": list(get_dataset_size(pattern))}
for is_train in (False, True):
    args = SimpleNamespace(train_data=pattern, val_data=pattern, train_num_samples=None, val_num_samples=None,
                           train_data_upsampling_factors=None, dataset_resampled=False, batch_size=2,
                           workers=0, world_size=1, seed=0)
    info = get_wds_dataset(args, pre, is_train=is_train, epoch=0, tokenizer=tok)
    captions, shapes = [], set()
    for images, texts in info.dataloader:
        captions.extend(texts)
        shapes.add(tuple(images.shape[1:]))
    out["train" if is_train else "val"] = {"captions": captions, "num_samples": info.dataloader.num_samples,
                                           "shapes": sorted(shapes)}
print(json.dumps(out))
'''


def _openclip_python() -> str | None:
    cands = [os.environ.get("METACURATE_OPENCLIP_PYTHON"), "/tmp/openclip-venv/bin/python"]
    return next((c for c in cands if c and os.path.exists(c)), None)


def _jpeg(rng: np.random.Generator) -> bytes:
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(b, "JPEG", quality=80)
    return b.getvalue()


def test_open_clip_reads_our_shards(tmp_path):
    py = _openclip_python()
    if py is None:
        pytest.skip("no interpreter with open_clip_train: set METACURATE_OPENCLIP_PYTHON "
                    "(or create /tmp/openclip-venv with open_clip_torch[training], webdataset, braceexpand)")
    probe = subprocess.run([py, "-c", "import open_clip_train.data, webdataset, braceexpand"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{py} cannot import open_clip_train's data pipeline: {probe.stderr.strip().splitlines()[-1:]}")
    rng = np.random.default_rng(3)
    captions = [f"a photo of thing {i} — café ✓" for i in range(10)]
    samples = [{"key": f"uid/{i}..x", "jpg": _jpeg(rng), "txt": c,
                "json": {"uid": f"uid{i}", "url": f"http://x/{i}", "entry_ids": [i], "entries": [f"e{i}"],
                         "phash": f"{i:016x}", "p_keep": 1.0}} for i, c in enumerate(captions)]
    res = write_shards(samples, str(tmp_path / "shards"), 4)
    assert res.shards == ["000000.tar", "000001.tar", "000002.tar"]
    pattern = str(tmp_path / "shards" / "{000000..000002}.tar")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([py, "-c", _READER, pattern, "3"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["size"] == [10, 3]  # open_clip found sizes.json: no --train-num-samples needed
    assert got["val"]["captions"] == captions  # every sample, in order, caption text intact
    assert got["val"]["shapes"] == [[16, 16, 3]]
    assert got["train"]["num_samples"] == 10 and sorted(got["train"]["captions"]) == sorted(captions)
    print(f"open_clip ({py}) read {len(got['val']['captions'])} samples from 3 shards", file=sys.stderr)


# --------------------------------------------------------------------------- export to open_clip
_EXPORT_READER = r'''
import json, sys
import numpy as np, torch
from PIL import Image
import open_clip

folder, name, spec_path = sys.argv[1], sys.argv[2], sys.argv[3]
spec = json.load(open(spec_path))
out = {}
open_clip.add_model_config(f"{folder}/{name}.json")
routes = {"named": (name, f"{folder}/open_clip_pytorch_model.bin"), "local-dir": (f"local-dir:{folder}", None)}
for route, (model_name, pretrained) in routes.items():
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    tokens = tokenizer(spec["texts"])
    pixels = torch.stack([preprocess(Image.open(p)) for p in spec["images"]])
    ours_pixels = torch.tensor(np.load(spec["pixels"]))
    with torch.no_grad():
        out[route] = {"type": type(model).__name__, "tokens": tokens.tolist(),
                      "pixels_max_diff": float((pixels - ours_pixels).abs().max()),
                      "image": model.encode_image(pixels).tolist(),
                      "image_from_our_pixels": model.encode_image(ours_pixels).tolist(),
                      "text": model.encode_text(tokens).tolist(),
                      "logit_scale": float(model.logit_scale.exp())}
print(json.dumps(out))
'''

#: Texts that exercise the tokenizer: case, punctuation, non-ASCII, whitespace runs and entities
#: (open_clip's cleaning), truncation, the empty text and a literal "<eot>".
_TEXTS = ["a red circle", "Photo of a BLUE square!", "café ✓ naïve — 東京", "don’t   stop &amp; go  ",
          "x" * 200, "", "a <eot> inside", "ﬁne ＡＢＣ"]


def _random_checkpoint(path, tokenizer_kind: str) -> None:
    """A micro model with every weight random (so a transposed or misplaced tensor shows) and a
    tokenizer of the given kind, saved as `metacurate train` saves its model keys."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.model import CLIP, get_config
    from training.tokenizer import BPETokenizer, ByteTokenizer

    if tokenizer_kind == "bpe":
        tok = BPETokenizer.train([f"a {c} {s} on a plain background" for c in ("red", "blue", "café")
                                  for s in ("circle", "square", "東京")] * 20, vocab_size=320)
    else:
        tok = ByteTokenizer("whitespace")
    cfg = get_config("micro", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = CLIP(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        model.logit_scale.fill_(3.0)
    save_checkpoint({"model_config": cfg.to_dict(), "model": model.state_dict(), "tokenizer": tok.to_json(),
                     "train_config": {"model": "micro"}}, path)


def _cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("tokenizer_kind", ["bpe", "bytes"])
def test_open_clip_loads_an_export_with_identical_embeddings(tmp_path, tokenizer_kind):
    py = _openclip_python()
    if py is None:
        pytest.skip("no interpreter with open_clip: set METACURATE_OPENCLIP_PYTHON (or create "
                    "/tmp/openclip-venv with open_clip_torch and transformers)")
    probe = subprocess.run([py, "-c", "import open_clip, transformers"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{py} cannot import open_clip and transformers: {probe.stderr.strip().splitlines()[-1:]}")
    import argparse

    import torch

    from jobs.commands import export
    from training.checkpoint import load_for_eval

    ckpt = tmp_path / "ckpt.pt"
    _random_checkpoint(ckpt, tokenizer_kind)
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    out = tmp_path / "my-export"
    assert export.run(parser.parse_args(["--open-clip", str(ckpt), str(out)])) == 0

    ours = load_for_eval(ckpt)
    again = load_for_eval(out)  # the export folder read back by metacurate
    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate([(32, 32), (48, 48), (64, 40), (37, 90), (100, 33), (31, 31)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    pixels = torch.stack([ours.preprocess(Image.open(p)) for p in images])
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    (tmp_path / "spec.json").write_text(json.dumps({"texts": _TEXTS, "images": images,
                                                    "pixels": str(tmp_path / "pixels.npy")}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    proc = subprocess.run([py, "-c", _EXPORT_READER, str(out), "my-export", str(tmp_path / "spec.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    with torch.no_grad():
        our_tokens, _ = ours.tokenizer(_TEXTS, ours.context_length)
        our_image = ours.encode_image(pixels).numpy()
        our_text = ours.encode_text(_TEXTS).numpy()
        assert np.array_equal(again.encode_image(pixels).numpy(), our_image)
        assert np.array_equal(again.encode_text(_TEXTS).numpy(), our_text)
    worst = 1.0
    for route, res in got.items():
        assert res["type"] == "CLIP"  # open_clip's plain CLIP, not a custom-text model
        assert res["tokens"] == our_tokens.tolist(), route
        assert res["pixels_max_diff"] == 0.0, route  # the same eval preprocessing, pixel for pixel
        assert res["logit_scale"] == pytest.approx(float(np.exp(3.0)), rel=1e-6)
        for key, mine in (("image", our_image), ("image_from_our_pixels", our_image), ("text", our_text)):
            cos = _cosines(res[key], mine)
            worst = min(worst, float(cos.min()))
            assert cos.min() >= 1 - 1e-5, (route, key, cos)
    print(f"open_clip ({py}) embeddings of the {tokenizer_kind} export: min cosine {worst:.12f} "
          f"(1 - cos = {1 - worst:.2e})", file=sys.stderr)


_CHECKPOINT_READER = r'''
import json, sys
import numpy as np, torch
import open_clip

export, name, train_ckpt, pixels_path, oc_ckpt = sys.argv[1:6]
pixels = torch.tensor(np.load(pixels_path))
open_clip.add_model_config(f"{export}/{name}.json")
tokenizer = open_clip.get_tokenizer(name)
tokens = tokenizer(["a photo of thing 3", "café"])
out = {}
# 1. our training checkpoint, as open_clip's own loader reads it (weights under state_dict)
model, _, _ = open_clip.create_model_and_transforms(name, pretrained=train_ckpt)
model.eval()
with torch.no_grad():
    out["ours_in_open_clip"] = model.encode_image(pixels).tolist()
    # 2. a checkpoint as open_clip's trainer writes it (DDP prefix, epoch, name) after changing the weights
    torch.manual_seed(1)
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    torch.save({"epoch": 3, "name": "oc-run", "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               oc_ckpt)
    out["open_clip_image"] = model.encode_image(pixels).tolist()
    out["open_clip_text"] = model.encode_text(tokens).tolist()
print(json.dumps(out))
'''


def test_checkpoints_cross_between_metacurate_and_open_clip(tmp_path):
    """open_clip loads a `metacurate train` checkpoint as it is (``state_dict``), and metacurate
    loads weights open_clip's trainer wrote (``state_dict`` with DDP's ``module.`` prefix)."""
    py = _openclip_python()
    if py is None:
        pytest.skip("no interpreter with open_clip: set METACURATE_OPENCLIP_PYTHON (or create /tmp/openclip-venv)")
    probe = subprocess.run([py, "-c", "import open_clip, transformers"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{py} cannot import open_clip and transformers: {probe.stderr.strip().splitlines()[-1:]}")
    import shutil

    import torch

    from training.checkpoint import load_for_eval
    from training.configs import TrainConfig
    from training.loop import train
    from training.export import export_open_clip
    from training.openclip import WEIGHTS_FILE

    rng = np.random.default_rng(5)
    samples = [{"key": f"k{i}", "jpg": _jpeg(rng), "txt": f"a photo of thing {i}",
                "json": {"uid": f"uid{i}", "url": f"http://x/{i}", "entry_ids": [i], "entries": [f"e{i}"],
                         "phash": f"{i:016x}", "p_keep": 1.0}} for i in range(16)]
    write_shards(samples, str(tmp_path / "shards"), 8)
    out = tmp_path / "train"
    train(TrainConfig(shards=str(tmp_path / "shards" / "{000000..000001}.tar"), out=str(out), model="micro",
                      steps=2, batch_size=8, workers=0, tokenizer="bytes", threads=1, progress=False,
                      tensorboard=False))
    export = tmp_path / "oc-export"
    written = export_open_clip(out, export)
    pixels = torch.randn(3, 3, 32, 32)
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    oc_ckpt = tmp_path / "epoch_3.pt"
    proc = subprocess.run([py, "-c", _CHECKPOINT_READER, str(export), written["name"],
                           str(out / "checkpoints" / "step_2.pt"), str(tmp_path / "pixels.npy"), str(oc_ckpt)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        ours = load_for_eval(out).encode_image(pixels).numpy()
        assert _cosines(got["ours_in_open_clip"], ours).min() >= 1 - 1e-5
        # open_clip's checkpoint in place of the exported weights: metacurate evaluates the same model
        shutil.copy(oc_ckpt, export / WEIGHTS_FILE)
        theirs = load_for_eval(export)
        assert _cosines(got["open_clip_image"], theirs.encode_image(pixels).numpy()).min() >= 1 - 1e-5
        assert _cosines(got["open_clip_text"], theirs.encode_text(["a photo of thing 3", "café"]).numpy()).min() \
            >= 1 - 1e-5
        assert _cosines(theirs.encode_image(pixels).numpy(), ours).min() < 0.999  # the weights did change
