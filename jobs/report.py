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
import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
        """in == out + Σ rejected, when the summary has all three."""
        s = self.summary or {}
        rej = self.rejected_total
        if not isinstance(s.get("in"), (int, float)) or not isinstance(s.get("out"), (int, float)) or rej is None:
            return None
        return int(s["in"]) == int(s["out"]) + rej


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


def _decorate(ax, title: str, xlabel: str, ylabel: str, legend: str | None, *, xlog: bool = True,
              ylog: bool = False, percent: bool = False) -> None:
    """The axis dressing every line plot shares: scales, labels, title, grid, legend."""
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    if percent:
        ax.set_ylim(0, 101)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(**GRID)
    if legend:
        ax.legend(loc=legend, frameon=False)


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
    _decorate(ax, "Entry counts sorted, before and after balancing",
              "entry rank (1 = most matched entry, log scale)", "texts containing the entry (log scale)",
              "upper right", ylog=True)
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
              "share of all matches held by the top-k entries (%)", "upper left", percent=True)
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
    kept = [max(r["kept"], 0.8) for r in top]  # a 0 would vanish on the log axis
    ax.barh(y, counts, 0.8, color=BEFORE, alpha=0.45, label="count before balancing")
    ax.barh(y, kept, 0.5, color=AFTER, label="kept after balancing")
    for yy, r in zip(y, top):
        ax.annotate(f"{_fmt(r['count'])} → {_fmt(r['kept'])}", xy=(r["count"], yy), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7.5, color="#333333")
    ax.axvline(data.t, color=T_COLOR, ls="--", lw=1.2, label=f"t = {_fmt(data.t)} (cap min(count, t))")
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=8.5)
    ax.set_ylim(-0.7, n - 0.3)
    if n:  # room on the right for the "count → kept" labels (log axis: a factor, not a margin)
        ax.set_xlim(max(0.5, min(data.t, min(kept)) / 3), max(max(counts), data.t) * 12)
    ax.set_xlabel("texts containing the entry (log scale)")
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
        xs = np.unique(np.concatenate([np.geomspace(1, max(positive.max(), data.t) * 1.5, 400), [data.t]]))
        cov = 100 * coverage_curve(counts, xs)
        ax.plot(xs, cov, color="#55A868", lw=2, label="entries with count ≤ x")
        at_t = 100 * float(coverage_curve(counts, [data.t])[0])
        # the figure goes into the legend: an annotation next to the point can leave the axes
        ax.axvline(data.t, color=T_COLOR, ls="--", lw=1.2,
                   label=f"chosen t = {_fmt(data.t)}: {at_t:.1f}% of matched\nentries kept at 100%")
        ax.plot([data.t], [at_t], "o", color=T_COLOR)
    _decorate(ax, "Tail coverage: entries kept whole if t = x", "threshold x (log scale)",
              "share of matched entries (%)", "lower right", percent=True)
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
              f"kept share of {_fmt(matched)} matched texts (%)", "lower right", xlog=xlog, percent=True)
    return _png(fig)


# ----------------------------------------------------------------------------- HTML
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#222}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 8px}
.sub{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px 14px;min-width:128px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#666}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 14px}
th,td{border:1px solid #e1e4e8;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f0f2f5} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .na{color:#888}
figure{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px;margin:14px 0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#444;margin-top:6px}
code{background:#eef;padding:1px 4px;border-radius:3px;font-size:12px}
.scroll{max-height:520px;overflow:auto}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return _e(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}" if x.is_integer() else f"{x:,.1f}"
        return f"{x:.6g}"
    return _e(x)


def _kv_table(d: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """A flat key/value table; nested dicts are flattened as a.b, lists shown compactly."""
    rows = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict) and v:
            for k2, v2 in v.items():
                walk(f"{prefix}.{k2}" if prefix else str(k2), v2)
        elif isinstance(v, list):
            text = json.dumps(v)
            rows.append((prefix, _e(text if len(text) <= 160 else text[:157] + "…"), False))
        else:
            rows.append((prefix, _num(v), isinstance(v, (int, float)) and not isinstance(v, bool)))

    for k, v in d.items():
        if k not in skip:
            walk(str(k), v)
    body = "".join(f"<tr><th>{_e(k)}</th><td class='{'n' if n else ''}'>{v}</td></tr>" for k, v, n in rows)
    return f"<table>{body}</table>"


def _stages_html(stages: list[StageInfo]) -> str:
    if not stages:
        return "<p class='na'>No stage directories found.</p>"
    head = ("<tr><th>stage</th><th>_SUCCESS</th><th>in</th><th>out</th><th>rejected</th>"
            "<th>in = out + rejected</th><th>fingerprint</th></tr>")
    body = []
    for s in stages:
        sm = s.summary or {}
        done = "<span class='ok'>done</span>" if s.done else "<span class='bad'>missing</span>"
        rec = s.reconciles
        rec_html = ("<span class='na'>–</span>" if rec is None else
                    "<span class='ok'>✓</span>" if rec else "<span class='bad'>✗ does not add up</span>")
        fp = (s.success or {}).get("fingerprint", "")
        body.append(
            f"<tr><td>{_e(s.name)}</td><td>{done}</td><td class='n'>{_num(sm.get('in', '–'))}</td>"
            f"<td class='n'>{_num(sm.get('out', '–'))}</td>"
            f"<td class='n'>{_num(s.rejected_total) if s.rejected_total is not None else '–'}</td>"
            f"<td>{rec_html}</td><td><code>{_e(str(fp)[:16])}</code></td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _rejects_html(stages: list[StageInfo]) -> str:
    rows = []
    for s in stages:
        rej = (s.summary or {}).get("rejected")
        if not isinstance(rej, dict):
            continue
        stage_in = (s.summary or {}).get("in")
        for reason, n in sorted(rej.items(), key=lambda kv: -int(kv[1])):
            share = f"{100 * int(n) / stage_in:.2f}%" if isinstance(stage_in, (int, float)) and stage_in else "–"
            ex = s.reject_examples.get(reason, "")
            rows.append(f"<tr><td>{_e(s.name)}</td><td>{_e(reason)}</td><td class='n'>{_num(int(n))}</td>"
                        f"<td class='n'>{share}</td><td>{_e(_short(ex, 90))}</td></tr>")
    if not rows:
        return "<p class='na'>No stage reported rejected rows.</p>"
    return ("<table><tr><th>stage</th><th>reason</th><th>rows</th><th>share of stage input</th>"
            "<th>example detail</th></tr>" + "".join(rows) + "</table>")


def _sources_html(sources: list[dict[str, Any]]) -> str:
    cols = ["source", "entries", "matched_entries", "head_entries", "tail_entries", "matches", "kept",
            "kept_share", "tail_coverage"]
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
    body = []
    for r in sources:
        cells = []
        for c in cols:
            v = r[c]
            if c in ("kept_share", "tail_coverage"):
                cells.append(f"<td class='n'>{100 * v:.1f}%</td>")
            elif c == "source":
                cells.append(f"<td>{_e(v)}</td>")
            else:
                cells.append(f"<td class='n'>{_num(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _top_html(top: list[dict[str, Any]]) -> str:
    body = "".join(
        f"<tr><td class='n'>{i}</td><td>{_e(r['entry'])}</td><td>{_e(r['source'])}</td>"
        f"<td class='n'>{_num(r['count'])}</td><td class='n'>{_num(r['kept'])}</td>"
        f"<td class='n'>{_num(r['cap'])}</td><td class='n'>{100 * r['kept_fraction']:.2f}%</td></tr>"
        for i, r in enumerate(top, 1))
    return ("<div class='scroll'><table><tr><th>#</th><th>entry</th><th>source</th><th>count</th>"
            "<th>kept</th><th>cap min(count, t)</th><th>kept / count</th></tr>" + body + "</table></div>")


def _after_download_html(after: dict[str, Any] | None) -> str:
    """``balance.after: download``: the draw over the images that arrived, against the counts of
    the matched pool (what balancing before download would have used)."""
    if not after:
        return ""
    f = after["figures"]
    body = "".join(
        f"<tr><td>{_e(r['entry'])}</td><td class='n'>{_num(r['count_matched'])}</td>"
        f"<td class='n'>{_num(r['count_downloaded'])}</td><td class='n'>{_num(r['kept'])}</td></tr>"
        for r in after["top"])
    return (f"<h2>Balanced after download</h2><p>t = {_num(f['t'])}: {_num(f['kept'])} of {_num(f['survivors'])} "
            f"images that downloaded and passed dedup kept ({'all, drawn per epoch in training' if f['online'] else 'one draw'}); "
            f"head entries {_num(f['head_entries_matched'])} counted over the matched pool, "
            f"{_num(f['head_entries_downloaded'])} over the images that arrived.</p>"
            "<table><tr><th>entry</th><th>texts matched</th><th>images arrived</th><th>kept</th></tr>"
            f"{body}</table>")


def _card(k: str, v: str) -> str:
    return f"<div class='card'><div class='v'>{v}</div><div class='k'>{_e(k)}</div></div>"


def render_html(data: RunData, summary: dict[str, Any], plots: list[tuple[str, str, str]]) -> str:
    """The single page: key figures, stages, rejects, balance summary, plots, tables."""
    b = data.balance
    ht = summary["head_tail"]
    cards = [
        _card("pool texts", _fmt(b["pool"]) if isinstance(b.get("pool"), (int, float)) else "–"),
        _card("matched texts", _fmt(data.matched_texts)),
        _card("t", _fmt(data.t)),
        _card("expected kept", _fmt(b["expected_kept"]) if isinstance(b.get("expected_kept"), (int, float)) else "–"),
        _card("kept texts", _fmt(b["kept"]) if isinstance(b.get("kept"), (int, float)) else "–"),
        _card("head / tail entries", f"{_fmt(ht['head_entries'])} / {_fmt(ht['tail_entries'])}"),
        _card("tail coverage", f"{100 * summary['tail_coverage']:.1f}%"),
        _card("matches in top 1% entries", f"{100 * summary['top_1pct_share']:.1f}%"),
    ]
    # Every stage's summary in pipeline order; the stages not run yet are announced.
    blocks = []
    present = {s.name: s for s in data.stages}
    for stage in STAGES:
        name = stage.name
        st = present.get(name)
        if name == balance.STAGE.name:
            continue  # its own section above
        if st is None or (st.summary is None and not st.done):
            blocks.append(f"<h3>{_e(name)}</h3><p class='na'>Not run yet — "
                          f"<code>metacurate {_e(name)} --config run.yaml</code> produces it.</p>")
        elif st.summary is None:
            blocks.append(f"<h3>{_e(name)}</h3><p class='na'>Done (_SUCCESS present) but no summary.</p>")
        else:
            blocks.append(f"<h3>{_e(name)}</h3>" + _kv_table(st.summary, skip=("stage",)))
    figs = "".join(
        f"<figure id='{_e(name)}'><img src='{_e(fn)}' alt='{_e(cap)}'><figcaption>{_e(cap)}</figcaption></figure>"
        for name, fn, cap in plots)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>metacurate report — {_e(data.run)}</title><style>{CSS}</style></head>
<body><main>
<h1>Distribution report</h1>
<div class="sub">run <code>{_e(data.run)}</code> · generated {now} · {len(data.stats.count):,} counted entries</div>
<div class="cards">{''.join(cards)}</div>
<nav class="sub">plots: {' · '.join(f"<a href='#{_e(name)}'>{_e(name.replace('_', ' '))}</a>" for name, _, _ in plots)}</nav>
<h2>Stages</h2>{_stages_html(data.stages)}
<h2>Rejected rows by reason</h2>{_rejects_html(data.stages)}
<h2>Balance</h2>{_kv_table(b, skip=("stage",))}
<h2>Plots</h2>{figs}
<h2>Per-source breakdown</h2>{_sources_html(summary['sources'])}
<h2>Top-{len(summary['top_head'])} head entries</h2>{_top_html(summary['top_head'])}
{_after_download_html(data.after_download)}
<h2>Stage summaries</h2>{''.join(blocks)}
</main></body></html>
"""


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
         "The most matched entries: count before vs kept after balancing (log scale). Kept can exceed "
         "t because a text also survives through its rarer entries.",
         lambda: plot_top_head(data, summary["top_head"])),
        ("tail_coverage", "tail_coverage.png",
         "Share of matched entries kept at 100% (count ≤ t), as a function of the threshold and per source.",
         lambda: plot_tail_coverage(data, summary["sources"])),
    ]
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
