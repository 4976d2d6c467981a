"""bf16 autocast: the path the trainer takes on a GPU, run on CPU via ``precision="bf16"``."""
import json
import math

import pytest
import torch

from curation.errors import InputError
from curation.settings import SettingError
from training.checkpoint import load_checkpoint
from training.loop import TrainConfig, autocast_context, train
from training.loss import clip_loss
from training.model import CLIP, get_config
from training.optim import build_optimizer


def _step(precision: str) -> tuple[CLIP, torch.Tensor, torch.dtype]:
    torch.manual_seed(0)
    model = CLIP(get_config("micro", vocab_size=300)).train()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.2)
    images = torch.randn(8, 3, 32, 32)
    tokens = torch.randint(0, 300, (8, 16))
    eot = torch.full((8,), 15)
    with autocast_context(torch.device("cpu"), precision):
        raw_dtype = model.encode_image(images, mask_ratio=0.5).dtype
        img, txt, scale = model(images, tokens, eot, mask_ratio=0.5)
        loss = clip_loss(img.float(), txt.float(), scale.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return model, loss.detach(), raw_dtype


def test_bf16_step_runs_with_fp32_weights_and_differs_from_fp32():
    model, loss, raw_dtype = _step("bf16")
    assert raw_dtype == torch.bfloat16  # autocast really lowered the matmuls
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    fp32_model, fp32_loss, fp32_dtype = _step("fp32")
    assert fp32_dtype == torch.float32
    assert loss.item() == pytest.approx(fp32_loss.item(), abs=0.1)  # same maths, lower precision
    assert not torch.equal(model.image_projection.weight, fp32_model.image_projection.weight)


def test_auto_precision_is_fp32_on_cpu():
    with autocast_context(torch.device("cpu"), "auto"):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast_context(torch.device("cpu"), "fp16")
    with pytest.raises(SettingError) as caught:
        TrainConfig(shards="x.tar", out="o", precision="fp16").validate()
    assert caught.value.key == "precision"
    with pytest.raises(InputError, match="--precision must be one of"):  # train() names the flag
        train(TrainConfig(shards="x.tar", out="o", precision="fp16"))


def test_train_loop_in_bf16(shard_dir, tmp_path):
    out = tmp_path / "bf16"
    summary = train(TrainConfig(shards=f"{shard_dir}/{{000000..000003}}.tar", out=str(out), model="micro", steps=3,
                                batch_size=16, lr=2e-3, workers=0, shuffle_buffer=16, save_every=3, log_every=1,
                                tokenizer="bytes", threads=1, progress=False, precision="bf16", mask_ratio=0.5))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    state = load_checkpoint(out / "checkpoints" / "step_3.pt")
    assert state["train_config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in state["model"].values())
    exp_avg = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert exp_avg and all(t.dtype == torch.float32 for t in exp_avg)
    assert summary["step"] == 3
