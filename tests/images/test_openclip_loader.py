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
