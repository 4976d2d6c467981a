"""Model sizes (``CONFIGS``) and the training settings (``TrainConfig``), without torch: the
command line builds ``metacurate train --help`` from them and a checkpoint's config is read back
through ``ModelConfig.from_dict``, none of which should pay torch's ~2 s import."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from curation.settings import SettingError, setting


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the model; stored inside checkpoints so eval can rebuild it."""

    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    context_length: int = 32
    vocab_size: int = 4096
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


CONFIGS: dict[str, ModelConfig] = {
    # A few seconds for dozens of steps: the unit tests' model (32 px, 16 patches).
    "micro": ModelConfig(embed_dim=64, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                         vision_heads=2, context_length=16, text_width=64, text_layers=2, text_heads=2),
    # ~1.7M params: a few hundred steps on 2 CPU cores in minutes; used by the tests.
    "tiny": ModelConfig(),
    # ViT-S/32-like at a reduced resolution: a real but still CPU-trainable model.
    "small": ModelConfig(embed_dim=256, image_size=128, patch_size=16, vision_width=384,
                         vision_layers=6, vision_heads=6, context_length=64, vocab_size=16384,
                         text_width=256, text_layers=6, text_heads=4),
    "vit-s-32": ModelConfig(embed_dim=384, image_size=224, patch_size=32, vision_width=384,
                            vision_layers=12, vision_heads=6, context_length=77, vocab_size=49408,
                            text_width=384, text_layers=12, text_heads=6),
    "vit-b-32": ModelConfig(embed_dim=512, image_size=224, patch_size=32, vision_width=768,
                            vision_layers=12, vision_heads=12, context_length=77, vocab_size=49408,
                            text_width=512, text_layers=12, text_heads=8),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A named config with some fields replaced (e.g. ``vocab_size`` from the tokenizer)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)


#: ``auto``/``bf16``/``fp32`` are ours; ``amp``/``amp_bf16`` are open_clip's names (see TrainConfig.precision).
PRECISIONS = ("auto", "bf16", "fp32", "amp", "amp_bf16")
#: ``--resume`` values that mean "the newest checkpoint in --out, if any" (ours, open_clip's).
RESUME_LATEST = ("auto", "latest")
#: Steps when neither --steps nor --epochs is given.
DEFAULT_STEPS = 1000


@dataclass
class TrainConfig:
    """Every setting of ``metacurate train``: the flags, their defaults and help are made from
    these fields (``curation.settings.add_flags``), so each is written once. Where open_clip's
    trainer has the same setting under another name, that name is an alias of the flag."""

    shards: str = setting("", "shard brace pattern(s), a folder or a glob; several sources joined with '::' "
                              "(required)", metavar="PATTERN", aliases=("--train-data",))
    out: str = setting("", "output folder, local or s3://... (config.json, tokenizer.json, metrics.jsonl, "
                           "tensorboard/, checkpoints/) (required)", metavar="DIR")
    model: str = setting("tiny", "model size", choices=sorted(CONFIGS))
    steps: int | None = setting(None, f"total optimizer steps; none: ceil(epochs x train-num-samples / global "
                                      f"batch) with --epochs, else {DEFAULT_STEPS}", minimum=1)
    epochs: int | None = setting(None, "passes over --train-num-samples samples; sets the steps to "
                                       "ceil(epochs x train-num-samples / (batch-size x ranks)) (give it or "
                                       "--steps, not both)", minimum=1)
    train_num_samples: int | None = setting(None, "samples in one epoch (for --epochs, --save-frequency and "
                                                  "the checkpoints' epoch); none: the total of the shards' "
                                                  "sizes.json (which counts the whole pool: with "
                                                  "--online-balance give the expected kept count)", minimum=1)
    batch_size: int = setting(64, "per-rank batch size", minimum=1)
    lr: float = setting(5e-4, "peak learning rate (after warmup)", minimum=0, finite=True)
    weight_decay: float = setting(0.2, "AdamW weight decay", minimum=0, finite=True, aliases=("--wd",))
    beta1: float = setting(0.9, "AdamW beta1", minimum=0, finite=True)
    beta2: float = setting(0.98, "AdamW beta2", minimum=0, finite=True)
    eps: float = setting(1e-6, "AdamW epsilon", minimum=0, finite=True)
    warmup_steps: int | None = setting(None, "linear warmup steps; none: 10% of the steps (at most 2000)",
                                       minimum=0, aliases=("--warmup",))
    grad_clip: float = setting(1.0, "max grad norm (0 disables)", minimum=0, finite=True)
    mask_ratio: float = setting(0.0, "FLIP patch drop ratio, e.g. 0.5 or 0.75", minimum=0, finite=True,
                                aliases=("--force-patch-dropout",))
    unmasked_steps: int = setting(0, "FLIP's unmasked tuning: the last N steps run at mask ratio 0", minimum=0)
    save_every: int = setting(500, "checkpoint every N steps (checkpoints/step_<N>.pt)", minimum=1)
    save_frequency: int | None = setting(None, "also write checkpoints/epoch_<K>.pt (open_clip's name) at the "
                                               "end of every K-th epoch (and of the last with --epochs)", minimum=1)
    log_every: int = setting(10, "metrics.jsonl line and TensorBoard scalars every N steps", minimum=1)
    tensorboard: bool = setting(True, "write TensorBoard event files to OUT/tensorboard/ (loss, lr, logit "
                                      "scale, temperature, throughput)")
    seed: int = setting(0, "seed of the initialisation, data order, crops, masks and the online-balance draw")
    workers: int = setting(2, "data loader worker processes per rank", minimum=0)
    shuffle_buffer: int = setting(1000, "samples in the shuffle buffer of each data loader worker", minimum=0)
    online_balance: bool = setting(False, "keep a sample iff u(seed, epoch, uid) < p_keep from its json "
                                          "(re-draws the balanced subset every epoch)")
    tokenizer: str = setting("bpe", "'bpe' (trained on the shards' captions), 'bytes', or a tokenizer.json file; "
                                   "new tokenizers clean texts the way open_clip does (ftfy, HTML entities, "
                                   "whitespace), so exported models tokenize alike")
    vocab_size: int = setting(4096, "BPE vocabulary size", minimum=1)
    resume: str | None = setting(None, "a checkpoint file, a run dir, or 'latest' / 'auto' (the newest in --out, "
                                       "if any)")
    stop_after: int | None = setting(None, "stop (with a checkpoint) at this step while keeping the full "
                                           "schedule", minimum=1)
    threads: int | None = setting(None, "torch CPU threads", minimum=1)
    progress: bool = setting(True, "show the progress bar")
    precision: str = setting("auto", "auto: bf16 autocast on GPU, fp32 on CPU; bf16 or amp_bf16: bf16 autocast "
                                     "(also on CPU); amp: fp16 autocast with loss scaling on GPU (bf16 autocast "
                                     "on CPU, which has no fp16 path worth using); fp32: no autocast. Weights "
                                     "and optimizer state stay fp32 either way", choices=PRECISIONS)

    def validate(self) -> None:
        """Rules between fields and the ones a directly built config must meet too (``build``
        checks choices and minimums of values it is given; a config made in Python skips that)."""
        if not self.shards:
            raise SettingError("shards", "is required: give the training shards, e.g. "
                                         "'RUN/shards/{000000..000009}.tar'")
        if not self.out:
            raise SettingError("out", "is required: give the output folder (local or s3://...)")
        if self.model not in CONFIGS:
            raise SettingError("model", f"must be one of {sorted(CONFIGS)}, got {self.model!r}")
        for key in ("steps", "epochs", "train_num_samples", "batch_size", "save_every", "save_frequency",
                    "log_every"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SettingError(key, f"must be positive, got {value}")
        if self.steps is not None and self.epochs is not None:
            raise SettingError("epochs", f"and --steps both set the length of the run: give one of them "
                                         f"(got --steps {self.steps} and --epochs {self.epochs})")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise SettingError("mask_ratio", f"must be in [0, 1), got {self.mask_ratio}")
        if self.unmasked_steps < 0 or (self.steps is not None and self.unmasked_steps > self.steps):
            raise SettingError("unmasked_steps", f"must be between 0 and --steps ({self.steps}), "
                                                 f"got {self.unmasked_steps}")
        if self.precision not in PRECISIONS:
            raise SettingError("precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        if self.workers < 0:
            raise SettingError("workers", f"must be >= 0, got {self.workers}")

    def total_steps(self, samples_per_epoch: int | None, world_size: int = 1) -> int:
        """The run's length in optimizer steps: ``--steps``, or ``ceil(epochs x samples / global
        batch)`` with ``--epochs`` (``samples_per_epoch``: --train-num-samples, else sizes.json)."""
        if self.epochs is None:
            return self.steps if self.steps is not None else DEFAULT_STEPS
        if not samples_per_epoch:
            raise SettingError("epochs", "needs the number of samples in an epoch: give --train-num-samples "
                                         "(the shards have no usable sizes.json)")
        return max(1, math.ceil(self.epochs * samples_per_epoch / (self.batch_size * world_size)))


def flag_of(key: str) -> str:
    """The command-line flag of a setting (``batch_size`` -> ``--batch-size``)."""
    return "--" + key.replace("_", "-")
