"""Experiments on the offline miniature web.

  metacurate experiment balance-vs-random [--out runs/balance-vs-random] [--seeds 3] [--train-steps 300]

balance-vs-random: from the same pool, curate a MetaCLIP-balanced subset and a uniformly random
subset of the same size drawn from the same matched rows (`balance.mode: random`), for each seed;
download, dedup and shard both; train the tiny CLIP on each with the same settings; evaluate
zero-shot on scikit-learn's real digits and retrieval on the held-out split. Prints mean ± std
over seeds and writes `comparison.png` (error bars) and `results.json`.

Both arms keep `--keep-fraction` of the matched rows (the balanced arm solves t for that size, so
its head entries are always cut: a t above every count would balance nothing), unless `--t` fixes
the threshold. Even `--tiny` runs two seeds, so the spread is an estimate, not zero.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["balance-vs-random"], help="which experiment")
    p.add_argument("--out", default="runs/balance-vs-random")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--pool-size", type=int, default=3000)
    p.add_argument("--keep-fraction", type=float, default=0.6,
                   help="both arms keep this share of the matched rows (default 0.6)")
    p.add_argument("--t", type=float, default=None, help="a fixed balancing threshold instead (the random arm then "
                                                          "keeps as many rows as the balanced arm is expected to)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--master", default="local[*]")
    p.add_argument("--wordnet", default=None)
    p.add_argument("--tiny", action="store_true", help="a very small run (tests)")


#: Training steps at --tiny: the tiny model needs about this many before its image embeddings
#: separate (after 20 steps every digit got the same class ranking, so top-5 was a constant 0.497:
#: the share of the test images in five fixed classes).
TINY_STEPS = 80

METRICS = [("zero-shot digits top-1", ("zeroshot", "digits", "top1")),
           ("zero-shot digits top-5", ("zeroshot", "digits", "top5")),
           ("retrieval i2t R@5", ("retrieval", "heldout", "image_to_text", "R@5")),
           ("retrieval t2i R@5", ("retrieval", "heldout", "text_to_image", "R@5")),
           ("retrieval mean recall", ("retrieval", "heldout", "mean_recall"))]


def _metric(results: dict, path: tuple) -> float:
    """Read a metric from the eval JSON's flat `metrics` map (e.g. zeroshot/digits/top1)."""
    flat = results.get("metrics", {})
    key = "/".join(path)
    if key in flat:
        return float(flat[key])
    raise KeyError(f"metric {key} not in eval results (have: {sorted(flat)[:12]} ...)")


def run(args) -> int:
    from jobs.commands.quickstart import _Steps, curate_run, find_wordnet, prepare_world, shard_sizes, train_and_eval
    from jobs.spark import get_spark

    from curation.errors import InputError

    if not 0 < args.keep_fraction < 1:
        raise InputError(f"--keep-fraction must be between 0 and 1, got {args.keep_fraction}")
    out = os.path.abspath(args.out)
    seeds = list(range(2 if args.tiny else max(2, args.seeds)))
    steps = TINY_STEPS if args.tiny else args.train_steps
    pool_size = 600 if args.tiny else args.pool_size
    find_wordnet(args.wordnet)
    get_spark(args.master)
    step = _Steps(4 + 2 * len(seeds))
    world = prepare_world(out, tiny=args.tiny, pool_size=pool_size, seed=0, master=args.master,
                          wordnet=args.wordnet, step=step)
    rows: list[dict] = []
    arms: dict[int, dict] = {}
    try:
        runs = []
        for seed in seeds:
            step(f"seed {seed}: curate the balanced and the random arm")
            bal_dir = os.path.join(out, f"seed{seed}", "balanced", "run")
            bal_cfg = os.path.join(out, f"seed{seed}-balanced.yaml")
            if args.t is None:  # the size comes from the matched pool: run up to count first
                matched = curate_run(world, bal_dir, t=1, seed=seed, master=args.master, config_path=bal_cfg,
                                     stages=["count"])["out"]
                size = max(1, int(round(args.keep_fraction * matched)))
                bal = curate_run(world, bal_dir, t=None, target_size=size, seed=seed, master=args.master,
                                 config_path=bal_cfg)
            else:
                bal = curate_run(world, bal_dir, t=args.t, seed=seed, master=args.master, config_path=bal_cfg)
                size = int(round(bal["expected_kept"]))
            rnd_dir = os.path.join(out, f"seed{seed}", "random", "run")
            rnd = curate_run(world, rnd_dir, t=None, seed=seed, master=args.master, mode="random",
                             target_size=size, config_path=os.path.join(out, f"seed{seed}-random.yaml"))
            step.say(f"balanced: t = {bal['t']:g}, kept {bal['kept']:,} of {bal['matched']:,} ({bal['head_entries']:,} "
                     f"head entries cut); random: kept {rnd['kept']:,} (target {size:,})")
            arms[seed] = {"balanced": bal, "random": rnd}
            runs.append((seed, bal_dir, rnd_dir))
    finally:
        world["stop_server"]()
    for seed, bal_dir, rnd_dir in runs:
        step(f"seed {seed}: train + eval both arms ({steps} steps each)")
        for arm, run_dir in (("balanced", bal_dir), ("random", rnd_dir)):
            t0 = time.time()
            res = train_and_eval(run_dir, world, os.path.dirname(run_dir), steps=steps, seed=seed, overlap=False)
            sizes = shard_sizes(run_dir)[1]
            row = {"seed": seed, "arm": arm, "train_samples": sum(sizes.values()), "seconds": time.time() - t0}
            for label, path in METRICS:
                row[label] = _metric(res, path)
            rows.append(row)
            step.say(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    step("compare")
    summary = {}
    for arm in ("balanced", "random"):
        arm_rows = [r for r in rows if r["arm"] == arm]
        summary[arm] = {label: {"mean": statistics.mean(r[label] for r in arm_rows),
                                "std": statistics.stdev(r[label] for r in arm_rows) if len(arm_rows) > 1 else 0.0}
                        for label, _ in METRICS}
    print(f"\n{'metric':<28}{'balanced':>22}{'random':>22}")
    for label, _ in METRICS:
        b, r = summary["balanced"][label], summary["random"][label]
        print(f"{label:<28}{b['mean']:>14.4f} ± {b['std']:<6.4f}{r['mean']:>14.4f} ± {r['std']:<6.4f}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary, "t": args.t, "keep_fraction": args.keep_fraction,
                   "seeds": seeds, "train_steps": steps, "pool_size": pool_size,
                   "curation": {str(sd): {arm: {k: v.get(k) for k in ("t", "kept", "matched", "head_entries", "mode")}
                                          for arm, v in a.items()} for sd, a in arms.items()}}, f, indent=2)
    _plot(summary, os.path.join(out, "comparison.png"), len(seeds))
    print(f"\nresults: {os.path.join(out, 'results.json')}\nplot:    {os.path.join(out, 'comparison.png')}")
    return 0


def _plot(summary: dict, path: str, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [label for label, _ in METRICS]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (arm, colour) in enumerate((("balanced", "#3b6fb6"), ("random", "#d98b3a"))):
        means = [summary[arm][lab]["mean"] for lab in labels]
        stds = [summary[arm][lab]["std"] for lab in labels]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=4, label=f"{arm} subset", color=colour)
    import textwrap

    ax.set_xticks(x, [textwrap.fill(lab, 14) for lab in labels])
    ax.set_ylabel("score (fraction)")
    ax.set_title(f"MetaCLIP balancing vs a random subset of equal size (mean ± std over {n_seeds} seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
