"""The training loop: fused AdamW + warmup/cosine, grad clipping, bf16 autocast on GPU (or on any device
with ``precision="bf16"``; fp16 autocast with loss scaling under open_clip's ``amp``), DDP, FLIP masking
with an unmasked tuning phase, periodic checkpoints with exact resume, progress bar + metrics.jsonl +
TensorBoard scalars.

Run under ``torchrun`` for DDP (the usual env variables are read); otherwise single process.
Output layout in ``out`` (a local folder or an object-store URL, written through a
:class:`~curation.storage.Storage`): ``config.json``, ``tokenizer.json``, ``metrics.jsonl``,
``tensorboard/events.out.tfevents.*``, ``checkpoints/step_<N>.pt`` (and ``epoch_<K>.pt`` with
``--save-frequency``). A checkpoint holds our keys (``model``, ``step``, ...) and open_clip's
(``state_dict`` in open_clip's layout, ``epoch``, ``name``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from curation.errors import InputError
from curation.settings import SettingError
from curation.storage import Storage, is_remote, join
from training.checkpoint import TRAINING_KEYS, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from training.configs import PRECISIONS, RESUME_LATEST, TrainConfig, flag_of
from training.data import LoaderConfig, TrainLoader, captions_of, dataset_size, expand_shards
from training.loss import clip_loss
from training.model import CLIP, get_config, gmacs_per_sample
from training.openclip import to_openclip
from training.optim import build_optimizer
from training.tensorboard import EventWriter
from training.tokenizer import (
    DEFAULT_CLEAN,
    BPETokenizer,
    ByteTokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_json,
)

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "PRECISIONS", "train", "autocast_context", "lr_lambda"]


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the base rate, then cosine decay to 0 at ``total`` (a picklable closure)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a train step (None: plain fp32).

    ``bf16`` / ``amp_bf16``: bf16 on any device; ``auto``: bf16 on a GPU; ``amp`` (open_clip's
    default): fp16 on a GPU, which needs loss scaling (:func:`needs_grad_scaler`), and bf16 on a
    CPU, where fp16 autocast brings no speed and the same range problems; ``fp32``: none.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "amp":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if precision in ("bf16", "amp_bf16") or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def needs_grad_scaler(device: torch.device, precision: str) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return autocast_dtype(device, precision) == torch.float16


def autocast_context(device: torch.device, precision: str = "auto"):
    """The autocast context of a train step (see :func:`autocast_dtype`).

    Weights, optimizer state and the loss stay fp32 (autocast only lowers the matmuls/convs inside
    the forward). ``"bf16"`` on CPU runs the very code path a GPU run takes, which is how the tests
    check it without a GPU.
    """
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _rng_state() -> dict[str, Any]:
    """Every RNG the step depends on, as tensors and plain values (``weights_only`` loads them):
    numpy's state tuple holds an ndarray, stored here as a tensor."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
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


def _prepare_tokenizer(cfg: TrainConfig, out: str, urls: list[str], rank: int, world: int,
                       resumed: dict | None, storage: Storage):
    path = join(out, "tokenizer.json")
    if resumed is not None:
        try:
            return tokenizer_from_json(resumed["tokenizer"])
        except Exception as exc:  # noqa: BLE001 - json and the tokenizers library raise various types
            raise InputError(f"the checkpoint to resume from holds a tokenizer that cannot be rebuilt "
                             f"({str(exc)[:300]})") from None
    if rank == 0 and not storage.exists(path):
        if cfg.tokenizer == "bytes":
            tok = ByteTokenizer(DEFAULT_CLEAN)
        elif cfg.tokenizer == "bpe":
            captions = captions_of(urls, storage=storage)
            if not captions:
                raise InputError(f"no captions could be read from {cfg.shards!r} to train the tokenizer")
            log.info("training a BPE tokenizer (vocab %d) on %d captions", cfg.vocab_size, len(captions))
            tok = BPETokenizer.train(captions, cfg.vocab_size)
        elif storage.isfile(cfg.tokenizer):
            tok = load_tokenizer(cfg.tokenizer, storage)
        else:
            raise InputError(f"--tokenizer must be 'bpe', 'bytes' or a tokenizer.json file, got {cfg.tokenizer!r}")
        save_tokenizer(tok, path, storage)
    if world > 1:
        dist.barrier()
    return load_tokenizer(path, storage)


def _find_resume(cfg: TrainConfig, out: str, storage: Storage) -> str | None:
    if not cfg.resume:
        return None
    if cfg.resume in RESUME_LATEST:
        found = list_checkpoints(join(out, "checkpoints"), storage)
        return found[-1] if found else None
    return resolve_checkpoint(cfg.resume, storage)


class _MetricsLog:
    """``metrics.jsonl``, one JSON record per line: appended and flushed line by line on a local
    disk, rewritten whole at every checkpoint and at the end on an object store
    (:class:`curation.storage.Appender`); a resumed run adds to the existing file."""

    def __init__(self, url: str, storage: Storage) -> None:
        self.file = storage.appender(url)

    def write(self, record: dict) -> None:
        self.file.write((json.dumps(record) + "\n").encode())

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _check(cfg: TrainConfig) -> None:
    """``cfg.validate()`` with errors naming the flag (this is also the Python entry point)."""
    try:
        cfg.validate()
    except SettingError as exc:
        raise InputError(f"{flag_of(exc.key)} {exc.message}") from None


def _restore(state: dict, path: str, rank: int, world: int, model, optimizer, scheduler, loader, scaler) -> None:
    """Load a training checkpoint's state into the run; a damaged or foreign state is an ``InputError``."""
    try:
        if len(state["data"]) != world or len(state["rng"]) != world:
            raise InputError(f"{path} was saved by {len(state['data'])} ranks; resume with the same number of "
                             f"processes (now {world})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"][rank])
        loader.load_state_dict(state["data"][rank])
        if scaler is not None and isinstance(state.get("scaler"), dict):
            scaler.load_state_dict(state["scaler"])
        bad = [k for k in ("step", "samples_seen", "compute_gmacs") if not isinstance(state[k], (int, float))]
        if bad:
            raise InputError(f"{path} cannot be resumed from: {bad} are not numbers")
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise InputError(f"{path} cannot be resumed from: its training state is damaged or was written by "
                         f"another version ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"
                         ) from None


def _run_length(cfg: TrainConfig, urls: list[str], world: int, storage: Storage) -> tuple[int, int | None]:
    """``(total steps, samples per epoch)``: ``--steps`` or ``--epochs`` x ``--train-num-samples``
    (default: the shards' sizes.json total) over the global batch; errors name the flag."""
    samples_per_epoch = cfg.train_num_samples or dataset_size(urls, storage)
    try:
        steps = cfg.total_steps(samples_per_epoch, world)
    except SettingError as exc:
        raise InputError(f"{flag_of(exc.key)} {exc.message}") from None
    if cfg.unmasked_steps > steps:
        raise InputError(f"--unmasked-steps must be between 0 and the run's {steps} steps, got {cfg.unmasked_steps}")
    if cfg.save_frequency and not samples_per_epoch:
        raise InputError("--save-frequency counts epochs: give --train-num-samples (the shards have no usable "
                         "sizes.json)")
    return steps, samples_per_epoch


def train(cfg: TrainConfig, storage: Storage | None = None) -> dict[str, Any]:
    """Train (or resume) and return a summary; writes checkpoints and metrics under ``cfg.out``
    (a local folder or an object-store URL reached through ``storage``)."""
    _check(cfg)
    storage = storage or Storage.from_env()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _setup_distributed()
    out = cfg.out.rstrip("/") if is_remote(cfg.out) else cfg.out
    # the shards are found before anything is written, so a wrong pattern leaves no output behind
    urls = expand_shards(cfg.shards, storage)
    total_steps, samples_per_epoch = _run_length(cfg, urls, world, storage)

    resume_path = _find_resume(cfg, out, storage)
    if resume_path is None and not cfg.resume:
        earlier = list_checkpoints(join(out, "checkpoints"), storage)
        if earlier:  # a fresh run here would mix its checkpoints and metrics with the earlier run's
            raise InputError(f"{out} holds checkpoints of an earlier run ({earlier[-1].rsplit('/', 1)[-1]}, "
                             f"{len(earlier)} in all): continue it with --resume latest, or train into another "
                             "--out (as open_clip refuses an existing experiment name)")
    resumed = load_checkpoint(resume_path, storage=storage, require=("model_config", "model", "tokenizer",
                                                                     *TRAINING_KEYS)) if resume_path else None
    tokenizer = _prepare_tokenizer(cfg, out, urls, rank, world, resumed, storage)
    model_cfg = get_config(cfg.model, vocab_size=tokenizer.vocab_size)

    torch.manual_seed(cfg.seed)  # identical init on every rank
    model = CLIP(model_cfg).to(device)
    loader = TrainLoader(LoaderConfig(shards=cfg.shards, batch_size=cfg.batch_size, image_size=model_cfg.image_size,
                                      context_length=model_cfg.context_length, seed=cfg.seed, workers=cfg.workers,
                                      shuffle_buffer=cfg.shuffle_buffer, online_balance=cfg.online_balance,
                                      rank=rank, world_size=world, urls=urls, storage=storage), tokenizer)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(2000, max(1, total_steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps))
    scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(device, cfg.precision) else None
    if cfg.precision == "amp" and device.type != "cuda" and rank == 0:
        log.warning("--precision amp on %s runs bf16 autocast (fp16 autocast with loss scaling is for GPUs)",
                    device.type)

    step, samples_seen, compute_gmacs = 0, 0, 0.0
    if resumed is not None:
        if resumed["model_config"] != model_cfg.to_dict():
            raise InputError(f"{resume_path} was trained with another model config; resume with the same --model")
        _restore(resumed, resume_path, rank, world, model, optimizer, scheduler, loader, scaler)
        step, samples_seen, compute_gmacs = (int(resumed["step"]), int(resumed["samples_seen"]),
                                             float(resumed["compute_gmacs"]))
        log.info("resumed from %s at step %d", resume_path, step)
    else:
        torch.manual_seed(cfg.seed * 1000 + rank + 1)  # masks differ across ranks
        np.random.seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        if rank == 0:
            storage.write_bytes(join(out, "config.json"), json.dumps(
                {"train": asdict(cfg), "steps": total_steps, "samples_per_epoch": samples_per_epoch,
                 "model": model_cfg.to_dict(), "world_size": world}, indent=2).encode())

    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    if rank == 0:
        log.info("model %s: %.1fM params, %.3f GMACs/sample; %d shards%s; world size %d; %d steps%s", cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, gmacs_per_sample(model_cfg), len(loader.cfg.urls),
                 f" ({samples_per_epoch} samples per epoch)" if samples_per_epoch else "", world, total_steps,
                 f" (= {cfg.epochs} epochs)" if cfg.epochs else "")

    def epochs_done() -> int:
        """Completed epochs (open_clip's checkpoint ``epoch``): of --train-num-samples / sizes.json
        samples when known, else the data loader's own epoch count."""
        if samples_per_epoch:
            return samples_seen // samples_per_epoch
        return min((s["epoch"] for s in loader.worker_states.values()), default=0)

    run_name = out.rstrip("/").rsplit("/", 1)[-1]

    def checkpoint(epoch_file: int | None = None) -> None:
        data_states = _gather_objects(loader.state_dict(), world)
        rng_states = _gather_objects(_rng_state(), world)
        if rank == 0:
            weights = model.state_dict()
            state = {"step": step, "model_config": model_cfg.to_dict(), "model": weights,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "data": data_states, "rng": rng_states, "samples_seen": samples_seen,
                     "compute_gmacs": compute_gmacs, "tokenizer": tokenizer.to_json(),
                     "train_config": asdict(cfg), "total_steps": total_steps,
                     # open_clip's keys: its layout of the same tensors (views: stored once)
                     "state_dict": to_openclip(weights), "epoch": epochs_done(), "name": run_name}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            copies = (join(out, "checkpoints", f"epoch_{epoch_file}.pt"),) if epoch_file is not None else ()
            save_checkpoint(state, join(out, "checkpoints", f"step_{step}.pt"), storage, copies=copies)
            if metrics is not None:
                metrics.flush()
            if events is not None:
                events.flush()

    stop_at = min(total_steps, cfg.stop_after) if cfg.stop_after else total_steps
    metrics = _MetricsLog(join(out, "metrics.jsonl"), storage) if rank == 0 else None
    events = EventWriter(join(out, "tensorboard"), storage) if rank == 0 and cfg.tensorboard else None
    bar = tqdm(total=total_steps, initial=step, disable=rank != 0 or not cfg.progress, desc="train", unit="step")
    last_loss = float("nan")
    window_start, window_images = time.perf_counter(), 0
    last_epoch = epochs_done()
    model.train()
    batches = iter(loader)
    try:
        while step < stop_at:
            batch = next(batches)
            ratio = cfg.mask_ratio if step < total_steps - cfg.unmasked_steps else 0.0
            images = batch["images"].to(device, non_blocking=True)
            tokens = batch["tokens"].to(device, non_blocking=True)
            eot = batch["eot"].to(device, non_blocking=True)
            with autocast_context(device, cfg.precision):
                image_features, text_features, scale = ddp_model(images, tokens, eot, mask_ratio=ratio)
                loss = clip_loss(image_features.float(), text_features.float(), scale.float())
            optimizer.zero_grad(set_to_none=True)
            # loss * world undoes DDP's averaging: gradients equal the global-batch loss's
            if scaler is not None:
                scaler.scale(loss * world).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)  # skipped when the scaled gradients overflowed
                scaler.update()
            else:
                (loss * world).backward()
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
                scale_now = float(model.logit_scale.detach().exp())
                record = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                          "logit_scale": scale_now, "temperature": 1.0 / scale_now, "mask_ratio": ratio,
                          "images_per_s": window_images / max(elapsed, 1e-9), "samples_seen": samples_seen,
                          "gmacs_per_sample": gmacs_per_sample(model_cfg, ratio), "compute_gmacs": compute_gmacs,
                          "epoch": epochs_done(),
                          "data_epoch": max((s["epoch"] for s in loader.worker_states.values()), default=0),
                          "data": loader.counters()}
                if scaler is not None:
                    record["loss_scale"] = float(scaler.get_scale())
                if metrics is not None:
                    metrics.write(record)
                if events is not None:
                    events.scalars(step, {"train/loss": record["loss"], "train/lr": record["lr"],
                                          "train/scale": scale_now, "train/temperature": record["temperature"],
                                          "train/samples_per_second": record["images_per_s"],
                                          "train/mask_ratio": ratio, "train/epoch": record["epoch"]})
                bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{record['images_per_s']:.0f}")
                window_start, window_images = time.perf_counter(), 0
            epoch_file = None
            if cfg.save_frequency and epochs_done() > last_epoch:
                last_epoch = epochs_done()
                if last_epoch % cfg.save_frequency == 0 or last_epoch == cfg.epochs:
                    epoch_file = last_epoch
            if step % cfg.save_every == 0 or step == stop_at or epoch_file is not None:
                checkpoint(epoch_file)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if events is not None:
            events.close()
        del batches  # shuts the DataLoader workers down
    summary = {"step": step, "steps": total_steps, "epoch": epochs_done(), "loss": last_loss,
               "samples_seen": samples_seen, "compute_gmacs": compute_gmacs,
               "checkpoint": join(out, "checkpoints", f"step_{step}.pt"), "data": loader.counters()}
    if world > 1:
        dist.barrier()
    return summary
