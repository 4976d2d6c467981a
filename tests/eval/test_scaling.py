"""Scaling-law fit: recover a known power law from noisy synthetic runs."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from curation.errors import InputError
from eval.scaling import fit_power_law, fit_scaling, load_results_csv, pareto_frontier, plot_fit
from jobs.cli import main

ALPHA, BETA = -0.28, 40.0


def _runs(seed: int = 0, sigma: float = 0.03):
    """One good run per 1/6-decade bin (noisy law) plus a worse-tuned run beside each."""
    rng = np.random.default_rng(seed)
    c = 10 ** (3 + np.arange(24) / 6)
    e = BETA * c ** ALPHA * np.exp(rng.normal(0, sigma, c.size))
    bad_c = c * 1.02
    bad_e = e * 1.3
    return np.concatenate([c, bad_c]), np.concatenate([e, bad_e]), c, e


def test_fit_recovers_alpha_beta_within_ci():
    compute, error, good_c, good_e = _runs()
    fit = fit_scaling(compute, error, bins_per_decade=6)
    assert fit.n_points == 24
    assert np.allclose(np.sort(fit.compute), good_c) and np.allclose(fit.error, good_e)
    assert fit.alpha_ci[0] <= ALPHA <= fit.alpha_ci[1]
    assert fit.beta_ci[0] <= BETA <= fit.beta_ci[1]
    assert fit.alpha_ci[1] - fit.alpha_ci[0] < 0.03
    assert fit.alpha == pytest.approx(ALPHA, abs=0.015)
    assert fit.beta == pytest.approx(BETA, rel=0.15)
    assert fit.r2 > 0.99
    assert "α = " in fit.summary()


def test_bootstrap_ci_also_covers_truth():
    compute, error, _, _ = _runs(seed=1)
    fit = fit_scaling(compute, error, bins_per_decade=6, bootstrap=400, seed=0)
    assert fit.ci_method.startswith("bootstrap")
    assert fit.alpha_ci[0] <= ALPHA <= fit.alpha_ci[1]
    assert fit.beta_ci[0] <= BETA <= fit.beta_ci[1]


def test_ols_interval_coverage_is_honest():
    """Across many noisy draws the 90% interval for α holds the truth about 90% of the time."""
    hits = 0
    trials = 300
    for s in range(trials):
        rng = np.random.default_rng(1000 + s)
        c = np.logspace(2, 6, 8)
        e = BETA * c ** ALPHA * np.exp(rng.normal(0, 0.1, c.size))
        fit = fit_power_law(c, e, confidence=0.9)
        hits += fit.alpha_ci[0] <= ALPHA <= fit.alpha_ci[1]
    assert 0.84 <= hits / trials <= 0.96


def test_pareto_frontier_bins_and_strict():
    c = np.array([10, 11, 100, 105, 1000, 10000])
    e = np.array([0.5, 0.4, 0.6, 0.3, 0.35, 0.2])
    idx = pareto_frontier(c, e, bins_per_decade=1)
    assert idx.tolist() == [1, 3, 4, 5]
    strict = pareto_frontier(c, e, bins_per_decade=1, strict=True)
    assert strict.tolist() == [1, 3, 5]  # 1000 (0.35) is beaten by cheaper 105 (0.3)


def test_bad_inputs():
    with pytest.raises(InputError, match="at least 3"):
        fit_power_law([1, 10], [0.5, 0.4])
    with pytest.raises(InputError, match="non-positive"):
        fit_power_law([1, 10, 100], [0.5, 0.0, 0.3])


def test_csv_and_cli(tmp_path):
    compute, error, _, _ = _runs(seed=2)
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "gmacs_per_sample", "samples_seen", "zeroshot/digits/top1"])
        for i, (c, e) in enumerate(zip(compute, error)):
            w.writerow([f"r{i}", 0.5, c / 0.5, 1 - e])
    c2, e2 = load_results_csv(path, accuracy_column="zeroshot/digits/top1")
    assert np.allclose(c2, compute) and np.allclose(e2, error)
    with pytest.raises(InputError, match="error column"):
        load_results_csv(path)
    out = tmp_path / "fit"
    rc = main(["scaling", "fit", str(path), "--out", str(out), "--bins-per-decade", "6",
               "--accuracy-column", "zeroshot/digits/top1"])
    assert rc == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["alpha_ci"][0] <= ALPHA <= doc["alpha_ci"][1]
    assert doc["n_points"] == 24 and doc["n_runs"] == 48
    assert (out / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot(tmp_path):
    compute, error, _, _ = _runs()
    fit = fit_scaling(compute, error, bins_per_decade=6)
    p = plot_fit(fit, tmp_path / "x" / "fit.png")
    assert p == str(tmp_path / "x" / "fit.png") and os.path.getsize(p) > 1000


def test_cli_without_action(capsys):
    assert main(["scaling"]) == 2
    assert "choose an action" in capsys.readouterr().err
