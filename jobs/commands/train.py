"""Train the compact CLIP on WebDataset shards (contrastive loss, optional FLIP patch masking).

Examples:
  metacurate train --shards 'RUN/shards/{000000..000009}.tar' --model tiny --steps 500 --out RUN/train
  metacurate train ... --mask-ratio 0.5 --unmasked-steps 50        # FLIP + unmasked tuning
  metacurate train ... --online-balance                            # re-draw the kept subset per epoch
  metacurate train ... --resume auto                               # continue from OUT/checkpoints
  torchrun --nproc_per_node 2 -m jobs.cli train ...                 # DDP

Writes OUT/config.json, OUT/tokenizer.json, OUT/metrics.jsonl, OUT/checkpoints/step_<N>.pt.
"""
from __future__ import annotations

import argparse
import json
import os

from training.configs import CONFIGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True,
                        help="shard brace pattern(s); several sources joined with '::'")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, metrics.jsonl)")
    parser.add_argument("--model", default="tiny", choices=sorted(CONFIGS), help="model size (default tiny)")
    parser.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.2)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of steps (max 2000)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 disables)")
    parser.add_argument("--mask-ratio", type=float, default=0.0, help="FLIP patch drop ratio, e.g. 0.5 or 0.75")
    parser.add_argument("--unmasked-steps", type=int, default=0, help="final steps trained without masking")
    parser.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    parser.add_argument("--log-every", type=int, default=10, help="metrics.jsonl line every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes per rank")
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--online-balance", action="store_true",
                        help="keep a sample iff u(seed+epoch, uid) < p_keep from its json")
    parser.add_argument("--tokenizer", default="bpe", help="'bpe' (trained on the captions), 'bytes', or a tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    parser.add_argument("--resume", default=None, help="checkpoint file, run dir, or 'auto' (latest in --out)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop (with a checkpoint) at this step while keeping the --steps schedule")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto (default): bf16 autocast on GPU, fp32 on CPU; bf16 forces autocast "
                             "(also on CPU); weights and optimizer state stay fp32 either way")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from training.loop import TrainConfig, train

    cfg = TrainConfig(shards=args.shards, out=args.out, model=args.model, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, mask_ratio=args.mask_ratio,
                      unmasked_steps=args.unmasked_steps, save_every=args.save_every, log_every=args.log_every,
                      seed=args.seed, workers=args.workers, shuffle_buffer=args.shuffle_buffer,
                      online_balance=args.online_balance, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                      resume=args.resume, stop_after=args.stop_after, threads=args.threads,
                      precision=args.precision,
                      progress=not args.no_progress)
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        print(json.dumps(summary, indent=2))
    return 0
