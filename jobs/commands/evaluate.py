"""Evaluate a CLIP checkpoint: zero-shot classification with prompt ensembles, image/text
retrieval recall@K and a linear probe, on offline datasets; prints a table and writes JSON.

Datasets: `digits` (scikit-learn's handwritten digits, class names "zero".."nine"),
`digits:numerals` ("0".."9"), `heldout:RUN` (RUN/heldout shards), a shard pattern
'DIR/{000000..000009}.tar', a folder of shards, an image folder (root/<class>/<img> or
<key>.jpg + <key>.txt), or parquet with image bytes. Results are keyed by the dataset name: the
built-in name, the basename of a path, or NAME in NAME=PATH (use the name the images were
hashed under by `metacurate evalsets` so --overlap finds them).

Example:
  metacurate eval --checkpoint OUT/checkpoints --zeroshot digits --retrieval RUN/heldout \\
      --linear-probe digits --out results.json --overlap RUN --html OUT/eval_report
"""
from __future__ import annotations

import argparse
import logging

from curation.errors import InputError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint .pt file, or a training output dir (latest checkpoint)")
    parser.add_argument("--zeroshot", action="append", default=[], metavar="DATASET",
                        help="zero-shot classification dataset (repeatable)")
    parser.add_argument("--retrieval", action="append", default=[], metavar="DATASET",
                        help="image-caption dataset for recall@1/5/10 (repeatable)")
    parser.add_argument("--linear-probe", action="append", default=[], metavar="DATASET",
                        help="labelled dataset for a logistic-regression probe (repeatable)")
    parser.add_argument("--out", required=True, help="results JSON path")
    parser.add_argument("--templates", help="prompt templates file (one per line with {}, or a "
                        "JSON list); default: the built-in set for each dataset")
    parser.add_argument("--overlap", metavar="RUN",
                        help="run dir (or overlap parquet) from dedup: also report scores "
                             "without eval images that overlap training data")
    parser.add_argument("--overlap-max-hamming", type=int, default=None,
                        help="only count overlaps at Hamming distance <= this (default: all rows)")
    parser.add_argument("--html", metavar="DIR", help="also write DIR/index.html with PNG plots")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-samples", type=int, default=None,
                        help="evaluate on a seeded random subset of at most N images per dataset")
    parser.add_argument("--samples-seen", type=int, default=None,
                        help="training samples seen (for compute = GMACs/sample x samples); "
                             "default: as recorded in the training checkpoint")
    parser.add_argument("--seed", type=int, default=0)


def _load_model(path: str, device: str):
    try:
        from training.checkpoint import load_for_eval
    except ImportError as exc:  # training/ is part of this distribution; say what is missing
        raise InputError(f"cannot import training.checkpoint.load_for_eval ({exc}); install "
                         "metacurate with its training package") from exc
    try:
        return load_for_eval(path, device=device)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc


def _training_progress(path: str) -> tuple[int | None, float | None]:
    """(samples_seen, compute_gmacs) recorded in a training checkpoint, if it has them.

    Memory-mapped read, so a large checkpoint's tensors are not loaded a second time.
    """
    try:
        import torch

        from training.checkpoint import resolve_checkpoint

        state = torch.load(resolve_checkpoint(path), map_location="cpu", mmap=True,
                           weights_only=False)
    except Exception as exc:  # noqa: BLE001 - optional metadata; eval works without it
        log.debug("no training progress in %s: %s", path, exc)
        return None, None
    seen, gmacs = state.get("samples_seen"), state.get("compute_gmacs")
    return (int(seen) if seen is not None else None,
            float(gmacs) if gmacs is not None else None)


def run(args: argparse.Namespace) -> int:
    from eval.evaluate import EvalPlan, run_evaluation
    from eval.report import format_table, write_results, write_summary
    from eval.templates import load_templates

    if not (args.zeroshot or args.retrieval or args.linear_probe):
        raise InputError("nothing to evaluate: give at least one of --zeroshot, --retrieval, "
                         "--linear-probe")
    templates = load_templates(args.templates) if args.templates else None
    model = _load_model(args.checkpoint, args.device)
    plan = EvalPlan(zeroshot=args.zeroshot, retrieval=args.retrieval,
                    linear_probe=args.linear_probe, templates=templates, overlap=args.overlap,
                    overlap_max_hamming=args.overlap_max_hamming, batch_size=args.batch_size,
                    max_samples=args.max_samples, seed=args.seed)
    samples_seen, compute = args.samples_seen, None
    if samples_seen is None and getattr(model, "samples_seen", None) is None:
        samples_seen, compute = _training_progress(args.checkpoint)
    results = run_evaluation(model, plan, checkpoint=args.checkpoint, samples_seen=samples_seen,
                             compute_gmacs=compute)
    out = write_results(results, args.out)
    print(format_table(results))
    print(f"\nresults: {out}")
    if args.html:
        print(f"summary: {write_summary(results, args.html)}")
    return 0
