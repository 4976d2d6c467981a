"""Checkpoints are loaded without running pickled code: a crafted ``.pt`` given to
``eval --checkpoint`` or left in ``OUT/checkpoints/`` before ``train --resume`` is refused with a
one-line error (exit 2) and its payload never runs; damaged or foreign files get a clear message."""
import io
import os
import pickle

import pytest
import torch

from curation.errors import InputError
from jobs.cli import main
from training.checkpoint import load_checkpoint, load_for_eval, save_checkpoint
from training.model import CLIP, get_config
from training.tokenizer import ByteTokenizer


class _Payload:
    """Unpickling this calls ``os.system(command)``, which creates the marker file."""

    def __init__(self, marker) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return os.system, (self.command,)


def _model_state() -> dict:
    tok = ByteTokenizer()
    cfg = get_config("micro", vocab_size=tok.vocab_size)
    return {"model_config": cfg.to_dict(), "model": CLIP(cfg).state_dict(), "tokenizer": tok.to_json()}


def _torch_file(path, marker):
    """A real torch checkpoint (zip format) whose state carries the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**_model_state(), "step": 1, "extra": _Payload(marker)}, path)
    return path


def _pickle_file(path, marker):
    """A plain (legacy-format) pickle of the payload, protocol 2 like torch's own legacy files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))
    return path


@pytest.mark.parametrize("make", [_torch_file, _pickle_file])
def test_eval_refuses_a_crafted_checkpoint(tmp_path, capsys, make):
    marker = tmp_path / "MARKER"
    evil = make(tmp_path / "evil.pt", marker)
    rc = main(["eval", "--checkpoint", str(evil), "--zeroshot", "digits", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(evil) in err and "refused" in err and "Traceback" not in err
    assert "weights_only" not in err  # no advice to switch the safety off
    assert not marker.exists()
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("make", [_torch_file, _pickle_file])
@pytest.mark.parametrize("how", ["auto", "explicit"])
def test_train_resume_refuses_a_crafted_checkpoint(shard_dir, tmp_path, capsys, make, how):
    marker = tmp_path / "MARKER"
    out = tmp_path / "run"
    evil = make(out / "checkpoints" / "step_9.pt", marker)
    rc = main(["train", "--shards", f"{shard_dir}/{{000000..000001}}.tar", "--out", str(out), "--model", "micro",
               "--steps", "10", "--workers", "0", "--tokenizer", "bytes", "--no-progress",
               "--resume", "auto" if how == "auto" else str(evil)])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(evil) in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing written before the refusal


def test_damaged_and_foreign_files_are_input_errors(tmp_path):
    good = save_checkpoint(_model_state(), tmp_path / "good.pt")
    data = open(good, "rb").read()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "cannot be read"),
        "empty.pt": (b"", "cannot be read"),
        "text.pt": (b"hello, not a checkpoint\n" * 4, "cannot be read"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message) as caught:
            load_for_eval(tmp_path / name)
        assert name in str(caught.value)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(InputError, match="not a metacurate checkpoint"):
        load_for_eval(tmp_path / "tensor.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"lacks \['model_config', 'model', 'tokenizer'\]"):
        load_for_eval(tmp_path / "other.pt")
    state = _model_state()
    state["model_config"] = {**state["model_config"], "embed_dim": 32}
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match="do not fit its model config"):
        load_for_eval(tmp_path / "mismatch.pt")
    assert load_for_eval(good).image_size == 32


def test_training_checkpoints_hold_only_plain_data(shard_dir, tmp_path, capsys):
    """What the trainer writes loads under weights_only=True (numpy's RNG state included), and a
    model-only checkpoint is not accepted for resuming."""
    out = tmp_path / "run"
    assert main(["train", "--shards", f"{shard_dir}/{{000000..000001}}.tar", "--out", str(out), "--model", "micro",
                 "--steps", "1", "--batch-size", "8", "--workers", "0", "--tokenizer", "bytes",
                 "--no-progress"]) == 0
    raw = (out / "checkpoints" / "step_1.pt").read_bytes()
    state = torch.load(io.BytesIO(raw), weights_only=True)
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)
    assert load_checkpoint(out)["step"] == 1
    save_checkpoint(_model_state(), tmp_path / "model_only.pt")
    rc = main(["train", "--shards", f"{shard_dir}/{{000000..000001}}.tar", "--out", str(tmp_path / "again"),
               "--model", "micro", "--steps", "2", "--workers", "0", "--tokenizer", "bytes", "--no-progress",
               "--resume", str(tmp_path / "model_only.pt")])
    assert rc == 2
    assert "not a training checkpoint" in capsys.readouterr().err
