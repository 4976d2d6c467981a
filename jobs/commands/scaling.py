"""Scaling laws across runs: fit E = beta * C^alpha (C = GMACs/sample x samples seen) in log-log
on the compute-efficient frontier (lowest error per log-compute bin); prints alpha and beta with
confidence intervals and writes fit.json + fit.png.

  metacurate scaling collect run*/results.json --out results.csv
  metacurate scaling fit results.csv --out DIR [--accuracy-column zeroshot/digits/top1]

The CSV needs `compute` (or `gmacs_per_sample` and `samples_seen`) and `error`
(or name an accuracy column; error = 1 - accuracy).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from curation.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    fit = sub.add_parser("fit", help="fit the power law on a results CSV")
    fit.add_argument("csv", help="one row per run")
    fit.add_argument("--out", required=True, help="output folder for fit.json and fit.png")
    fit.add_argument("--error-column", default=None, help="error column (default 'error')")
    fit.add_argument("--accuracy-column", default=None,
                     help="use 1 - this column as the error (e.g. zeroshot/digits/top1)")
    fit.add_argument("--bins-per-decade", type=float, default=4.0,
                     help="log10-compute bins per decade for the frontier (default 4)")
    fit.add_argument("--strict-pareto", action="store_true",
                     help="also drop frontier points beaten by a cheaper run")
    fit.add_argument("--confidence", type=float, default=0.95)
    fit.add_argument("--bootstrap", type=int, default=0,
                     help="bootstrap resamples for the CIs (default 0: OLS t-intervals)")
    fit.add_argument("--seed", type=int, default=0)
    col = sub.add_parser("collect", help="gather eval results JSON files into one CSV")
    col.add_argument("results", nargs="+", help="results JSON files from `metacurate eval`")
    col.add_argument("--out", required=True, help="CSV path")


def run(args: argparse.Namespace) -> int:
    if args.action == "collect":
        from eval.report import collect_csv

        missing = [p for p in args.results if not Path(p).exists()]
        if missing:
            raise InputError(f"results files not found: {missing}")
        try:
            out = collect_csv(args.results, args.out)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        print(f"wrote {out} ({len(args.results)} runs)")
        return 0
    if args.action != "fit":
        raise InputError("choose an action: `metacurate scaling fit CSV --out DIR` or "
                         "`metacurate scaling collect JSON... --out CSV`")
    from eval.scaling import fit_scaling, load_results_csv, plot_fit

    if not 0 < args.confidence < 1:
        raise InputError("--confidence must be between 0 and 1, e.g. 0.95")
    compute, error = load_results_csv(args.csv, args.error_column, args.accuracy_column)
    fit = fit_scaling(compute, error, bins_per_decade=args.bins_per_decade,
                      strict=args.strict_pareto, confidence=args.confidence,
                      bootstrap=args.bootstrap, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"source": str(args.csv), "n_runs": int(len(compute)), **fit.to_json()}
    (out / "fit.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    png = plot_fit(fit, out / "fit.png")
    print(f"{len(compute)} runs, {fit.n_points} on the frontier")
    print(fit.summary())
    print(f"wrote {out / 'fit.json'} and {png}")
    return 0
