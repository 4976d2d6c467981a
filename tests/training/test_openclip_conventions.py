"""open_clip's conventions in `metacurate train`: its flag names beside ours, --epochs and
--train-num-samples, --resume latest, --precision amp/amp_bf16, epoch_<K>.pt files, and checkpoints
carrying open_clip's keys (``state_dict`` in its layout, ``epoch``, ``name``) that our loader reads
back, with or without DDP's ``module.`` prefix."""
from __future__ import annotations

import json

import pytest
import torch

from curation.errors import InputError
from jobs.cli import build_parser, main
from training.checkpoint import list_checkpoints, load_checkpoint, load_for_eval, save_checkpoint
from training.configs import TrainConfig
from training.loop import autocast_dtype, needs_grad_scaler, train
from training.model import CLIP, get_config
from training.openclip import from_openclip, to_openclip
from training.tokenizer import ByteTokenizer

ALIASES = {"--train-data": "shards", "--force-patch-dropout": "mask_ratio", "--warmup": "warmup_steps",
           "--wd": "weight_decay", "--epochs": "epochs", "--train-num-samples": "train_num_samples",
           "--save-frequency": "save_frequency", "--batch-size": "batch_size", "--lr": "lr", "--seed": "seed",
           "--workers": "workers", "--precision": "precision", "--resume": "resume"}


def _train_parser():
    return build_parser()._subparsers._group_actions[0].choices["train"]


def test_open_clip_flag_names_are_aliases_shown_in_the_help():
    parser = _train_parser()
    by_flag = {name: action for action in parser._actions for name in action.option_strings}
    for flag, dest in ALIASES.items():
        assert by_flag[flag].dest == dest, flag
    assert by_flag["--train-data"] is by_flag["--shards"] and by_flag["--wd"] is by_flag["--weight-decay"]
    assert by_flag["--force-patch-dropout"] is by_flag["--mask-ratio"]
    assert by_flag["--warmup"] is by_flag["--warmup-steps"]
    text = " ".join(parser.format_help().split())
    for pair in ("--shards PATTERN, --train-data PATTERN", "--mask-ratio MASK_RATIO, --force-patch-dropout",
                 "--warmup-steps WARMUP_STEPS, --warmup", "--weight-decay WEIGHT_DECAY, --wd"):
        assert pair in text, pair
    assert "ceil(epochs x train-num-samples / (batch-size x ranks))" in text
    args = build_parser().parse_args(["train", "--train-data", "s.tar", "--out", "o", "--epochs", "2",
                                      "--train-num-samples", "100", "--force-patch-dropout", "0.5",
                                      "--warmup", "3", "--wd", "0.1", "--precision", "amp_bf16",
                                      "--resume", "latest", "--save-frequency", "1"])
    assert (args.shards, args.epochs, args.train_num_samples, args.mask_ratio, args.warmup_steps,
            args.weight_decay, args.precision, args.resume, args.save_frequency) == \
        ("s.tar", 2, 100, 0.5, 3, 0.1, "amp_bf16", "latest", 1)


def test_epochs_set_the_steps(shard_dir, tmp_path, capsys):
    shards = f"{shard_dir}/{{000000..000001}}.tar"  # 64 samples per sizes.json
    assert TrainConfig(shards="x", out="o", epochs=3, batch_size=10).total_steps(64) == 20  # ceil(192 / 10)
    assert TrainConfig(shards="x", out="o", epochs=3, batch_size=10).total_steps(64, world_size=2) == 10
    assert TrainConfig(shards="x", out="o").total_steps(None) == 1000 and \
        TrainConfig(shards="x", out="o", steps=7).total_steps(64) == 7
    out = tmp_path / "run"
    summary = train(TrainConfig(shards=shards, out=str(out), model="micro", epochs=2, batch_size=32, workers=0,
                                tokenizer="bytes", threads=1, progress=False, save_frequency=1, tensorboard=False))
    assert summary["steps"] == 4 and summary["step"] == 4 and summary["epoch"] == 2  # 2 x 64 / 32
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch_1.pt", "epoch_2.pt", "step_2.pt", "step_4.pt"]
    assert load_checkpoint(out / "checkpoints" / "epoch_1.pt")["step"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["samples_per_epoch"] == 64 and config["train"]["epochs"] == 2
    # --train-num-samples overrides sizes.json
    rc = main(["train", "--train-data", shards, "--out", str(tmp_path / "b"), "--model", "micro", "--epochs", "1",
               "--train-num-samples", "40", "--batch-size", "16", "--workers", "0", "--tokenizer", "bytes",
               "--no-progress", "--no-tensorboard"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["steps"] == 3  # ceil(40 / 16)


def test_epoch_and_step_flags_conflict_and_need_a_size(shard_dir, tmp_path, capsys):
    base = ["train", "--shards", f"{shard_dir}/000000.tar", "--out", str(tmp_path / "o"), "--model", "micro",
            "--workers", "0", "--tokenizer", "bytes", "--no-progress"]
    assert main([*base, "--steps", "5", "--epochs", "2"]) == 2
    assert "--epochs and --steps both set the length of the run" in capsys.readouterr().err
    assert main([*base, "--epochs", "1", "--unmasked-steps", "50", "--batch-size", "8"]) == 2  # 4 steps
    assert "--unmasked-steps must be between 0 and the run's 4 steps" in capsys.readouterr().err
    nosizes = tmp_path / "nosizes"
    nosizes.mkdir()
    (nosizes / "000000.tar").write_bytes((shard_dir / "000000.tar").read_bytes())
    base[2] = str(nosizes / "000000.tar")
    assert main([*base, "--epochs", "1"]) == 2
    assert "--epochs needs the number of samples in an epoch: give --train-num-samples" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resume_latest_and_open_clip_keys(shard_dir, tmp_path):
    shards = f"{shard_dir}/{{000000..000001}}.tar"
    out = tmp_path / "run"
    common = dict(shards=shards, out=str(out), model="micro", steps=4, batch_size=8, workers=0, tokenizer="bytes",
                  threads=1, progress=False, save_every=1, tensorboard=False)
    train(TrainConfig(**common, stop_after=2))
    summary = train(TrainConfig(**common, resume="latest"))
    assert summary["step"] == 4
    state = load_checkpoint(out / "checkpoints" / "step_4.pt")
    assert state["name"] == "run" and state["epoch"] == 0  # 32 of 64 samples: no epoch completed
    assert set(state["state_dict"]) == set(to_openclip(state["model"]))
    assert torch.equal(state["state_dict"]["visual.proj"], state["model"]["image_projection.weight"].t())
    assert "visual.conv1.weight" in state["state_dict"] and "token_embedding.weight" in state["state_dict"]


def _model_state():
    tok = ByteTokenizer()
    cfg = get_config("micro", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    return {"model_config": cfg.to_dict(), "model": CLIP(cfg).state_dict(), "tokenizer": tok.to_json()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_loader_reads_weights_under_state_dict(tmp_path, prefix):
    state = _model_state()
    weights = state.pop("model")
    mapped = {prefix + k: v.contiguous() for k, v in to_openclip(weights).items()}
    save_checkpoint({**state, "state_dict": mapped, "epoch": 3, "name": "x"}, tmp_path / "epoch_3.pt")
    loaded = load_checkpoint(tmp_path / "epoch_3.pt")
    assert set(loaded["model"]) == set(weights)
    assert all(torch.equal(loaded["model"][k], v) for k, v in weights.items())
    assert load_for_eval(tmp_path / "epoch_3.pt").image_size == 32
    # our own layout under state_dict is accepted as well
    save_checkpoint({**state, "state_dict": weights}, tmp_path / "ours.pt")
    assert all(torch.equal(load_checkpoint(tmp_path / "ours.pt")["model"][k], v) for k, v in weights.items())


def test_foreign_weights_and_bare_open_clip_checkpoints_are_explained(tmp_path):
    state = _model_state()
    weights = to_openclip(state.pop("model"))
    with pytest.raises(InputError, match="parts the metacurate model does not have"):
        from_openclip({**weights, "visual.attn_pool.query": torch.zeros(1)})
    torch.save({"epoch": 1, "name": "oc", "state_dict": {"module." + k: v for k, v in weights.items()}},
               tmp_path / "epoch_1.pt")
    with pytest.raises(InputError, match="copy the weights into a folder written by `metacurate export"):
        load_checkpoint(tmp_path / "epoch_1.pt")


def test_newest_checkpoint_step_files_first_then_epoch_files(tmp_path):
    state = _model_state()
    folder = tmp_path / "checkpoints"
    for name in ("epoch_2.pt", "epoch_10.pt", "epoch_latest.pt"):
        save_checkpoint(state, folder / name)
    assert [p.rsplit("/", 1)[1] for p in list_checkpoints(str(folder))] == ["epoch_2.pt", "epoch_10.pt",
                                                                             "epoch_latest.pt"]
    save_checkpoint(state, folder / "epoch_11.pt")
    (folder / "epoch_latest.pt").unlink()
    assert list_checkpoints(str(folder))[-1].endswith("epoch_11.pt")
    for step in (3, 12):
        save_checkpoint(state, folder / f"step_{step}.pt")
    assert [p.rsplit("/", 1)[1] for p in list_checkpoints(str(folder))] == ["step_3.pt", "step_12.pt"]
    assert load_for_eval(tmp_path).image_size == 32  # the run folder resolves to step_12.pt


def test_precision_names_map_onto_autocast():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype(cpu, "amp") == torch.bfloat16 and autocast_dtype(gpu, "amp") == torch.float16
    assert autocast_dtype(cpu, "amp_bf16") == autocast_dtype(gpu, "amp_bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(gpu, "fp32") is None
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(gpu, "auto") == torch.bfloat16
    assert needs_grad_scaler(gpu, "amp") and not needs_grad_scaler(cpu, "amp")
    assert not needs_grad_scaler(gpu, "amp_bf16")


def test_amp_on_cpu_trains_in_bf16(shard_dir, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        summary = train(TrainConfig(shards=f"{shard_dir}/000000.tar", out=str(out), model="micro", steps=2,
                                    batch_size=8, workers=0, tokenizer="bytes", threads=1, progress=False,
                                    precision="amp", tensorboard=False))
    assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["loss"]))
    assert "runs bf16 autocast" in caplog.text
    assert "scaler" not in load_checkpoint(out)  # loss scaling is for fp16 on a GPU only


def test_fp16_loss_scaling_path_saves_and_resumes_its_scaler(shard_dir, tmp_path, monkeypatch):
    """The GPU's `amp` path (fp16 autocast + GradScaler: unscale, clip, step, update; the scaler's
    state in checkpoints and restored on resume), run on the CPU, whose autocast has fp16 too."""
    import training.loop as loop

    monkeypatch.setattr(loop, "autocast_dtype", lambda device, precision: torch.float16)
    out = tmp_path / "run"
    common = dict(shards=f"{shard_dir}/000000.tar", out=str(out), model="micro", steps=4, batch_size=8, workers=0,
                  tokenizer="bytes", threads=1, progress=False, precision="amp", tensorboard=False, save_every=2,
                  log_every=1)
    train(TrainConfig(**common, stop_after=2))
    state = load_checkpoint(out / "checkpoints" / "step_2.pt")
    assert state["scaler"]["scale"] > 0
    assert all(v.dtype == torch.float32 for v in state["model"].values())  # weights stay fp32
    summary = train(TrainConfig(**common, resume="latest"))
    assert summary["step"] == 4 and torch.isfinite(torch.tensor(summary["loss"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss_scale"] > 0 for r in rows)
