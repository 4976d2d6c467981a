"""Train the compact CLIP on WebDataset shards (contrastive loss, optional FLIP patch masking).

Examples:
  metacurate train --shards 'RUN/shards/{000000..000009}.tar' --model tiny --steps 500 --out RUN/train
  metacurate train ... --mask-ratio 0.5 --unmasked-steps 50        # FLIP + unmasked tuning
  metacurate train ... --online-balance                            # re-draw the kept subset per epoch
  metacurate train ... --resume auto                               # continue from OUT/checkpoints
  metacurate train --config run.yaml --shards 's3://b/run/shards/{000000..000009}.tar' --out s3://b/train
  torchrun --nproc_per_node 2 -m jobs.cli train ...                 # DDP

open_clip's flag names work too (each is an alias of ours, listed beside it below):
  metacurate train --train-data 'RUN/shards/{000000..000009}.tar' --epochs 4 --batch-size 256 \
      --lr 5e-4 --wd 0.2 --warmup 500 --force-patch-dropout 0.5 --precision amp --save-frequency 1 \
      --resume latest --out RUN/train
--epochs N sets the steps to ceil(N x train-num-samples / (batch-size x ranks)); --train-num-samples
defaults to the shards' sizes.json total. --precision amp is fp16 autocast with loss scaling on a GPU
(bf16 on a CPU), amp_bf16 is bf16 autocast.

Writes OUT/config.json, OUT/tokenizer.json, OUT/metrics.jsonl, OUT/tensorboard/ (TensorBoard event
files: `tensorboard --logdir OUT/tensorboard`), OUT/checkpoints/step_<N>.pt (with --save-frequency
also epoch_<K>.pt). A checkpoint holds our keys and open_clip's (`state_dict` in open_clip's layout,
`epoch`, `name`); `metacurate export --open-clip` writes the model config and tokenizer open_clip needs.
--shards and --out may be object-store URLs; the S3 endpoint and keys come from the `storage:`
section of --config (else from the usual AWS variables).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Sequence

from curation.errors import InputError
from curation.settings import add_flags, build, flag_name, flag_values, walk_fields
from training.configs import TrainConfig

#: Settings without which the command cannot run: argparse insists on them (and shows them in usage).
REQUIRED = ("shards", "out")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, required: Sequence[str]) -> dict[str, str]:
    """``--config FILE`` (for its ``storage:`` section) and one flag per setting of ``cls``;
    the ``required`` ones are marked so in argparse. Returns ``{flag: key}``."""
    parser.add_argument("--config", metavar="FILE",
                        help="run config YAML; only its `storage:` section is used (S3 endpoint and keys "
                             "for s3:// paths); default: the AWS_* variables")
    flags = add_flags(parser, cls)
    for action in parser._actions:  # argparse keeps no public handle on the actions it made
        if action.dest in required:
            action.required = True
            action.help = (action.help or "").rsplit(" (default:", 1)[0]  # a default it never uses
    return flags


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The ``cls`` made from the flags the user gave (``curation.settings.build`` rules); error
    messages name the flag, not the settings key."""
    keys = [f.name for f in dataclasses.fields(cls)]
    try:
        return build(cls, flag_values(args, keys))
    except InputError as exc:
        message = str(exc)
        for flag, key in flags_of(cls).items():
            message = message.replace(f"config key `{key}`", flag)
        raise InputError(message) from None


def flags_of(cls: type) -> dict[str, str]:
    """``{flag: key}`` of ``cls``, the names :func:`add_config_flags` gave its settings."""
    return {flag_name(key, f): key for key, f, _ in walk_fields(cls)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, TrainConfig, REQUIRED)


def run(args: argparse.Namespace) -> int:
    from jobs.config import storage_for

    cfg = config_from_args(args, TrainConfig)
    storage = storage_for(args.config)

    from training.loop import train  # torch is imported only once there is work to do

    summary = train(cfg, storage)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        print(json.dumps(summary, indent=2))
    return 0
