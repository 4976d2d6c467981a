"""Distribution report of a run directory: ``report/index.html`` + PNG plots + ``report/summary.json``.

Why it reads only aggregates: a run may hold billions of rows, but everything the report shows
comes from the per-entry tables of the count and balance stages (≤ ~500k rows) and the small
``_summary.json`` / ``_SUCCESS`` / t-sweep files of the stages. Reject *examples* are taken from
the first batch of the first reject files only (bounded). The run may be local or ``s3://``: every
read and write goes through the run's storage. Plotting uses matplotlib's Agg canvas through
``matplotlib.figure.Figure`` (no pyplot global state, no display needed).
"""
from __future__ import annotations

import datetime as _dt
import html
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import pages
from curation.errors import InputError
from curation.rundir import SUMMARY, RunDir, StageDir
from curation.stats import (
    EntryStats,
    coverage_curve,
    cumulative_share,
    distribution_summary,
    sorted_counts,
)
from curation.storage import Storage, join
from jobs.stages import STAGES, balance, count, metadata, shard
from jobs.stages.base import Stage

log = logging.getLogger(__name__)

REJECT_EXAMPLE_ROWS = 2000  # rows read from the first reject files to show one example per reason
REJECT_EXAMPLE_FILES = 3


@dataclass
class StageInfo:
    """What a stage directory says about itself (all optional: a stage may be half-written)."""

    name: str
    success: dict[str, Any] | None = None  # parsed _SUCCESS (or {"raw": text}); None: not done
    summary: dict[str, Any] | None = None
    reject_examples: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.success is not None

    @property
    def rejected_total(self) -> int | None:
        if not self.summary or not isinstance(self.summary.get("rejected"), dict):
            return None
        return int(sum(int(v) for v in self.summary["rejected"].values()))

    @property
    def reconciles(self) -> bool | None:
        """in == out + Σ rejected. Checked on the summary's numbers when it has all three (a file
        edited since must not pass on its old flag), else the ``reconciled`` flag every stage
        writes; None when the summary says neither."""
        s = self.summary or {}
        rej = self.rejected_total
        numbers_ = all(isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool) for k in ("in", "out"))
        if numbers_ and rej is not None:
            return int(s["in"]) == int(s["out"]) + rej
        flag = s.get("reconciled")
        return flag if isinstance(flag, bool) else None


@dataclass
class RunData:
    """Everything the report and the inspector read from a run directory."""

    run: str
    stats: EntryStats
    t: float
    balance: dict[str, Any]
    sweep: dict[str, Any] | None
    stages: list[StageInfo]
    metadata_entries: dict[str, int] | None
    after_download: dict[str, Any] | None = None  # balance.after: download: figures and top entries

    @property
    def matched_texts(self) -> int:
        m = self.balance.get("matched")
        if isinstance(m, (int, float)) and m > 0:
            return int(m)
        from jobs.stages import match as match_stage

        match = next((s for s in self.stages if s.name == match_stage.STAGE.name and s.summary), None)
        return int(match.summary.get("out", 0)) if match else 0

    def summary(self, top_k: int = 50) -> dict[str, Any]:
        return distribution_summary(self.stats, self.t, self.sweep, self.matched_texts,
                                    self.metadata_entries, top_k=top_k)


# ----------------------------------------------------------------------------- reading
def _require(d: StageDir, url: str, stage: Stage) -> str:
    if not d.storage.exists(url):
        raise InputError(
            f"{url} is missing: the report needs the '{stage.name}' stage's output; run "
            f"`metacurate {stage.name} --config run.yaml` (or `metacurate run`) on this run directory first"
        )
    return url


def _read_table(url: str, columns: list[str], storage: Storage, stage: Stage) -> pa.Table:
    """A parquet file or a folder of part files, only the named columns (missing -> InputError)."""
    files = storage.list_files(url, ".parquet")
    if not files:
        raise InputError(f"{url} holds no parquet files; re-run the '{stage.name}' stage")
    tables = []
    for f in files:
        with storage.parquet_file(f) as pf:
            names = set(pf.schema_arrow.names)
            missing = [c for c in columns if c not in names]
            if missing:
                raise InputError(f"{f} lacks column(s) {missing} (has {sorted(names)}); re-run the "
                                 f"'{stage.name}' stage")
            tables.append(pf.read(columns=columns))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _schema_names(url: str, storage: Storage, stage: Stage) -> set[str]:
    """Column names of the first parquet file at ``url`` (a file or a folder of parts)."""
    files = storage.list_files(url, ".parquet")
    if not files:
        raise InputError(f"{url} holds no parquet files; re-run the '{stage.name}' stage")
    with storage.parquet_file(files[0]) as pf:
        return set(pf.schema_arrow.names)


def _reject_examples(d: StageDir) -> dict[str, str]:
    """First detail seen per reason, from a bounded prefix of the stage's reject files."""
    storage = d.storage
    if not d.rejects_url or not storage.exists(d.rejects_url):
        return {}
    examples: dict[str, str] = {}
    try:
        files = storage.list_files(d.rejects_url, ".parquet")[:REJECT_EXAMPLE_FILES]
    except InputError:
        return {}
    for f in files:
        try:
            with storage.parquet_file(f) as pf:
                cols = [c for c in ("reason", "detail") if c in pf.schema_arrow.names]
                if "reason" not in cols:
                    continue
                for batch in pf.iter_batches(batch_size=REJECT_EXAMPLE_ROWS, columns=cols):
                    reasons = batch.column("reason").to_pylist()
                    details = batch.column("detail").to_pylist() if "detail" in cols else [""] * len(reasons)
                    for r, detail in zip(reasons, details):
                        if r is not None and r not in examples:
                            examples[r] = "" if detail is None else str(detail)
                    break  # one batch per file: bounded
        except Exception as exc:  # a broken reject file must not break the report
            log.warning("could not read reject examples from %s: %s", f, exc)
    return examples


def as_run(run: RunDir | str) -> RunDir:
    """A run directory from a RunDir or a path/URL (storage then from the environment)."""
    return run if isinstance(run, RunDir) else RunDir(run)


def read_stages(run: RunDir | str) -> list[StageInfo]:
    """Every registered stage whose folder exists, with its _SUCCESS and summary, in pipeline order."""
    run = as_run(run)
    if not run.exists():
        raise InputError(f"run directory {run.url} does not exist; pass the RUN directory a stage wrote to")
    stages = []
    for stage in STAGES:
        d = run.stage(stage.name, stage.dir_name())
        if not run.storage.exists(d.url):
            continue
        stages.append(StageInfo(name=stage.name, success=d.success(), summary=d.summary(),
                                reject_examples=_reject_examples(d)))
    return stages


def load_run(run: RunDir | str) -> RunData:
    """Read the aggregates of a run; InputError names any missing file and the stage to run."""
    run = as_run(run)
    storage = run.storage
    stages = read_stages(run)
    count_dir, balance_dir = run.stage(count.STAGE.name), run.stage(balance.STAGE.name)
    counts_url = _require(count_dir, count.counts_url(count_dir), count.STAGE)
    kept_url = _require(balance_dir, balance.kept_counts_url(balance_dir), balance.STAGE)
    bal_summary = balance_dir.summary()
    if bal_summary is None:
        _require(balance_dir, balance_dir.path(SUMMARY), balance.STAGE)
        raise InputError(f"{balance_dir.path(SUMMARY)} is not a readable summary; re-run the balance stage")
    has_source = "source" in _schema_names(counts_url, storage, count.STAGE)
    cols = ["entry_id", "entry", "count"] + (["source"] if has_source else [])
    counts = _read_table(counts_url, cols, storage, count.STAGE)
    meta_dir = run.stage(metadata.STAGE.name)
    meta_url = metadata.entries_url(meta_dir)
    metadata_entries = None
    meta = None
    if storage.exists(meta_url):
        meta = _read_table(meta_url, ["entry_id", "source"], storage, metadata.STAGE)
        metadata_entries = {("unknown" if v["values"] is None else v["values"]): int(v["counts"])
                            for v in pc.value_counts(meta.column("source")).to_pylist()}
    if has_source:
        source = pc.fill_null(counts.column("source").cast(pa.string()), "unknown")
    elif meta is not None:
        idx = pc.index_in(counts.column("entry_id").cast(pa.int64()),
                          value_set=meta.column("entry_id").cast(pa.int64()))
        source = pc.fill_null(pc.take(meta.column("source").cast(pa.string()), idx), "unknown")
    else:
        raise InputError(
            f"{counts_url} has no 'source' column and {meta_url} is absent, so the per-source "
            f"breakdown cannot be made; re-run the count stage (it writes entry_id, entry, source, count)"
        )
    kept = _read_table(kept_url, ["entry_id", "kept"], storage, balance.STAGE)
    stats = EntryStats.build(
        counts.column("entry_id").to_numpy(zero_copy_only=False),
        pc.fill_null(counts.column("entry"), "").to_numpy(zero_copy_only=False),
        source.to_numpy(zero_copy_only=False),
        counts.column("count").to_numpy(zero_copy_only=False),
        kept.column("entry_id").to_numpy(zero_copy_only=False),
        kept.column("kept").to_numpy(zero_copy_only=False),
    )
    sweep_url = balance.sweep_url(balance_dir)
    sweep = storage.read_json(sweep_url) if storage.exists(sweep_url) else None
    t = bal_summary.get("t")
    if t is None and sweep is not None:
        t = sweep.get("chosen_t")
    if not isinstance(t, (int, float)):
        raise InputError(f"{balance_dir.url}: the summary has no numeric 't'; re-run the balance stage")
    if sweep is not None and sweep.get("chosen_t") is None:
        sweep = dict(sweep, chosen_t=float(t))
    log.debug("run %s: %d entries, t=%s, %d stages", run.url, len(stats.count), t, len(stages))
    return RunData(run=run.url, stats=stats, t=float(t), balance=bal_summary, sweep=sweep, stages=stages,
                   metadata_entries=metadata_entries, after_download=_after_download(run, counts))


def _after_download(run: RunDir, counts: pa.Table, top: int = 20) -> dict[str, Any] | None:
    """With ``balance.after: download``: the shard stage's figures and, per head entry, its count
    among matched rows, among the images that arrived, and kept."""
    d = run.stage(shard.STAGE.name, shard.STAGE.dir_name())
    url = d.path(shard.AFTER_DOWNLOAD)
    summary = d.summary() or {}
    if not run.storage.exists(url) or "balance_after_download" not in summary:
        return None
    t = run.storage.read_parquet(url).sort_by([("count_matched", "descending"), ("entry_id", "ascending")])
    names = dict(zip(counts.column("entry_id").to_pylist(), counts.column("entry").to_pylist()))
    rows = [{"entry": names.get(r["entry_id"], str(r["entry_id"])), **r} for r in t.slice(0, top).to_pylist()]
    return {"figures": summary["balance_after_download"], "top": rows}


# ----------------------------------------------------------------------------- plots
BEFORE = "#4C72B0"
AFTER = "#DD8452"
T_COLOR = "#C44E52"
GRID = dict(which="major", alpha=0.3, linewidth=0.6)


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(n: float) -> str:
    """1234567 → '1.23M': short labels on bars and annotations."""
    n = float(n)
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


def _count_labels(axis) -> None:
    """Tick labels as people read counts (1, 20, 1k, 2.5M) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt(v)))


def _log_axis(ax, which: str, lo: float, hi: float) -> None:
    """A log axis spanning the data: limits just outside [lo, hi] (no empty decade beyond the
    largest value), 1-2-5 ticks when the data span three decades or less (so a short axis still
    has several labels), readable labels."""
    from matplotlib.ticker import LogLocator, NullFormatter

    lo, hi = max(float(lo), 1e-9), max(float(hi), float(lo), 1e-9)
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo / 1.3, hi * 1.3)
    subs = (1.0, 2.0, 5.0) if hi / lo <= 1000 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_minor_formatter(NullFormatter())
    _count_labels(axis)


def _count_axis(ax, which: str, lo: float, hi: float, log_ratio: float = 30.0) -> bool:
    """Fit an axis of counts to the data: log when the values span more than ``log_ratio``×, else
    linear from 0 (a bar's length is then its count). Returns whether the axis is log."""
    lo, hi = max(float(lo), 0.5), max(float(hi), 1.0)
    if hi / lo > log_ratio:
        _log_axis(ax, which, lo, hi)
        return True
    (ax.set_xlim if which == "x" else ax.set_ylim)(0, hi * 1.06)
    _count_labels(ax.xaxis if which == "x" else ax.yaxis)
    return False


def _decorate(ax, title: str, xlabel: str, ylabel: str, legend: str | None, *,
              xrange: tuple[float, float] | None = None, yrange: tuple[float, float] | None = None,
              percent: bool = False) -> None:
    """The axis dressing every line plot shares: log axes fitted to ``xrange`` / ``yrange``
    (None: linear), labels, title, grid, legend."""
    if xrange is not None:
        _log_axis(ax, "x", *xrange)
    if yrange is not None:
        _log_axis(ax, "y", *yrange)
    if percent:
        ax.set_ylim(0, 101)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(**GRID)
    if legend:
        ax.legend(loc=legend, frameon=True, framealpha=0.9, edgecolor="none")


def _log_ranks(n: int, points: int = 3000) -> np.ndarray:
    """0-based indices spaced evenly on a log axis: a monotone curve looks the same, far lighter."""
    if n <= points:
        return np.arange(n)
    return np.unique(np.geomspace(1, n, points).astype(np.int64) - 1)


def plot_counts_sorted(data: RunData) -> bytes:
    before = sorted_counts(data.stats.count)
    after = sorted_counts(data.stats.kept)
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    if len(before):
        i = _log_ranks(len(before))
        ax.plot(i + 1, before[i], color=BEFORE, lw=3, label=f"before balancing ({len(before):,} matched entries)")
    if len(after):
        j = _log_ranks(len(after))
        ax.plot(j + 1, after[j], color=AFTER, lw=1.6, label=f"after balancing ({len(after):,} entries kept)")
    ax.axhline(data.t, color=T_COLOR, ls="--", lw=1.3, label=f"t = {_fmt(data.t)}")
    n = max(len(before), len(after), 1)
    values = np.concatenate([before, after, [data.t]])
    _decorate(ax, "Entry counts sorted, before and after balancing",
              "entry rank (1 = most matched entry, log scale)", "texts containing the entry (log scale)",
              "upper right", xrange=(1, n), yrange=(values.min(), values.max()))
    return _png(fig)


def plot_cumulative_share(data: RunData) -> bytes:
    before = cumulative_share(data.stats.count)
    after = cumulative_share(data.stats.kept)
    head = int((data.stats.count > data.t).sum())
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    # The head-boundary figures go into the legend labels: annotations would cross the curves.
    for share, color, what in ((before, BEFORE, "before balancing"), (after, AFTER, "after balancing")):
        if not len(share):
            continue
        i = _log_ranks(len(share))
        label = what
        if 0 < head <= len(share):
            label += f" — top {head:,} hold {100 * share[head - 1]:.1f}%"
            ax.plot([head], [100 * share[head - 1]], "o", color=color, ms=5)
        ax.plot(i + 1, 100 * share[i], color=color, lw=2, label=label)
    if 0 < head < len(before):
        ax.axvline(head, color=T_COLOR, ls="--", lw=1.2, label=f"{head:,} head entries (count > t = {_fmt(data.t)})")
    _decorate(ax, "Cumulative share of matches held by the most frequent entries",
              "top-k entries, ranked by matches (k, log scale)",
              "share of all matches held by the top-k entries (%)", "upper left",
              xrange=(1, max(len(before), len(after), 2)), percent=True)
    return _png(fig)


def _bar_slots(ax, n: int, minimum: int = 3) -> None:
    """Keep horizontal bars slim and centred when there are only one or two sources."""
    pad = max(0.0, (minimum - n) / 2)
    ax.set_ylim(-0.6 - pad, n - 0.4 + pad)


def _hbar_labels(ax, ys, values, fmt: Callable[[float], str] = _fmt) -> None:
    for y, v in zip(ys, values):
        ax.annotate(fmt(v), xy=(v, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)


def plot_sources(data: RunData, sources: list[dict[str, Any]]) -> bytes:
    names = [s["source"] for s in sources][::-1]  # largest on top
    rows = sources[::-1]
    y = np.arange(len(names))
    h = 0.38
    fig = _figure(12, 1.2 + 0.55 * max(len(names), 3))
    axes = fig.subplots(1, 3, sharey=True)
    ax = axes[0]
    tot = [r["entries"] for r in rows]
    mat = [r["matched_entries"] for r in rows]
    ax.barh(y + h / 2, tot, h, color="#B0B0B0", label="entries")
    ax.barh(y - h / 2, mat, h, color=BEFORE, label="matched (count > 0)")
    _hbar_labels(ax, y + h / 2, tot)
    _hbar_labels(ax, y - h / 2, mat)
    ax.set_title("Entries per source")
    ax.set_yticks(y, names)
    ax = axes[1]
    m = [r["matches"] for r in rows]
    k = [r["kept"] for r in rows]
    ax.barh(y + h / 2, m, h, color=BEFORE, label="matches before")
    ax.barh(y - h / 2, k, h, color=AFTER, label="kept after balancing")
    _hbar_labels(ax, y + h / 2, m)
    _hbar_labels(ax, y - h / 2, k)
    ax.set_title("Matches per source (entry-text pairs)")
    ax = axes[2]
    share = [100 * r["kept_share"] for r in rows]
    cov = [100 * r["tail_coverage"] for r in rows]
    ax.barh(y + h / 2, share, h, color=AFTER, label="matches kept (%)")
    ax.barh(y - h / 2, cov, h, color="#55A868", label="entries with count ≤ t (%)")
    _hbar_labels(ax, y + h / 2, share, lambda v: f"{v:.1f}%")
    _hbar_labels(ax, y - h / 2, cov, lambda v: f"{v:.1f}%")
    ax.set_title("Kept share per source")
    from matplotlib.ticker import FuncFormatter

    for i, ax in enumerate(axes):
        _bar_slots(ax, len(rows))
        ax.grid(axis="x", **GRID)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
        ax.margins(x=0.18)
        ax.tick_params(axis="y", length=0)
        if i < 2:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt(v)))
    axes[2].set_xlim(0, 122)
    axes[2].set_xticks(range(0, 101, 20))
    fig.suptitle(f"Per-source breakdown (t = {_fmt(data.t)})")
    return _png(fig)


def plot_top_head(data: RunData, top: list[dict[str, Any]]) -> bytes:
    n = len(top)
    fig = _figure(9, 1.6 + 0.24 * max(n, 5))
    ax = fig.add_subplot()
    if n == 0:
        ax.text(0.5, 0.5, f"No entry has count > t = {_fmt(data.t)}: balancing kept every matched text.",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    y = np.arange(n)[::-1]
    labels = [_short(r["entry"]) + f"  ({r['source']})" for r in top]
    counts = [r["count"] for r in top]
    lo = min(data.t, *(r["kept"] for r in top if r["kept"] > 0)) if any(r["kept"] > 0 for r in top) else data.t
    log = _count_axis(ax, "x", lo, max(max(counts), data.t))
    floor = lo / 1.3 if log else 0.0
    kept = [max(r["kept"], floor) for r in top]  # a 0 would vanish on a log axis: drawn at its edge
    ax.barh(y, counts, 0.8, color=BEFORE, alpha=0.45, label="count before balancing")
    ax.barh(y, kept, 0.5, color=AFTER, label="kept after balancing")
    # the "count -> kept" figures sit in a column right of the axes: inside, they would need room
    # that stretches the axis past the data
    for yy, r in zip(y, top):
        ax.annotate(f"{_fmt(r['count'])} → {_fmt(r['kept'])}", xy=(1.0, yy), xycoords=("axes fraction", "data"),
                    xytext=(6, 0), textcoords="offset points", va="center", fontsize=8, color="#333333")
    ax.axvline(data.t, color=T_COLOR, ls="--", lw=1.2, label=f"t = {_fmt(data.t)} (cap min(count, t))")
    ax.set_yticks(y, labels, fontsize=8.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("texts containing the entry" + (" (log scale)" if log else ""))
    ax.set_title(f"Top-{n} head entries (count > t): count before → kept after balancing")
    ax.grid(axis="x", **GRID)
    ax.tick_params(axis="y", length=0)
    ax.legend(loc="lower right", frameon=True, framealpha=0.9, fontsize=8.5)
    return _png(fig)


def _short(s: str, width: int = 32) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def plot_tail_coverage(data: RunData, sources: list[dict[str, Any]]) -> bytes:
    counts = data.stats.count
    positive = counts[counts > 0]
    fig = _figure(12, 4.8)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.5, 1])
    if len(positive):
        hi = max(float(positive.max()), data.t)
        xs = np.unique(np.concatenate([np.geomspace(1, hi * 1.3, 400), [data.t]]))
        cov = 100 * coverage_curve(counts, xs)
        ax.plot(xs, cov, color="#55A868", lw=2, label="entries with count ≤ x")
        at_t = 100 * float(coverage_curve(counts, [data.t])[0])
        # the figure goes into the legend: an annotation next to the point can leave the axes
        ax.axvline(data.t, color=T_COLOR, ls="--", lw=1.2,
                   label=f"chosen t = {_fmt(data.t)}: {at_t:.1f}% of matched\nentries kept at 100%")
        ax.plot([data.t], [at_t], "o", color=T_COLOR)
    _decorate(ax, "Tail coverage: entries kept whole if t = x", "threshold x (log scale)",
              "share of matched entries (%)", "lower right", percent=True,
              xrange=(1, max(float(positive.max()), data.t)) if len(positive) else None)
    rows = sources[::-1]
    y = np.arange(len(rows))
    cov_src = [100 * r["tail_coverage"] for r in rows]
    ax2.barh(y, cov_src, 0.6, color="#55A868")
    _hbar_labels(ax2, y, cov_src, lambda v: f"{v:.1f}%")
    ax2.set_yticks(y, [r["source"] for r in rows])
    _bar_slots(ax2, len(rows))
    ax2.set_xlim(0, 122)
    ax2.set_xticks(range(0, 101, 20))
    ax2.set_xlabel("matched entries with count ≤ t (%)")
    ax2.set_title("Tail coverage per source")
    ax2.grid(axis="x", **GRID)
    ax2.tick_params(axis="y", length=0)
    return _png(fig)


def plot_kept_vs_t(data: RunData, curve: dict[str, Any]) -> bytes:
    t = np.asarray(curve["t"], dtype=float)
    frac = 100 * np.asarray(curve["kept_fraction"], dtype=float)
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    ax.plot(t, frac, "-o", color=BEFORE, lw=2, ms=3.5, label="expected kept fraction Σ p_keep / matched")
    chosen = curve.get("chosen_t")
    matched = data.matched_texts
    if chosen is not None and len(t):
        y = float(np.interp(chosen, t, frac))
        ax.axvline(chosen, color=T_COLOR, ls="--", lw=1.2, label=f"chosen t = {_fmt(chosen)}")
        ax.plot([chosen], [y], "o", color=T_COLOR, ms=7)
        ax.annotate(f"{y:.1f}% expected", xy=(chosen, y), xytext=(10, -16), textcoords="offset points",
                    fontsize=9, color=T_COLOR)
        actual = data.balance.get("kept")
        if isinstance(actual, (int, float)) and matched:
            ax.plot([chosen], [100 * actual / matched], "D", color=AFTER, ms=6,
                    label=f"actual kept {100 * actual / matched:.1f}% ({_fmt(actual)} texts)")
    positive = t[t > 0]
    xlog = bool(len(positive) and positive.max() / positive.min() > 20)
    _decorate(ax, "Kept fraction vs t", "t (log scale)" if xlog else "t",
              f"kept share of {_fmt(matched)} matched texts (%)", "lower right", percent=True,
              xrange=(positive.min(), positive.max()) if xlog else None)
    if not xlog:
        _count_labels(ax.xaxis)
    return _png(fig)


def plot_languages(per: dict[str, dict[str, Any]]) -> bytes:
    """MetaCLIP 2 worldwide: each language's share of the matched and of the kept texts, and its
    head / tail entries under its own t."""
    langs = sorted(per, key=lambda k: -per[k].get("rows_in", 0))
    rows_in = np.array([per[k].get("rows_in", 0) for k in langs], dtype=float)
    rows_kept = np.array([per[k].get("rows_kept", 0) for k in langs], dtype=float)
    share_in = 100 * rows_in / max(rows_in.sum(), 1)
    share_kept = 100 * rows_kept / max(rows_kept.sum(), 1)
    fig = _figure(12, 1.6 + 0.5 * max(len(langs), 3))
    ax1, ax2 = fig.subplots(1, 2)
    y = np.arange(len(langs))
    ax1.barh(y - 0.2, share_in, 0.4, color=BEFORE, label="matched (before balancing)")
    ax1.barh(y + 0.2, share_kept, 0.4, color=AFTER, label="kept (after)")
    for i in range(len(langs)):
        ax1.annotate(f"{share_in[i]:.1f}%", (share_in[i], y[i] - 0.2), xytext=(3, 0), textcoords="offset points",
                     va="center", fontsize=8)
        ax1.annotate(f"{share_kept[i]:.1f}%", (share_kept[i], y[i] + 0.2), xytext=(3, 0), textcoords="offset points",
                     va="center", fontsize=8)
    ax1.set_yticks(y, [f"{k}  (t = {_fmt(per[k]['t'])})" for k in langs])
    ax1.invert_yaxis()
    ax1.set_xlim(0, max(share_in.max(initial=0), share_kept.max(initial=0)) * 1.18 + 1)
    ax1.set_xlabel("share of texts (%)")
    ax1.set_title("Texts per language, before and after balancing")
    ax1.legend(loc="lower right", fontsize=8, frameon=False)
    ax1.grid(axis="x", **GRID)
    head = np.array([per[k].get("head_entries", 0) for k in langs], dtype=float)
    matched = np.array([per[k].get("matched_entries", per[k].get("entries", 0)) for k in langs], dtype=float)
    tail = np.maximum(matched - head, 0)
    ax2.barh(y, tail, color=BEFORE, label="tail (count ≤ t: kept whole)")
    ax2.barh(y, head, left=tail, color=T_COLOR, label="head (count > t: sub-sampled)")
    for i in range(len(langs)):
        ax2.annotate(f"{int(head[i]):,} head / {int(tail[i]):,} tail", (tail[i] + head[i], y[i]), xytext=(3, 0),
                     textcoords="offset points", va="center", fontsize=8)
    ax2.set_yticks(y, langs)
    ax2.invert_yaxis()
    ax2.set_xlim(0, max((tail + head).max(initial=0), 1) * 1.45)
    ax2.set_xlabel("matched entries")
    ax2.set_title("Head and tail entries per language (each under its own t)")
    ax2.legend(loc="lower right", fontsize=8, frameon=False)
    ax2.grid(axis="x", **GRID)
    _count_labels(ax2.xaxis)
    return _png(fig)


# ----------------------------------------------------------------------------- summaries in words
#: How a stage-summary field reads: its label and its kind, in the order a page lists them. Kinds:
#: a unit (``rows``, ``texts``, ``images``, ``samples``: a number with that unit), ``number`` (a
#: plain number), ``s`` (seconds), ``bytes``, ``frac`` (a fraction, shown as %), ``num`` / ``text``
#: / ``bool`` / ``list``, ``skip`` (internals, or shown in a section of its own). A field not
#: listed here still shows, its key spelled out in words, before the times.
FIELDS: dict[str, tuple[str, str]] = {
    "stage": ("stage", "skip"),
    "in": ("rows in", "rows"),
    "out": ("rows out", "rows"),
    "rejected": ("rows rejected", "skip"),
    "reconciled": ("in = out + rejected", "bool"),
    "metadata_fingerprint": ("metadata fingerprint", "skip"),
    # metadata
    "entries": ("entries", "number"),
    "entries_per_lang": ("entries per language", "number"),
    "entries_per_source": ("entries per source", "number"),
    "lint_duplicates": ("duplicate entries (lint)", "number"),
    "lint_never_match": ("entries that can never match (lint)", "number"),
    # lid
    "enabled": ("enabled", "bool"),
    "languages": ("captions per language", "texts"),
    "metadata_languages": ("metadata languages", "list"),
    # match
    "n_entries": ("metadata entries", "number"),
    "rule": ("matching rule", "text"),
    "entries_never_match": ("entries this rule can never match", "number"),
    # count
    "entries_matched": ("entries matched", "number"),
    "entries_total": ("entries in the metadata", "number"),
    "entries_counted": ("entries counted", "number"),
    "max_count": ("largest entry count", "texts"),
    "occurrences": ("entry matches (entry–text pairs)", "number"),
    # balance
    "t": ("t (texts kept per entry, at most)", "num"),
    "target_size": ("target size", "texts"),
    "tail_p": ("tail share", "frac"),
    "seed": ("seed", "text"),
    "mode": ("mode", "text"),
    "after": ("balanced after the stage", "text"),
    "online": ("drawn anew every epoch", "bool"),
    "pool": ("pool texts", "texts"),
    "matched": ("matched texts", "texts"),
    "expected_kept": ("expected kept", "texts"),
    "kept": ("kept", "texts"),
    "head_entries": ("head entries (count > t)", "number"),
    "tail_entries": ("tail entries (count ≤ t)", "number"),
    "per_language": ("per language", "skip"),
    "lang_in": ("rows in per language", "rows"),
    "lang_kept": ("rows kept per language", "rows"),
    # download
    "bytes": ("downloaded", "bytes"),
    # dedup
    "k": ("Hamming distance k", "number"),
    "hamming_k": ("Hamming distance k", "number"),
    "max_colour_distance": ("largest colour difference of a copy (0-255)", "num"),
    "overlap_by_dataset": ("overlapping images per eval set", "images"),
    "overlap_pairs": ("overlap pairs", "number"),
    "phash_mode": ("pHash path", "text"),
    "unconfirmed_pairs": ("pHash pairs the colour check rejected", "number"),
    "eval_sets": ("eval images per set", "images"),
    # shard
    "samples_per_shard": ("samples per shard", "samples"),
    "shards": ("shards", "number"),
    "shards_written": ("shards written", "number"),
    "shards_skipped": ("shards already written (resumed run)", "number"),
    "balance_after_download": ("balanced after download", "skip"),
    # common: the times last
    "files_skipped": ("unreadable files skipped", "list"),
    "units": ("work units run", "number"),
    "seconds": ("wall time by part", "s"),
    "wall_seconds": ("wall time", "s"),
    "task_seconds": ("task time by phase", "skip"),
}
UNITS = ("rows", "texts", "images", "samples")
_ORDER = {k: i for i, k in enumerate(FIELDS)}

#: Parts of a stage's wall time and phases of its task time, in words.
PARTS = {"units": "running the work units", "duplicate_check": "duplicate-uid check", "worker_start": "worker start",
         "t_sweep": "t sweep", "uid": "uid"}

#: Fields a stage block leaves out: the Stages and Rejected tables already show them.
IN_STAGE_TABLE = ("stage", "in", "out", "rejected", "reconciled")


@dataclass
class Row:
    """One line of a summary in words: ``value`` is plain text (the page escapes it)."""

    label: str
    value: str
    numeric: bool = True
    sub: bool = False


def words(key: str) -> str:
    """A summary key spelled out: ``entries_per_lang`` -> ``entries per lang``."""
    return PARTS.get(key, str(key).replace("_", " "))


def _value(v: Any, kind: str) -> tuple[str, bool]:
    """``(text, numeric)`` of one scalar in a field of ``kind``."""
    if isinstance(v, bool) or kind == "bool":
        return ("yes" if v else "no"), False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if kind in UNITS:
            return f"{int(round(v)):,} {kind}", True
        if kind == "s":
            return pages.seconds(v), True
        if kind == "bytes":
            return pages.nbytes(v), True
        if kind == "frac":
            return pages.pct(v), True
        return html.unescape(pages.num(v)), True
    if isinstance(v, list):
        items = [str(x) for x in v]
        if not items:
            return "none", False
        text = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
        return text, False
    return str(v), False


def describe(summary: dict[str, Any], skip: tuple[str, ...] = ()) -> list[Row]:
    """A stage summary as labelled rows: names instead of keys, units, rounded numbers; a nested
    dict becomes sub-rows under its label; ``None`` and internals are left out."""
    rows: list[Row] = []
    times = _ORDER["files_skipped"]
    for key, v in sorted(summary.items(), key=lambda kv: _ORDER.get(kv[0], times - 0.5)):
        label, kind = FIELDS.get(key, (words(key), "auto"))
        if key in skip or kind == "skip" or v is None:
            continue
        if key == "seconds" and not isinstance(v, dict):
            label = "time"
        if isinstance(v, dict):
            items = [(k, x) for k, x in v.items() if x is not None]
            if not items:
                continue
            if all(not isinstance(x, (dict, list)) for _, x in items):
                rows.append(Row(label, "", False))
                for k, x in items:
                    text, numeric = _value(x, kind)
                    rows.append(Row(words(k), text, numeric, sub=True))
            continue  # deeper structures are internals of the stage; summary.json keeps them
        text, numeric = _value(v, kind)
        rows.append(Row(label, text, numeric))
    return rows


def phases(summary: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(phase, task seconds, share)`` of a stage's work units, largest first."""
    tasks = summary.get("task_seconds")
    if not isinstance(tasks, dict):
        return []
    vals = {k: float(v) for k, v in tasks.items() if isinstance(v, (int, float))}
    total = sum(vals.values())
    return [(words(k), v, v / total if total else 0.0) for k, v in sorted(vals.items(), key=lambda kv: -kv[1])]


def wall_time(summary: dict[str, Any] | None) -> float | None:
    """The stage's wall time: its own total, else the sum of its timed parts."""
    s = summary or {}
    if isinstance(s.get("wall_seconds"), (int, float)):
        return float(s["wall_seconds"])
    parts = s.get("seconds")
    if isinstance(parts, (int, float)) and not isinstance(parts, bool):
        return float(parts)
    if isinstance(parts, dict):
        vals = [float(v) for v in parts.values() if isinstance(v, (int, float))]
        return sum(vals) if vals else None
    return None


# ----------------------------------------------------------------------------- HTML
def _rows_html(rows: list[Row], element_id: str | None = None) -> str:
    return pages.kv_table([(r.label, pages.esc(r.value), r.numeric, r.sub) for r in rows],
                          element_id=element_id, empty="No figures recorded.")


def _phases_html(summary: dict[str, Any]) -> str:
    rows = phases(summary)
    if not rows:
        return ""
    total = sum(v for _, v, _ in rows)
    body = [[name, pages.seconds(v), pages.pct(share)] for name, v, share in rows]
    body.append(["all phases", pages.seconds(total), "100.0%"])
    return ("<div><h4 class='sub'>Time by phase (task time of the work units, summed over tasks)</h4>"
            + pages.table(["phase", "task time", "share"], body, numeric=[False, True, True]) + "</div>")


def _stages_html(stages: list[StageInfo]) -> str:
    rows = []
    for s in stages:
        sm = s.summary or {}
        done = "<span class='ok'>done</span>" if s.done else "<span class='bad'>not complete</span>"
        rec = s.reconciles
        rec_html = ("<span class='na'>–</span>" if rec is None else
                    "<span class='ok'>✓ yes</span>" if rec else "<span class='bad'>✗ does not add up</span>")
        fp = (s.success or {}).get("fingerprint", "")
        rows.append([pages.esc(s.name), done, pages.num(sm.get("in")), pages.num(sm.get("out")),
                     pages.num(s.rejected_total), rec_html, pages.esc(pages.seconds(wall_time(sm))),
                     f"<code>{pages.esc(str(fp)[:12])}</code>" if fp else "<span class='na'>–</span>"])
    return pages.table(["stage", "status", "rows in", "rows out", "rows rejected", "in = out + rejected",
                        "wall time", "fingerprint"], rows, raw=True, element_id="stages",
                       numeric=[False, False, True, True, True, False, True, False],
                       empty="No stage directories found.")


def _rejects_html(stages: list[StageInfo]) -> str:
    rows = []
    for s in stages:
        rej = (s.summary or {}).get("rejected")
        if not isinstance(rej, dict):
            continue
        stage_in = (s.summary or {}).get("in")
        for reason, n in sorted(rej.items(), key=lambda kv: -int(kv[1])):
            share = pages.pct(int(n) / stage_in, 2) if isinstance(stage_in, (int, float)) and stage_in else "–"
            rows.append([pages.esc(s.name), f"<code>{pages.esc(reason)}</code>", pages.num(int(n)), share,
                         pages.esc(_short(round_decimals(s.reject_examples.get(reason, "")), 90))])
    return pages.table(["stage", "reason", "rows", "share of stage input", "example detail"], rows, raw=True,
                       numeric=[False, False, True, True, False], element_id="rejects",
                       empty="No stage reported rejected rows.")


def round_decimals(text: str) -> str:
    """``p_keep=0.7142857142857143`` -> ``p_keep=0.7143``: a detail is read, not parsed."""
    return re.sub(r"\d+\.\d{5,}", lambda m: f"{float(m.group()):.4g}", text)


def _balance_html(data: RunData) -> str:
    b = data.balance
    rows = describe(b, skip=IN_STAGE_TABLE + ("lang_in", "lang_kept"))
    matched = data.matched_texts
    if isinstance(b.get("kept"), (int, float)) and matched:
        at = next((i for i, r in enumerate(rows) if r.label == "kept"), len(rows) - 1)
        rows.insert(at + 1, Row("kept share of matched texts", pages.pct(b["kept"] / matched, 2)))
    parts = [_rows_html(rows, element_id="balance")]
    per = b.get("per_language")
    if isinstance(per, dict) and per:
        parts.append("<div><h4 class='sub'>Per language (each language's t keeps the reference "
                     "language's tail share)</h4>" + _per_language_html(per) + "</div>")
    parts.append(_phases_html(b))
    return "<div class='row'>" + "".join(parts) + "</div>"


PER_LANGUAGE = (("t", "t", "num"), ("tail_proportion", "tail share", "frac"), ("entries", "entries", "number"),
                ("matched_entries", "matched entries", "number"), ("head_entries", "head entries", "number"),
                ("matches", "matches", "number"), ("rows_in", "rows in", "number"),
                ("rows_kept", "rows kept", "number"))


def _per_language_html(per: dict[str, dict[str, Any]]) -> str:
    known = [(k, label, kind) for k, label, kind in PER_LANGUAGE if any(k in v for v in per.values())]
    rows = []
    for lang, v in sorted(per.items()):
        cells = [lang]
        for k, _, kind in known:
            x = v.get(k)
            cells.append("–" if x is None else pages.pct(x) if kind == "frac" else html.unescape(pages.num(x)))
        if "rows_in" in v and "rows_kept" in v and v["rows_in"]:
            cells.append(pages.pct(v["rows_kept"] / v["rows_in"]))
        else:
            cells.append("–")
        rows.append(cells)
    heads = ["language"] + [label for _, label, _ in known] + ["kept share"]
    return pages.table(heads, rows, numeric=[False] + [True] * (len(heads) - 1), element_id="per-language")


def _sources_html(sources: list[dict[str, Any]]) -> str:
    rows = [[r["source"], r["entries"], r["matched_entries"], r["head_entries"], r["tail_entries"], r["matches"],
             r["kept"], pages.pct(r["kept_share"]), pages.pct(r["tail_coverage"])] for r in sources]
    return pages.table(["source", "entries", "matched entries", "head entries", "tail entries", "matches",
                        "kept matches", "kept share", "tail coverage"], rows,
                       numeric=[False] + [True] * 8, element_id="sources-table")


def _top_html(top: list[dict[str, Any]]) -> str:
    rows = [[i, r["entry"], r["source"], r["count"], r["kept"], r["cap"], pages.pct(r["kept_fraction"])]
            for i, r in enumerate(top, 1)]
    return "<div class='scroll'>" + pages.table(
        ["#", "entry", "source", "texts (count)", "kept", "cap min(count, t)", "kept / count"], rows,
        numeric=[True, False, False, True, True, True, True], element_id="top-head-table",
        empty="No entry has count > t: balancing kept every matched text.") + "</div>"


def _after_download_html(after: dict[str, Any] | None) -> str:
    """``balance.after: download``: the draw over the images that arrived, against the counts of
    the matched pool (what balancing before download would have used)."""
    if not after:
        return ""
    f = after["figures"]
    how = "all of them, drawn anew every epoch in training" if f.get("online") else "one draw"
    rows = [[r["entry"], r["count_matched"], r["count_downloaded"], r["kept"]] for r in after["top"]]
    return (f"<h2>Balanced after download</h2><p>t = {pages.num(f['t'])}: {pages.num(f['kept'])} of "
            f"{pages.num(f['survivors'])} images that downloaded and passed dedup kept ({how}); head entries: "
            f"{pages.num(f['head_entries_matched'])} counted over the matched pool, "
            f"{pages.num(f['head_entries_downloaded'])} over the images that arrived.</p>"
            + pages.table(["entry", "texts matched", "images arrived", "kept"], rows,
                          numeric=[False, True, True, True]))


def _stage_blocks(data: RunData) -> str:
    """Every stage's own figures in pipeline order; stages not run yet (or optional and off) are
    announced with the command that runs them."""
    blocks = []
    present = {s.name: s for s in data.stages}
    for stage in STAGES:
        name = stage.name
        st = present.get(name)
        if name == balance.STAGE.name:
            continue  # its own section above
        head = f"<h3>{pages.esc(name)}</h3>"
        if st is None or (st.summary is None and not st.done):
            # a stage that overrides `active` is switched on by its config (lid): off is no gap
            optional = type(stage).active.__func__ is not Stage.active.__func__
            blocks.append(head + (f"<p class='na'>Not run (an optional stage: {pages.esc(stage.help)}).</p>"
                                  if optional else
                                  f"<p class='na'>Not run yet — <code>metacurate {pages.esc(name)} --config "
                                  f"run.yaml</code> produces it.</p>"))
        elif st.summary is None:
            blocks.append(head + "<p class='na'>Done (_SUCCESS present) but no summary.</p>")
        else:
            blocks.append(head + "<div class='row'>" + _rows_html(describe(st.summary, skip=IN_STAGE_TABLE))
                          + _phases_html(st.summary) + "</div>")
    return "".join(blocks)


def render_html(data: RunData, summary: dict[str, Any], plots: list[tuple[str, str, str]]) -> str:
    """The single page: key figures, stages, rejects, balance summary, plots, tables."""
    b = data.balance
    ht = summary["head_tail"]
    multilingual = len(b.get("per_language") or {}) > 1

    def big(v: Any) -> str:
        """Exact below a million (3,000 reads better than 3k), short above (2.81M)."""
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return "–"
        return f"{round(v):,}" if abs(v) < 1e6 else _fmt(v)

    cards = [
        pages.card("pool texts", big(b.get("pool"))),
        pages.card("matched texts", big(data.matched_texts)),
        pages.card("t (per entry)", big(data.t) if float(data.t).is_integer() else _fmt(data.t)),
        pages.card("expected kept", big(b.get("expected_kept"))),
        pages.card("kept texts", big(b.get("kept"))),
        # with a t per language, the balance stage's own figures (each entry under its language's t)
        pages.card("head / tail entries" + (" (t per language)" if multilingual else ""),
                   f"{big(b.get('head_entries'))} / {big(b.get('tail_entries'))}" if multilingual else
                   f"{big(ht['head_entries'])} / {big(ht['tail_entries'])}"),
        pages.card("tail coverage", pages.pct(summary["tail_coverage"])),
        pages.card("matches in top 1% entries", pages.pct(summary["top_1pct_share"])),
    ]
    figs = "".join(pages.figure(fn, cap, element_id=name) for name, fn, cap in plots)
    nav = " · ".join(f"<a href='#{pages.esc(name)}'>{pages.esc(name.replace('_', ' '))}</a>" for name, _, _ in plots)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (f"<div class='cards'>{''.join(cards)}</div><nav class='sub'>plots: {nav}</nav>"
            f"<h2>Stages</h2>{_stages_html(data.stages)}"
            f"<h2>Rejected rows by reason</h2>{_rejects_html(data.stages)}"
            f"<h2>Balance</h2>{_balance_html(data)}"
            f"<h2>Plots</h2>{figs}"
            f"<h2>Per-source breakdown</h2>{_sources_html(summary['sources'])}"
            f"<h2>Top-{len(summary['top_head'])} head entries</h2>{_top_html(summary['top_head'])}"
            f"{_after_download_html(data.after_download)}"
            f"<h2>Stage summaries</h2>{_stage_blocks(data)}")
    subtitle = (f"run <code>{pages.esc(data.run)}</code> · generated {now} · "
                f"{len(data.stats.count):,} counted entries")
    return pages.page(f"metacurate report — {data.run}", subtitle, body, heading="Distribution report")


def write_report(run: RunDir | str, out: str | None = None) -> str:
    """Write index.html, the PNGs and summary.json under ``out`` (default RUN/report); return index path."""
    run = as_run(run)
    data = load_run(run)
    storage = run.storage
    out = (out or run.path("report")).rstrip("/")
    summary = data.summary()
    plots: list[tuple[str, str, str, Callable[[], bytes]]] = [
        ("counts_sorted", "counts_sorted.png",
         "Texts per entry by rank (log-log), before and after balancing (each curve sorted on its own); "
         "the dashed line is t. Head entries (count > t) are sub-sampled with probability t/count — a kept "
         "count above t means texts also survived through their rarer entries; the tail (count ≤ t) is kept whole.",
         lambda: plot_counts_sorted(data)),
        ("cumulative_share", "cumulative_share.png",
         "Share of all entry-text matches held by the k most frequent entries.",
         lambda: plot_cumulative_share(data)),
        ("sources", "sources.png",
         "Per metadata source: entries and matched entries, matches before vs kept after, kept shares.",
         lambda: plot_sources(data, summary["sources"])),
        ("top_head", "top_head.png",
         "The most matched entries: count before vs kept after balancing. Kept can exceed t because a "
         "text also survives through its rarer entries.",
         lambda: plot_top_head(data, summary["top_head"])),
        ("tail_coverage", "tail_coverage.png",
         "Share of matched entries kept at 100% (count ≤ t), as a function of the threshold and per source.",
         lambda: plot_tail_coverage(data, summary["sources"])),
    ]
    per_language = data.balance.get("per_language") or {}
    if len(per_language) > 1:
        plots.append(("languages", "languages.png",
                      "MetaCLIP 2 worldwide curation: each language's share of the texts before and after balancing "
                      "(English keeps t; every other language gets the t whose tail holds the same share of its "
                      "matches), and its head / tail entries under its own t.",
                      lambda: plot_languages(per_language)))
    if "kept_fraction_vs_t" in summary:
        plots.append(("kept_vs_t", "kept_vs_t.png",
                      "Expected kept fraction of the matched texts for each t of balance/t_sweep.json; "
                      "the chosen t is marked.",
                      lambda: plot_kept_vs_t(data, summary["kept_fraction_vs_t"])))
    else:
        log.warning("no t sweep in %s: the kept-fraction-vs-t plot is skipped", run.stage(balance.STAGE.name).url)
    written = []
    for name, fn, cap, make in plots:
        png = make()
        storage.write_bytes(join(out, fn), png)
        written.append((name, fn, cap))
        log.info("wrote %s (%d bytes)", fn, len(png))
    summary_doc = {
        "stage": "report",
        "run": data.run,
        "t": data.t,
        "balance": data.balance,
        "stages": [{"stage": s.name, "done": s.done, "summary": s.summary, "reconciles": s.reconciles}
                   for s in data.stages],
        "plots": [fn for _, fn, _ in written],
        **summary,
    }
    storage.write_json(join(out, "summary.json"), summary_doc)
    index = join(out, "index.html")
    storage.write_bytes(index, render_html(data, summary, written).encode("utf-8"))
    return index
