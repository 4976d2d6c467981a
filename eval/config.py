"""The settings of ``metacurate eval`` (``EvalConfig``), without torch: the command's flags, their
defaults and help are made from these fields (``curation.settings.add_flags``), and
``metacurate eval --help`` must not pay torch's import."""
from __future__ import annotations

from dataclasses import dataclass

from curation.errors import InputError
from curation.settings import SettingError, setting


@dataclass
class EvalConfig:
    """What to evaluate, on which datasets, and where the results go."""

    checkpoint: str = setting("", "checkpoint .pt file, or a training output dir (its latest checkpoint); "
                                  "local or s3://... (required)", metavar="PATH")
    zeroshot: list = setting([], "zero-shot classification dataset (also a folder in clip_benchmark's "
                                 "WebDataset layout)", metavar="DATASET")
    retrieval: list = setting([], "image-caption dataset for recall@1/5/10 (also a folder in clip_benchmark's "
                                  "WebDataset layout)", metavar="DATASET")
    linear_probe: list = setting([], "labelled dataset for a logistic-regression probe", metavar="DATASET")
    out: str = setting("", "results JSON path, local or s3://... (required)", metavar="PATH")
    templates: str | None = setting(None, "prompt templates file (one per line with {}, or a JSON list); "
                                          "none: the built-in set for each dataset", metavar="FILE")
    overlap: str | None = setting(None, "run dir (its dedup overlap table) or an overlap parquet file or "
                                        "folder: also report scores without eval images that overlap "
                                        "training data", metavar="RUN")
    overlap_max_hamming: int | None = setting(None, "only count overlaps at Hamming distance <= this; "
                                                    "none: all rows", minimum=0)
    html: str | None = setting(None, "also write DIR/index.html with PNG plots", metavar="DIR")
    clip_benchmark_out: str | None = setting(None, "also write each zero-shot / retrieval result as a "
                                                   "clip_benchmark result file in DIR (its schema and file "
                                                   "names; `clip_benchmark build DIR/*.json` tabulates them)",
                                             metavar="DIR")
    device: str = setting("cpu", "torch device")
    batch_size: int = setting(64, "images per forward pass", minimum=1)
    max_samples: int | None = setting(None, "evaluate on a seeded random subset of at most N images per "
                                            "dataset", minimum=1, metavar="N")
    samples_seen: int | None = setting(None, "training samples seen (for compute = GMACs/sample x samples); "
                                             "none: as recorded in the training checkpoint", minimum=0)
    seed: int = setting(0, "seed of the --max-samples subset and the linear probe's split")

    def validate(self) -> None:
        """Required values and a task to run (``build`` checks the values it is given; this also
        holds for a config made in Python)."""
        if not self.checkpoint:
            raise SettingError("checkpoint", "is required: a checkpoint .pt file or a training output dir")
        if not self.out:
            raise SettingError("out", "is required: the results JSON path")
        if not (self.zeroshot or self.retrieval or self.linear_probe):
            raise InputError("nothing to evaluate: give at least one of --zeroshot, --retrieval, "
                             "--linear-probe")
        for key in ("batch_size", "max_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SettingError(key, f"must be positive, got {value}")
