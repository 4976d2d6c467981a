"""Training-step throughput: our compact CLIP vs open_clip on the same torch build, and FLIP masking.

What one "step" is, on both sides: forward of both towers on synthetic pixels and token ids,
symmetric InfoNCE, ``zero_grad`` + backward + an AdamW step (lr 1e-4, betas (0.9, 0.98), eps 1e-6,
weight decay 0.2 except on 1-D params, as both trainers group them). fp32, CPU, masking 0, same
ViT/text sizes (``BENCH_CONFIG``: 64 px, patch 8 -> 64 patches, a vision-dominated model like real
CLIP ViTs), same batch, same image size and text length, same ``torch.set_num_threads`` (and
OMP_NUM_THREADS / MKL_NUM_THREADS). Data loading is excluded. Each side builds AdamW the way its
trainer does: ours with ``training.optim.build_optimizer`` (the fused AdamW kernel), open_clip's
``torch.optim.AdamW`` defaults (the per-parameter loop on CPU). A third side, our model with
open_clip's optimizer, isolates the model + loss part of the ratio.

Why a second interpreter: open_clip needs torchvision, which does not load beside this project's
torch 2.13.0 CPU build, so open_clip lives in its own venv (``--openclip-venv``, default
``$METACURATE_OPENCLIP_VENV`` or ``/tmp/openclip-venv``: torch 2.14.1 + torchvision 0.29.1 +
open_clip_torch). Our trainer needs neither torchvision nor anything but torch, so the headline
comparison runs BOTH models inside that venv's python, in one process (the repo is put on
``sys.path``): the same torch build, the same kernels, the same thread pool. If the venv is
missing the script builds it (a few minutes, ~7 GB) unless ``--no-build``; if open_clip cannot be
imported the comparison is skipped with the reason and the other figures are still printed.

How it is timed, so that load from other processes on a shared machine does not decide it: the
sides are *interleaved* — ``--rounds`` rounds, each running every side once (the order flips
every round, A B C, C B A, A B C, ..., so a slow drift in machine load hits all alike), each side doing
``--warmup`` untimed steps and then ``--steps`` timed steps per round. A round's figure is
batch / median step time; the script prints each side's median images/s over the rounds, the
per-round ratios ours / open_clip and their median (target >= 1.0x). Models and optimizers are
built once per side and keep training across rounds.

Then, in this (the project's) interpreter with torch 2.13.0 CPU, the same interleaving times our
model at mask ratio 0 vs 0.5 (FLIP's speed-up, target >= 1.6x); its mask-0 line is our throughput
on the project's own torch build, for comparison with the venv's figure.

  flock /tmp/cpu.lock python benchmarks/train_step.py [--batch-size 32] [--rounds 5] [--steps 20]
                                                      [--warmup 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the open_clip venv does not have this project installed
    sys.path.insert(0, str(REPO))
BENCH_CONFIG = {"embed_dim": 128, "image_size": 64, "patch_size": 8, "vision_width": 192, "vision_layers": 4,
                "vision_heads": 3, "context_length": 32, "vocab_size": 4096, "text_width": 96, "text_layers": 2,
                "text_heads": 2, "mlp_ratio": 4.0}
Step = Callable[[], None]
LR, WEIGHT_DECAY, BETAS, EPS = 1e-4, 0.2, (0.9, 0.98), 1e-6


def _inputs(batch: int, cfg: dict):
    import torch

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, cfg["image_size"], cfg["image_size"], generator=gen)
    # ids in [1, vocab-2] with the largest id last: open_clip pools at argmax, ours at eot = last position
    tokens = torch.randint(1, cfg["vocab_size"] - 2, (batch, cfg["context_length"]), generator=gen)
    tokens[:, -1] = cfg["vocab_size"] - 1
    return images, tokens


def plain_adamw(model):
    """open_clip's trainer's optimizer: ``torch.optim.AdamW`` (the for-loop kernel on CPU), same groups
    and hyper-parameters as ours."""
    import torch

    from training.optim import param_groups

    return torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=EPS)


def ours_step(batch: int, threads: int, mask_ratio: float = 0.0, optimizer: str = "trainer") -> tuple[Step, int]:
    """One training step of our model as a closure (and the parameter count).

    ``optimizer="trainer"`` builds AdamW exactly as our trainer does (``training.optim.build_optimizer``,
    fused kernel); ``"plain"`` builds open_clip's (``plain_adamw``) to isolate model + loss speed.
    """
    import torch

    from training.loss import clip_loss
    from training.model import CLIP, ModelConfig
    from training.optim import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CLIP(ModelConfig(**BENCH_CONFIG)).train()
    opt = build_optimizer(model, LR, WEIGHT_DECAY, BETAS, EPS) if optimizer == "trainer" else plain_adamw(model)
    images, tokens = _inputs(batch, BENCH_CONFIG)
    eot = torch.full((batch,), BENCH_CONFIG["context_length"] - 1)

    def step() -> None:
        img, txt, scale = model(images, tokens, eot, mask_ratio=mask_ratio)
        loss = clip_loss(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def openclip_step(batch: int, threads: int) -> tuple[Step, int]:
    """One training step of open_clip's ``CLIP`` built with the same sizes (no pretrained weights)."""
    import torch
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    c = BENCH_CONFIG
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=c["vision_layers"], width=c["vision_width"],
                           head_width=c["vision_width"] // c["vision_heads"], mlp_ratio=c["mlp_ratio"],
                           patch_size=c["patch_size"], image_size=c["image_size"])
    text = CLIPTextCfg(context_length=c["context_length"], vocab_size=c["vocab_size"], width=c["text_width"],
                       heads=c["text_heads"], layers=c["text_layers"], mlp_ratio=c["mlp_ratio"])
    model = CLIP(c["embed_dim"], vision, text).train()
    opt = plain_adamw(model)
    loss_fn = ClipLoss()
    images, tokens = _inputs(batch, c)

    def step() -> None:
        img, txt, scale = model(images, tokens)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def interleave(sides: dict[str, Step], rounds: int, warmup: int, steps: int) -> dict[str, list[float]]:
    """Median seconds per step of each side in each round; sides alternate order every round."""
    names = list(sides)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            for _ in range(warmup):
                sides[name]()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                sides[name]()
                times.append(time.perf_counter() - t0)
            out[name].append(statistics.median(times))
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {out[n][-1] * 1000:.0f} ms" for n in names),
              file=sys.stderr, flush=True)
    return out


def worker(args: dict) -> None:
    """Runs inside the open_clip venv: both models, one process, interleaved; prints one JSON line."""
    import open_clip
    import torch

    b, t = args["batch"], args["threads"]
    ours, ours_params = ours_step(b, t)
    ours_plain, _ = ours_step(b, t, optimizer="plain")
    theirs, their_params = openclip_step(b, t)
    times = interleave({"ours": ours, "open_clip": theirs, "ours_plain_adamw": ours_plain},
                       args["rounds"], args["warmup"], args["steps"])
    print(json.dumps({"times": times, "params": {"ours": ours_params, "open_clip": their_params},
                      "torch": torch.__version__, "open_clip": open_clip.__version__,
                      "threads": torch.get_num_threads()}))


def ensure_openclip_python(venv: Path, build: bool) -> tuple[Path | None, str]:
    """The venv's python if open_clip imports there (building the venv if allowed), else a reason."""
    python = venv / "bin" / "python"
    if not python.exists():
        if not build:
            return None, f"no venv at {venv} and --no-build given"
        print(f"building the open_clip venv at {venv} (a few minutes, ~7 GB) ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1",
                            "open_clip_torch"], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            return None, f"could not build the venv at {venv}: {exc}"
    probe = subprocess.run([str(python), "-c", "import open_clip, torchvision"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return None, f"open_clip does not import in {venv}: {probe.stderr.strip().splitlines()[-1:]}"
    return python, ""


def run_worker(python: Path, args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args["threads"]), "MKL_NUM_THREADS": str(args["threads"])}
    proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", json.dumps(args)],
                          stdout=subprocess.PIPE, stderr=None, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the open_clip venv worker exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _img_s(batch: int, times: list[float]) -> list[float]:
    return [batch / t for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison (default 5)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side per round (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side per round (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on every side (default 2)")
    parser.add_argument("--openclip-venv", type=Path,
                        default=Path(os.environ.get("METACURATE_OPENCLIP_VENV", "/tmp/openclip-venv")))
    parser.add_argument("--no-build", action="store_true", help="do not build the open_clip venv if missing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON args, run inside the venv
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    b, t = args.batch_size, args.threads
    setting = {"batch": b, "threads": t, "rounds": args.rounds, "warmup": args.warmup, "steps": args.steps}
    print(f"config {BENCH_CONFIG}\nbatch {b}, {t} threads, fp32, CPU; {args.rounds} interleaved rounds x "
          f"({args.warmup} warm-up + {args.steps} timed steps) per side; load average at start "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    python, reason = ensure_openclip_python(args.openclip_venv, build=not args.no_build)
    if python is not None:
        print(f"[1] ours vs open_clip, one process in {python} ...", flush=True)
        try:
            res = run_worker(python, setting)
            ours, theirs = _img_s(b, res["times"]["ours"]), _img_s(b, res["times"]["open_clip"])
            plain = _img_s(b, res["times"]["ours_plain_adamw"])
            ratios = [o / c for o, c in zip(ours, theirs)]
            plain_ratios = [o / c for o, c in zip(plain, theirs)]
            print(f"    torch {res['torch']}, open_clip {res['open_clip']}, {res['threads']} threads; params: ours "
                  f"{res['params']['ours'] / 1e6:.2f}M, open_clip {res['params']['open_clip'] / 1e6:.2f}M")
            print(f"ours      (torch {res['torch']}) mask 0.0 : {statistics.median(ours):8.1f} images/s (median of rounds)")
            print(f"open_clip (torch {res['torch']}) mask 0.0 : {statistics.median(theirs):8.1f} images/s (median of rounds)")
            print("per-round ratio ours / open_clip : " + " ".join(f"{r:.2f}" for r in ratios))
            print(f"median ratio ours / open_clip    : {statistics.median(ratios):.2f}x  (target >= 1.0x)")
            print(f"ours with open_clip's plain AdamW: {statistics.median(plain):8.1f} images/s; per-round ratio "
                  + " ".join(f"{r:.2f}" for r in plain_ratios) + f"; median {statistics.median(plain_ratios):.2f}x "
                  "(model + loss alone)")
        except RuntimeError as exc:
            print(f"open_clip comparison failed: {exc}")
    else:
        print(f"open_clip comparison skipped: {reason}")

    import torch

    print(f"[2] ours at mask 0 vs 0.5 in this interpreter (torch {torch.__version__}) ...", flush=True)
    step0, params = ours_step(b, t, 0.0)
    step5, _ = ours_step(b, t, 0.5)
    times = interleave({"mask 0.0": step0, "mask 0.5": step5}, args.rounds, args.warmup, args.steps)
    m0, m5 = _img_s(b, times["mask 0.0"]), _img_s(b, times["mask 0.5"])
    speedups = [x / y for x, y in zip(m5, m0)]
    print(f"ours      (torch {torch.__version__}) mask 0.0 : {statistics.median(m0):8.1f} images/s "
          f"({params / 1e6:.2f}M params)")
    print(f"ours      (torch {torch.__version__}) mask 0.5 : {statistics.median(m5):8.1f} images/s")
    print("per-round speed-up 0.5 vs 0       : " + " ".join(f"{s:.2f}" for s in speedups))
    print(f"median masking speed-up (0.5 vs 0): {statistics.median(speedups):.2f}x  (target >= 1.6x)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes share these CPUs)")


if __name__ == "__main__":
    main()
