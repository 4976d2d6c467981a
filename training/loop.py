"""The training loop: fused AdamW + warmup/cosine, grad clipping, bf16 autocast on GPU (or on any device
with ``precision="bf16"``), DDP, FLIP masking with an unmasked tuning phase, periodic checkpoints with
exact resume, progress bar + metrics.jsonl.

Run under ``torchrun`` for DDP (the usual env variables are read); otherwise single process.
Output layout in ``out``: ``config.json``, ``tokenizer.json``, ``metrics.jsonl``,
``checkpoints/step_<N>.pt``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from curation.errors import InputError
from training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from training.data import LoaderConfig, TrainLoader, dataset_size, read_captions
from training.loss import clip_loss
from training.model import CLIP, CONFIGS, get_config, gmacs_per_sample
from training.optim import build_optimizer
from training.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_json,
)

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    shards: str
    out: str
    model: str = "tiny"
    steps: int = 1000
    batch_size: int = 64  # per rank
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int | None = None  # default: 10 % of steps, at most 2000
    grad_clip: float = 1.0
    mask_ratio: float = 0.0
    unmasked_steps: int = 0  # FLIP's unmasked tuning: the last N steps run at mask ratio 0
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    workers: int = 2
    shuffle_buffer: int = 1000
    online_balance: bool = False
    tokenizer: str = "bpe"  # "bpe" (trained on the shards' captions), "bytes", or a tokenizer.json path
    vocab_size: int = 4096
    resume: str | None = None  # a checkpoint file, a run dir, or "auto" (latest in out, if any)
    stop_after: int | None = None  # stop (and checkpoint) at this step; the schedule still spans `steps`
    threads: int | None = None
    progress: bool = True
    precision: str = "auto"  # "auto" (bf16 autocast on GPU, fp32 on CPU), "bf16" (on any device) or "fp32"

    def validate(self) -> None:
        if self.model not in CONFIGS:
            raise InputError(f"unknown --model {self.model!r}; choose one of {sorted(CONFIGS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError("--steps and --batch-size must be positive")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise InputError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0 <= self.unmasked_steps <= self.steps:
            raise InputError(f"--unmasked-steps must be between 0 and --steps ({self.steps})")
        if self.save_every < 1 or self.log_every < 1:
            raise InputError("--save-every and --log-every must be positive")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the base rate, then cosine decay to 0 at ``total`` (a picklable closure)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def autocast_context(device: torch.device, precision: str = "auto"):
    """The autocast context of a train step: bf16 under ``"bf16"`` (any device) or ``"auto"`` on a GPU.

    Weights, optimizer state and the loss stay fp32 (autocast only lowers the matmuls/convs inside
    the forward). ``"bf16"`` on CPU runs the very code path a GPU run takes, which is how the tests
    check it without a GPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def _gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _prepare_tokenizer(cfg: TrainConfig, out: Path, rank: int, world: int, resumed: dict | None):
    path = out / "tokenizer.json"
    if resumed is not None:
        return tokenizer_from_json(resumed["tokenizer"])
    if rank == 0 and not path.exists():
        if cfg.tokenizer == "bytes":
            tok = ByteTokenizer()
        elif cfg.tokenizer == "bpe":
            captions = read_captions(cfg.shards)
            if not captions:
                raise InputError(f"no captions could be read from {cfg.shards!r} to train the tokenizer")
            log.info("training a BPE tokenizer (vocab %d) on %d captions", cfg.vocab_size, len(captions))
            tok = BPETokenizer.train(captions, cfg.vocab_size)
        elif Path(cfg.tokenizer).is_file():
            tok = load_tokenizer(cfg.tokenizer)
        else:
            raise InputError(f"--tokenizer must be 'bpe', 'bytes' or a tokenizer.json file, got {cfg.tokenizer!r}")
        save_tokenizer(tok, path)
    if world > 1:
        dist.barrier()
    return load_tokenizer(path)


def _find_resume(cfg: TrainConfig, out: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = list_checkpoints(out / "checkpoints")
        return found[-1] if found else None
    return Path(cfg.resume)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) and return a summary; writes checkpoints and metrics under ``cfg.out``."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _setup_distributed()
    out = Path(cfg.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)

    resume_path = _find_resume(cfg, out)
    resumed = load_checkpoint(resume_path) if resume_path else None
    tokenizer = _prepare_tokenizer(cfg, out, rank, world, resumed)
    model_cfg = get_config(cfg.model, vocab_size=tokenizer.vocab_size)

    torch.manual_seed(cfg.seed)  # identical init on every rank
    model = CLIP(model_cfg).to(device)
    loader = TrainLoader(LoaderConfig(shards=cfg.shards, batch_size=cfg.batch_size, image_size=model_cfg.image_size,
                                      context_length=model_cfg.context_length, seed=cfg.seed, workers=cfg.workers,
                                      shuffle_buffer=cfg.shuffle_buffer, online_balance=cfg.online_balance,
                                      rank=rank, world_size=world), tokenizer)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(2000, max(1, cfg.steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, cfg.steps))

    step, samples_seen, compute_gmacs = 0, 0, 0.0
    if resumed is not None:
        if resumed["model_config"] != model_cfg.to_dict():
            raise InputError(f"{resume_path} was trained with another model config; resume with the same --model")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        loader.load_state_dict(resumed["data"][rank])
        _set_rng_state(resumed["rng"][rank])
        step, samples_seen, compute_gmacs = resumed["step"], resumed["samples_seen"], resumed["compute_gmacs"]
        log.info("resumed from %s at step %d", resume_path, step)
    else:
        torch.manual_seed(cfg.seed * 1000 + rank + 1)  # masks differ across ranks
        np.random.seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        if rank == 0:
            (out / "config.json").write_text(json.dumps({"train": asdict(cfg), "model": model_cfg.to_dict(),
                                                         "world_size": world}, indent=2))

    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    total_samples = dataset_size(loader.cfg.urls)
    if rank == 0:
        log.info("model %s: %.1fM params, %.3f GMACs/sample; %d shards%s; world size %d", cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, gmacs_per_sample(model_cfg), len(loader.cfg.urls),
                 f" ({total_samples} samples per sizes.json)" if total_samples else "", world)

    def checkpoint() -> None:
        data_states = _gather_objects(loader.state_dict(), world)
        rng_states = _gather_objects(_rng_state(), world)
        if rank == 0:
            save_checkpoint({"step": step, "model_config": model_cfg.to_dict(), "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "data": data_states, "rng": rng_states, "samples_seen": samples_seen,
                             "compute_gmacs": compute_gmacs, "tokenizer": tokenizer.to_json(),
                             "train_config": asdict(cfg)}, out / "checkpoints" / f"step_{step}.pt")

    stop_at = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    metrics = (out / "metrics.jsonl").open("a") if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress, desc="train", unit="step")
    last_loss = float("nan")
    window_start, window_images = time.perf_counter(), 0
    model.train()
    batches = iter(loader)
    try:
        while step < stop_at:
            batch = next(batches)
            ratio = cfg.mask_ratio if step < cfg.steps - cfg.unmasked_steps else 0.0
            images = batch["images"].to(device, non_blocking=True)
            tokens = batch["tokens"].to(device, non_blocking=True)
            eot = batch["eot"].to(device, non_blocking=True)
            with autocast_context(device, cfg.precision):
                image_features, text_features, scale = ddp_model(images, tokens, eot, mask_ratio=ratio)
                loss = clip_loss(image_features.float(), text_features.float(), scale.float())
            optimizer.zero_grad(set_to_none=True)
            (loss * world).backward()  # undo DDP's averaging: gradients equal the global-batch loss's
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            model.clamp_logit_scale()
            step += 1
            global_batch = images.shape[0] * world
            samples_seen += global_batch
            compute_gmacs += global_batch * gmacs_per_sample(model_cfg, ratio)
            window_images += global_batch
            last_loss = float(loss.detach())
            bar.update(1)
            if step % cfg.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                          "logit_scale": float(model.logit_scale.detach().exp()), "mask_ratio": ratio,
                          "images_per_s": window_images / max(elapsed, 1e-9), "samples_seen": samples_seen,
                          "gmacs_per_sample": gmacs_per_sample(model_cfg, ratio), "compute_gmacs": compute_gmacs,
                          "data_epoch": max((s["epoch"] for s in loader.worker_states.values()), default=0),
                          "data": loader.counters()}
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{record['images_per_s']:.0f}")
                window_start, window_images = time.perf_counter(), 0
            if step % cfg.save_every == 0 or step == stop_at:
                checkpoint()
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        del batches  # shuts the DataLoader workers down
    summary = {"step": step, "loss": last_loss, "samples_seen": samples_seen, "compute_gmacs": compute_gmacs,
               "checkpoint": str(out / "checkpoints" / f"step_{step}.pt"), "data": loader.counters()}
    if world > 1:
        dist.barrier()
    return summary
