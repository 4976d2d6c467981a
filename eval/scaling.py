"""Scaling-law fits E = β·C^α across training runs.

C is training compute (GMACs per sample × samples seen), E an error (1 − accuracy). Runs that
were badly tuned should not drag the law, so the fit uses the compute-efficient frontier: the
compute axis is cut into log-spaced bins and each bin keeps its lowest-error run (optionally also
dropping runs beaten by a cheaper one, ``strict=True``). The law is a straight line in log-log,
log E = log β + α log C, fitted by ordinary least squares. Confidence intervals come from the OLS
covariance with Student-t quantiles (exact for Gaussian noise in log E) or, on request, from a
bootstrap over the frontier points.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from curation.errors import InputError
from curation.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class ScalingFit:
    alpha: float
    beta: float
    alpha_ci: tuple[float, float]
    beta_ci: tuple[float, float]
    confidence: float
    n_points: int
    r2: float
    ci_method: str
    compute: np.ndarray = field(repr=False)  # frontier points used in the fit
    error: np.ndarray = field(repr=False)
    all_compute: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    all_error: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def predict(self, compute: np.ndarray | float) -> np.ndarray:
        return self.beta * np.power(compute, self.alpha)

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "alpha_ci": list(self.alpha_ci),
                "beta_ci": list(self.beta_ci), "confidence": self.confidence,
                "n_points": self.n_points, "r2": self.r2, "ci_method": self.ci_method,
                "frontier": [{"compute": float(c), "error": float(e)}
                             for c, e in zip(self.compute, self.error)]}

    def summary(self) -> str:
        pct = int(round(self.confidence * 100))
        return (f"E = β·C^α on {self.n_points} frontier points: "
                f"α = {self.alpha:.4f} [{self.alpha_ci[0]:.4f}, {self.alpha_ci[1]:.4f}], "
                f"β = {self.beta:.4g} [{self.beta_ci[0]:.4g}, {self.beta_ci[1]:.4g}] "
                f"({pct}% CI, {self.ci_method}), R² = {self.r2:.4f}")


def _check(compute: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(compute, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    if c.shape != e.shape or c.ndim != 1:
        raise InputError("compute and error must be 1-D arrays of equal length")
    bad = ~(np.isfinite(c) & np.isfinite(e) & (c > 0) & (e > 0))
    if bad.any():
        raise InputError(f"{int(bad.sum())} points have non-positive or non-finite compute or "
                         "error; a power law needs C > 0 and E > 0 (an error of exactly 0 cannot "
                         "be fitted in log space)")
    return c, e


def pareto_frontier(compute: Sequence[float], error: Sequence[float],
                    bins_per_decade: float = 4.0, strict: bool = False) -> np.ndarray:
    """Indices (sorted by compute) of the lowest-error point in each log10-compute bin.

    With ``strict`` also drop points whose error is not below every cheaper frontier point.
    """
    c, e = _check(np.asarray(compute), np.asarray(error))
    if bins_per_decade <= 0:
        raise InputError("bins_per_decade must be positive")
    bin_id = np.floor(np.log10(c) * bins_per_decade + 1e-9).astype(np.int64)
    best: dict[int, int] = {}
    for i, b in enumerate(bin_id):
        j = best.get(int(b))
        if j is None or e[i] < e[j] or (e[i] == e[j] and c[i] < c[j]):
            best[int(b)] = i
    idx = np.asarray(sorted(best.values(), key=lambda i: c[i]), dtype=np.int64)
    if strict:
        keep, running = [], math.inf
        for i in idx:
            if e[i] < running:
                keep.append(i)
                running = e[i]
        idx = np.asarray(keep, dtype=np.int64)
    return idx


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(coef [intercept, slope], covariance, R²) of y = a + b x."""
    X = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = len(x) - 2
    sigma2 = float(resid @ resid) / dof if dof > 0 else float("nan")
    cov = sigma2 * np.linalg.inv(X.T @ X)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return coef, cov, r2


def fit_power_law(compute: Sequence[float], error: Sequence[float], confidence: float = 0.95,
                  bootstrap: int = 0, seed: int = 0) -> ScalingFit:
    """Fit E = β·C^α to exactly these points (no frontier selection)."""
    from scipy import stats

    c, e = _check(np.asarray(compute), np.asarray(error))
    if len(c) < 3:
        raise InputError(f"need at least 3 points with distinct compute to fit a power law with "
                         f"confidence intervals, got {len(c)}")
    x, y = np.log(c), np.log(e)
    if np.ptp(x) == 0:
        raise InputError("all points have the same compute; a slope cannot be fitted")
    coef, cov, r2 = _ols(x, y)
    log_beta, alpha = float(coef[0]), float(coef[1])
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            s = rng.integers(0, len(x), len(x))
            if np.ptp(x[s]) == 0:
                continue
            draws.append(_ols(x[s], y[s])[0])
        d = np.asarray(draws)
        lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
        a_ci = tuple(float(v) for v in np.percentile(d[:, 1], [lo, hi]))
        lb_ci = tuple(float(v) for v in np.percentile(d[:, 0], [lo, hi]))
        method = f"bootstrap ({len(d)} resamples)"
    else:
        t = float(stats.t.ppf((1 + confidence) / 2, len(x) - 2))
        se = np.sqrt(np.diag(cov))
        a_ci = (alpha - t * se[1], alpha + t * se[1])
        lb_ci = (log_beta - t * se[0], log_beta + t * se[0])
        method = "OLS t-interval"
    return ScalingFit(alpha=alpha, beta=math.exp(log_beta), alpha_ci=(a_ci[0], a_ci[1]),
                      beta_ci=(math.exp(lb_ci[0]), math.exp(lb_ci[1])), confidence=confidence,
                      n_points=len(x), r2=r2, ci_method=method, compute=c, error=e,
                      all_compute=c, all_error=e)


def fit_scaling(compute: Sequence[float], error: Sequence[float], bins_per_decade: float = 4.0,
                strict: bool = False, confidence: float = 0.95, bootstrap: int = 0,
                seed: int = 0) -> ScalingFit:
    """Select the Pareto frontier, then fit the power law on it."""
    c, e = _check(np.asarray(compute), np.asarray(error))
    idx = pareto_frontier(c, e, bins_per_decade, strict)
    fit = fit_power_law(c[idx], e[idx], confidence, bootstrap, seed)
    fit.all_compute, fit.all_error = c, e
    return fit


# --------------------------------------------------------------------------- I/O
def load_results_csv(path: str | os.PathLike, error_column: str | None = None,
                     accuracy_column: str | None = None,
                     storage: Storage | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(compute, error) from a CSV with one row per run.

    Compute: a ``compute`` column (GMACs), else ``gmacs_per_sample`` × ``samples_seen``.
    Error: ``error_column`` (default ``error``), or ``1 − accuracy_column`` (e.g. a metric name
    written by ``metacurate scaling collect`` such as ``zeroshot/digits/top1``).
    """
    storage = storage or Storage.from_env()
    p = os.fspath(path)
    if not storage.isfile(p):
        raise InputError(f"results CSV {p} does not exist")
    text = storage.read_bytes(p).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        raise InputError(f"{p} has no rows")
    cols = set(rows[0])
    if "compute" in cols:
        compute = [float(r["compute"]) for r in rows]
    elif {"gmacs_per_sample", "samples_seen"} <= cols:
        compute = [float(r["gmacs_per_sample"]) * float(r["samples_seen"]) for r in rows]
    else:
        raise InputError(f"{p}: need a 'compute' column or both 'gmacs_per_sample' and "
                         f"'samples_seen'; columns are {sorted(cols)}")
    if accuracy_column:
        if accuracy_column not in cols:
            raise InputError(f"{p}: no column {accuracy_column!r}; columns are {sorted(cols)}")
        error = [1.0 - float(r[accuracy_column]) for r in rows]
    else:
        col = error_column or "error"
        if col not in cols:
            raise InputError(f"{p}: no error column {col!r} (or pass an accuracy column); "
                             f"columns are {sorted(cols)}")
        error = [float(r[col]) for r in rows]
    return np.asarray(compute), np.asarray(error)


def plot_fit(fit: ScalingFit, path: str | os.PathLike, title: str = "scaling law",
             storage: Storage | None = None) -> str:
    """Log-log plot: all runs, the frontier, and the fitted law (a PNG); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ax.scatter(fit.all_compute, fit.all_error, s=18, color="0.65", label="runs")
    ax.scatter(fit.compute, fit.error, s=30, color="tab:blue", label="frontier (fitted)")
    lo, hi = float(fit.all_compute.min()), float(fit.all_compute.max())
    grid = np.logspace(math.log10(lo), math.log10(hi), 100)
    ax.plot(grid, fit.predict(grid), color="tab:red",
            label=f"E = {fit.beta:.3g}·C^{fit.alpha:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (GMACs)")
    ax.set_ylabel("error E")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = os.fspath(path)
    (storage or Storage.from_env()).write_bytes(out, buf.getvalue())
    return out
