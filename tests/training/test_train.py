import json

import numpy as np
import pytest
import torch
from PIL import Image

from curation.errors import InputError
from jobs.cli import main as cli_main
from training.checkpoint import load_checkpoint, load_for_eval
from training.loop import TrainConfig, train
from training.soups import average_state_dicts, greedy_soup, save_soup, uniform_soup


def _cfg(shard_dir, out, **kw) -> TrainConfig:
    base = dict(shards=f"{shard_dir}/{{000000..000003}}.tar", out=str(out), model="micro", steps=8,
                batch_size=16, lr=2e-3, workers=0, shuffle_buffer=32, save_every=4, log_every=1,
                tokenizer="bytes", threads=1, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_loss_falls(shard_dir, tmp_path):
    out = tmp_path / "run"
    train(_cfg(shard_dir, out, steps=80, batch_size=32, lr=3e-3, warmup_steps=5, save_every=1000,
               mask_ratio=0.5, unmasked_steps=10, tokenizer="bpe", vocab_size=300))
    rows = _metrics(out)
    assert len(rows) == 80
    first = np.mean([r["loss"] for r in rows[:5]])
    last = np.mean([r["loss"] for r in rows[-10:]])
    assert first > 3.0  # ~ln(32) at the start
    assert last < first - 1.0, (first, last)
    assert [r["mask_ratio"] for r in rows[-11:]] == [0.5] + [0.0] * 10  # unmasked tuning phase
    assert rows[-1]["compute_gmacs"] > rows[0]["compute_gmacs"] > 0
    assert (out / "checkpoints" / "step_80.pt").exists() and (out / "tokenizer.json").exists()


def test_stop_and_resume_gives_identical_weights(shard_dir, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(shard_dir, straight, mask_ratio=0.5))
    interrupted = tmp_path / "interrupted"
    train(_cfg(shard_dir, interrupted, mask_ratio=0.5, stop_after=5))
    assert not (interrupted / "checkpoints" / "step_8.pt").exists()
    train(_cfg(shard_dir, interrupted, mask_ratio=0.5, resume="auto"))
    a = load_checkpoint(straight / "checkpoints" / "step_8.pt")
    b = load_checkpoint(interrupted / "checkpoints" / "step_8.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["loss"] for r in _metrics(straight)] == [r["loss"] for r in _metrics(interrupted)]
    # a different seed really changes the result (so the equality above means something)
    other = tmp_path / "other"
    train(_cfg(shard_dir, other, mask_ratio=0.5, seed=4, steps=4, save_every=100))
    c = load_checkpoint(other / "checkpoints" / "step_4.pt")
    d = load_checkpoint(straight / "checkpoints" / "step_4.pt")
    assert not torch.equal(c["model"]["visual.positions"], d["model"]["visual.positions"])


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(shard_dir, tmp_path):
    """Without --resume, an earlier run's checkpoints (and metrics.jsonl, which would be appended
    to) are not silently mixed with a new run's: eval of the folder would pick the old last step."""
    out = tmp_path / "run"
    train(_cfg(shard_dir, out, steps=4, save_every=100))
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier run \(step_4.pt, 1 in all\).*"
                                         r"--resume latest"):
        train(_cfg(shard_dir, out, steps=2, save_every=100))
    assert (out / "metrics.jsonl").read_bytes() == before


def test_cli_train_and_eval_contract_and_soups(shard_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["train", "--shards", f"{shard_dir}/{{000000..000003}}.tar", "--model", "micro", "--steps", "6",
                   "--out", str(out), "--batch-size", "16", "--save-every", "3", "--workers", "1",
                   "--threads", "1", "--no-progress", "--vocab-size", "300"])
    assert rc == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3.pt", "step_6.pt"]
    assert len(_metrics(out)) == 1  # log every 10 steps, plus the last step
    clip = load_for_eval(out)
    image = Image.new("RGB", (50, 40), (200, 10, 10))
    pixels = clip.preprocess(image)
    assert pixels.shape == (3, clip.image_size, clip.image_size) == (3, 32, 32)
    with torch.no_grad():
        img = clip.encode_image(pixels[None])
        txt = clip.encode_text(["a red square", "a blue circle"])
    assert img.shape == (1, 64) and txt.shape == (2, 64)
    assert clip.gmacs_per_sample > 0

    paths = [out / "checkpoints" / "step_3.pt", out / "checkpoints" / "step_6.pt"]
    soup = uniform_soup(paths)
    w3, w6 = (load_checkpoint(p)["model"]["image_projection.weight"] for p in paths)
    assert torch.allclose(soup["image_projection.weight"], (w3 + w6) / 2, atol=1e-6)
    # greedy: score prefers weights close to step_6, so the soup stays step_6 alone
    score = lambda s: -float((s["image_projection.weight"] - w6).abs().sum())
    greedy, chosen = greedy_soup(paths, score)
    assert chosen == [1] and torch.equal(greedy["image_projection.weight"], w6)
    soup_path = save_soup(soup, paths[1], tmp_path / "soup.pt")
    assert load_for_eval(soup_path).encode_text(["a"]).shape == (1, 64)
    with pytest.raises(ValueError):
        average_state_dicts([soup, {"other": torch.zeros(1)}])


def test_cli_reports_bad_input(tmp_path, capsys):
    rc = cli_main(["train", "--shards", str(tmp_path / "nothing-{0..3}.tar"), "--out", str(tmp_path / "o"),
                   "--steps", "1"])
    assert rc == 2
    assert "no shards found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # a failed run leaves no (empty) output or checkpoints folder
