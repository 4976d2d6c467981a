"""Evaluate a CLIP checkpoint: zero-shot classification with prompt ensembles, image/text
retrieval recall@K and a linear probe, on offline datasets; prints a table and writes JSON.

Datasets: `digits` (scikit-learn's handwritten digits, class names "zero".."nine"),
`digits:numerals` ("0".."9"), `heldout:RUN` (RUN/heldout shards), a shard pattern
'DIR/{000000..000009}.tar', a folder of shards, a folder in clip_benchmark's WebDataset layout
(classnames.txt, zeroshot_classification_templates.txt, test/0.tar..; its templates are used), an
image folder (root/<class>/<img> or <key>.jpg + <key>.txt), or parquet with image bytes.
Results are keyed by the dataset name: the
built-in name, the basename of a path, or NAME in NAME=PATH (use the name the images were
hashed under by `metacurate evalsets` so --overlap finds them).

Checkpoints, datasets, --overlap and the outputs may be object-store URLs; the S3 endpoint and
keys come from the `storage:` section of --config (else from the usual AWS variables).

The results JSON holds our metrics (top1, top5, mean_per_class, R@K) and, under
"clip_benchmark", the same evaluations in clip_benchmark's result schema (acc1, acc5,
mean_per_class_recall, image_retrieval_recall@k, text_retrieval_recall@k); --clip-benchmark-out DIR
writes those as clip_benchmark's own result files. --checkpoint also takes a folder written by
`metacurate export --open-clip` and open_clip-style checkpoints (weights under `state_dict`).

Example:
  metacurate eval --checkpoint OUT/checkpoints --zeroshot digits --retrieval RUN/heldout \\
      --linear-probe digits --out results.json --overlap RUN --html OUT/eval_report
  metacurate eval --checkpoint OUT --zeroshot wds_cifar10/ --clip-benchmark-out cb/ --out results.json
"""
from __future__ import annotations

import argparse
import logging

from curation.storage import Storage, join
from eval.config import EvalConfig
from jobs.commands.train import add_config_flags, config_from_args

log = logging.getLogger(__name__)

REQUIRED = ("checkpoint", "out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, EvalConfig, REQUIRED)


def overlap_source(path: str, storage: Storage) -> str:
    """``--overlap``: a run directory means its dedup stage's overlap table; anything else (an
    overlap parquet file or a folder of parts) is used as given."""
    from curation.rundir import RunDir
    from jobs.stages import dedup

    folder = dedup.STAGE.dir_name()
    if storage.isdir(path) and storage.isdir(join(path, folder)):
        return dedup.overlap_url(RunDir(path, storage).stage(dedup.STAGE.name, folder))
    return path


def run(args: argparse.Namespace) -> int:
    from jobs.config import storage_for

    cfg: EvalConfig = config_from_args(args, EvalConfig)
    storage = storage_for(args.config)

    from eval.evaluate import EvalPlan, run_evaluation  # torch from here on
    from eval.report import format_table, write_clip_benchmark, write_results, write_summary
    from eval.templates import load_templates
    from training.checkpoint import load_for_eval

    templates = load_templates(cfg.templates, storage) if cfg.templates else None
    overlap = overlap_source(cfg.overlap, storage) if cfg.overlap else None
    model = load_for_eval(cfg.checkpoint, device=cfg.device, storage=storage)
    plan = EvalPlan(zeroshot=cfg.zeroshot, retrieval=cfg.retrieval, linear_probe=cfg.linear_probe,
                    templates=templates, overlap=overlap, overlap_max_hamming=cfg.overlap_max_hamming,
                    batch_size=cfg.batch_size, max_samples=cfg.max_samples, seed=cfg.seed)
    results = run_evaluation(model, plan, checkpoint=cfg.checkpoint, samples_seen=cfg.samples_seen,
                             storage=storage)
    out = write_results(results, cfg.out, storage)
    print(format_table(results))
    for name in results.get("collapsed", []):
        why = results["diagnostics"][name].get("why", "")
        print(f"\nWARNING {name}: the model does not tell these images apart ({why}); its zero-shot scores "
              "measure the label distribution, not recognition")
    print(f"\nresults: {out}")
    if cfg.html:
        print(f"summary: {write_summary(results, cfg.html, storage)}")
    if cfg.clip_benchmark_out:
        written = write_clip_benchmark(results, cfg.clip_benchmark_out, storage)
        print(f"clip_benchmark results: {len(written)} file(s) in {cfg.clip_benchmark_out}")
    return 0
