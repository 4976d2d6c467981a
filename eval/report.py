"""Eval results: a JSON document with a stable schema, a terminal table, an HTML/PNG summary.

Schema ``metacurate.eval/1`` (keys only ever added, never renamed, within a major version)::

    {"schema": "metacurate.eval/1", "created_utc": ISO-8601, "checkpoint": str,
     "model": {"class", "image_size", "gmacs_per_sample", "embed_dim"},
     "samples_seen": int | null, "compute_gmacs": float | null,
     "zeroshot": {DATASET: {"n", "top1", "top5", "per_class", "class_counts", "mean_per_class",
                            "num_templates", ["overlap": {...}]}},
     "retrieval": {DATASET: {"n_images", "n_texts", "image_to_text": {"R@1", "R@5", "R@10"},
                             "text_to_image": {...}, "mean_recall", ["overlap": {...}]}},
     "linear_probe": {DATASET: {"top1", "best_C", "sweep", "n_train", "n_val", "n_test",
                                ["overlap": {...}]}},
     "clip_benchmark": [{"dataset", "model", "pretrained", "task", "metrics", "language"}, ...],
     "metrics": {"zeroshot/DATASET/top1": float, ...}}

``metrics`` flattens every headline number under a path-like name, so runs compare by key and
``metacurate scaling collect`` can turn many result files into one CSV.

``clip_benchmark`` holds one record per zero-shot / retrieval evaluation in clip_benchmark's own
result schema (``task`` ``zeroshot_classification`` with ``acc1``, ``acc5``,
``mean_per_class_recall``; ``zeroshot_retrieval`` with ``image_retrieval_recall@k`` and
``text_retrieval_recall@k``; a dataset read from clip_benchmark's layout is named ``wds/NAME`` as
clip_benchmark names it). :func:`write_clip_benchmark` writes each as the file clip_benchmark would
(``{dataset}_{pretrained}_{model}_{language}_{task}.json``), so ``clip_benchmark build`` tabulates
them beside its own runs.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import textwrap
from typing import Any, Iterable

import numpy as np

from curation.pages import card, esc, figure, note, num, page, pct, table
from curation.storage import Storage, join

SCHEMA = "metacurate.eval/1"


def new_results(checkpoint: str, model: Any, samples_seen: int | None = None,
                embed_dim: int | None = None, compute_gmacs: float | None = None) -> dict:
    """An empty results document. Training compute is ``compute_gmacs`` when the trainer
    recorded it (it accounts for FLIP masking), else GMACs/sample × samples seen."""
    gmacs = getattr(model, "gmacs_per_sample", None)
    gmacs = float(gmacs) if gmacs is not None else None
    if samples_seen is None:
        seen = getattr(model, "samples_seen", None)
        samples_seen = int(seen) if seen is not None else None
        if compute_gmacs is None:  # the recorded compute belongs with the recorded samples only
            compute_gmacs = getattr(model, "compute_gmacs", None)
    if compute_gmacs is None and gmacs is not None and samples_seen:
        compute_gmacs = gmacs * samples_seen
    return {
        "schema": SCHEMA,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "model": {"class": type(model).__name__, "image_size": int(model.image_size),
                  "gmacs_per_sample": gmacs, "embed_dim": embed_dim},
        "samples_seen": samples_seen,
        "compute_gmacs": float(compute_gmacs) if compute_gmacs is not None else None,
        "zeroshot": {}, "retrieval": {}, "linear_probe": {},
    }


def clip_benchmark_record(dataset: Any, task: str, metrics: dict, model: str, checkpoint: str,
                          language: str = "en") -> dict:
    """One evaluation in clip_benchmark's result schema (``dataset`` named as clip_benchmark names
    it: ``wds/NAME`` for a dataset in its WebDataset layout)."""
    name = dataset.name
    if (getattr(dataset, "meta", None) or {}).get("source") == "clip_benchmark":
        name = f"wds/{name}"
    return {"dataset": name, "model": model, "pretrained": str(checkpoint), "task": task,
            "metrics": dict(metrics), "language": language}


def write_clip_benchmark(results: dict, out_dir: str | os.PathLike, storage: Storage | None = None) -> list[str]:
    """Each ``clip_benchmark`` record as its own JSON file, named by clip_benchmark's default
    output template; returns the paths written."""
    storage = storage or Storage.from_env()
    written = []
    for rec in results.get("clip_benchmark", []):
        dataset = rec["dataset"].replace("wds/", "", 1).replace("/", "_")
        pretrained = str(rec["pretrained"]).rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
        fname = f"{dataset}_{pretrained}_{rec['model']}_{rec['language']}_{rec['task']}.json"
        url = join(os.fspath(out_dir), fname.replace("/", "_"))
        storage.write_bytes(url, (json.dumps(rec) + "\n").encode("utf-8"))
        written.append(url)
    return written


def flatten_metrics(results: dict) -> dict[str, float]:
    """Headline numbers under stable path-like names."""
    out: dict[str, float] = {}
    for ds, r in results.get("zeroshot", {}).items():
        for k in ("top1", "top5", "mean_per_class"):
            out[f"zeroshot/{ds}/{k}"] = r[k]
        if r.get("overlap") and r["overlap"]["clean"]["top1"] is not None:
            out[f"zeroshot/{ds}/clean_top1"] = r["overlap"]["clean"]["top1"]
    for ds, r in results.get("retrieval", {}).items():
        for direction in ("image_to_text", "text_to_image"):
            for k, v in r[direction].items():
                out[f"retrieval/{ds}/{direction}/{k}"] = v
        out[f"retrieval/{ds}/mean_recall"] = r["mean_recall"]
    for ds, r in results.get("linear_probe", {}).items():
        out[f"linear_probe/{ds}/top1"] = r["top1"]
        if r.get("overlap") and r["overlap"]["clean"]["top1"] is not None:
            out[f"linear_probe/{ds}/clean_top1"] = r["overlap"]["clean"]["top1"]
    return out


def write_results(results: dict, path: str | os.PathLike, storage: Storage | None = None) -> str:
    """Write the JSON atomically (local: temporary name, then rename; object stores: one PUT)
    with ``metrics`` filled in; returns the path written."""
    results["metrics"] = flatten_metrics(results)
    url = os.fspath(path)
    (storage or Storage.from_env()).write_bytes(
        url, (json.dumps(results, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return url


def format_table(results: dict) -> str:
    """A plain-text table of the headline numbers for the terminal."""
    rows: list[tuple[str, str, str, str]] = []
    for ds, r in results.get("zeroshot", {}).items():
        extra = f"n={r['n']}, {r['num_templates']} templates"
        rows.append(("zero-shot", ds, "top-1", f"{100 * r['top1']:.2f}%"))
        rows.append(("zero-shot", ds, "top-5", f"{100 * r['top5']:.2f}%"))
        rows.append(("zero-shot", ds, "mean per-class", f"{100 * r['mean_per_class']:.2f}%  ({extra})"))
        ov = r.get("overlap")
        if ov and ov["clean"]["top1"] is not None:
            rows.append(("zero-shot", ds, "top-1 w/o overlap",
                         f"{100 * ov['clean']['top1']:.2f}%  ({ov['n_overlapping']} overlapping removed)"))
    for ds, r in results.get("retrieval", {}).items():
        for direction, label in (("image_to_text", "image→text"), ("text_to_image", "text→image")):
            vals = "  ".join(f"{k} {100 * v:.2f}%" for k, v in r[direction].items())
            rows.append(("retrieval", ds, label, vals))
        rows.append(("retrieval", ds, "size", f"{r['n_images']} images, {r['n_texts']} captions"))
    for ds, r in results.get("linear_probe", {}).items():
        rows.append(("linear probe", ds, "top-1",
                     f"{100 * r['top1']:.2f}%  (C={r['best_C']:g}, test n={r['n_test']})"))
        ov = r.get("overlap")
        if ov and ov["clean"]["top1"] is not None:
            rows.append(("linear probe", ds, "top-1 w/o overlap", f"{100 * ov['clean']['top1']:.2f}%"))
    if not rows:
        return "(no evaluations run)"
    head = ("task", "dataset", "metric", "value")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    lines = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:<{widths[2]}}  {head[3]}"]
    lines.append("-" * (sum(widths) + 6 + max(len(r[3]) for r in rows)))
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def recall_chance(k: int, candidates: int, correct: float = 1.0) -> float:
    """Recall@K of a model that ranks the candidates at random: the chance that at least one of
    ``correct`` right answers is among K drawn from ``candidates`` (K / candidates for one)."""
    n, c = int(candidates), max(1, int(round(correct)))
    if n <= 0:
        return 0.0
    if k >= n - c + 1:
        return 1.0
    miss = 1.0
    for i in range(k):
        miss *= (n - c - i) / (n - i)
    return 1.0 - miss


def _k_of(name: str) -> int:
    """``"R@10"`` -> 10."""
    return int(str(name).split("@")[-1])


def retrieval_chance(r: dict) -> dict[str, dict[str, float]]:
    """Chance level of each recall in a retrieval result: image→text ranks all captions (an image's
    own captions are right), text→image ranks all images (one is right)."""
    n_img, n_txt = int(r.get("n_images") or 0), int(r.get("n_texts") or 0)
    per_image = n_txt / n_img if n_img else 1.0
    return {"image_to_text": {k: recall_chance(_k_of(k), n_txt, per_image) for k in r.get("image_to_text", {})},
            "text_to_image": {k: recall_chance(_k_of(k), n_img, 1.0) for k in r.get("text_to_image", {})}}


CHANCE = "#555555"
BLUE, ORANGE = "#4C72B0", "#DD8452"


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _percent_axis(ax, top: float) -> None:
    """A 0-based percentage axis up to a round value just above ``top`` (a fraction)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    hi = min(100.0, max(10.0, math.ceil(100 * top * 1.15 / 10) * 10))
    ax.set_ylim(0, hi)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}%"))
    ax.grid(axis="y", alpha=0.3, linewidth=0.6)


def _wrap_label(name: str, width: int = 14) -> str:
    """A class name on at most two lines, so long names neither overlap nor run off the plot."""
    text = textwrap.fill(str(name), width)
    lines = text.splitlines()
    return "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")


def plot_zeroshot(ds: str, r: dict) -> bytes:
    """Per-class top-1 accuracy with the chance level (1 / classes) and the overall top-1."""
    names = list(r["per_class"])
    acc = [float(r["per_class"][n]) for n in names]
    n = len(names)
    chance = 1.0 / n if n else 0.0
    many = n > 40  # too many to label: sorted accuracies show the spread instead
    fig = _figure(max(6.5, min(13.0, 1.5 + 0.42 * n)) if not many else 10.0, 4.2)
    ax = fig.add_subplot()
    if many:
        order = np.argsort(acc)[::-1]
        ax.bar(np.arange(n), [100 * acc[i] for i in order], 1.0, color=BLUE)
        ax.set_xlabel(f"{n} classes, sorted by accuracy")
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_xticks([])
    else:
        x = np.arange(n)
        ax.bar(x, [100 * a for a in acc], 0.7, color=BLUE)
        long = max((len(str(s)) for s in names), default=0)
        rotate = n > 12 or long > 10
        ax.set_xticks(x, [_wrap_label(s) if not rotate else str(s)[:24] for s in names],
                      rotation=45 if rotate else 0, ha="right" if rotate else "center",
                      rotation_mode="anchor", fontsize=8.5 if n > 20 else 9.5)
        ax.set_xlim(-0.6, n - 0.4)
    ax.axhline(100 * chance, color=CHANCE, ls="--", lw=1.2, label=f"chance: 1 / {n} classes = {100 * chance:.1f}%")
    ax.axhline(100 * r["top1"], color=ORANGE, lw=1.4, label=f"top-1 over all images: {100 * r['top1']:.1f}%")
    _percent_axis(ax, max(acc + [r["top1"], chance]))
    ax.set_ylabel("top-1 accuracy of the class")
    ax.set_title(f"Zero-shot per-class accuracy: {ds} ({r.get('n', sum(r.get('class_counts', {}).values())):,} images)")
    ax.legend(loc="upper right", fontsize=8.5, frameon=True, framealpha=0.9, edgecolor="none")
    return _png(fig)


def plot_retrieval(ds: str, r: dict) -> bytes:
    """Recall@K both ways, each bar with its chance level."""
    ks = list(r["image_to_text"])
    chance = retrieval_chance(r)
    fig = _figure(6.8, 4.0)
    ax = fig.add_subplot()
    width = 0.38
    x = np.arange(len(ks))
    tops = []
    for off, key, color, label in ((-width / 2, "image_to_text", BLUE, "image → text"),
                                   (width / 2, "text_to_image", ORANGE, "text → image")):
        vals = [float(r[key].get(k, 0.0)) for k in ks]
        bars = ax.bar(x + off, [100 * v for v in vals], width, color=color, label=label)
        # on a white ground: a label can sit on a chance dash of a short bar
        ax.bar_label(bars, [f"{100 * v:.0f}%" if v >= 0.1 else f"{100 * v:.1f}%" for v in vals],
                     fontsize=8, padding=2, zorder=4,
                     bbox=dict(facecolor="white", edgecolor="none", pad=0.6, alpha=0.85))
        for xi, k in zip(x, ks):  # a dash across each bar at the level random ranking reaches
            ax.hlines(100 * chance[key][k], xi + off - width / 2, xi + off + width / 2, colors=CHANCE,
                      linestyles="--", lw=1.3)
        tops += vals + list(chance[key].values())
    ax.plot([], [], color=CHANCE, ls="--", lw=1.3, label="chance (random ranking)")
    ax.set_xticks(x, [f"recall@{_k_of(k)}" for k in ks])
    _percent_axis(ax, max(tops or [0.1]))
    ax.set_ylabel("queries with a right answer in the top K")
    ax.set_title(f"Retrieval: {ds} ({r.get('n_images', 0):,} images, {r.get('n_texts', 0):,} captions)")
    ax.legend(loc="upper left", fontsize=8.5, frameon=True, framealpha=0.9, edgecolor="none")
    return _png(fig)


def _zeroshot_rows(results: dict) -> list[list[Any]]:
    rows = []
    for ds, r in results.get("zeroshot", {}).items():
        n_cls = len(r.get("per_class", {})) or None
        ov = r.get("overlap") or {}
        clean = (ov.get("clean") or {}).get("top1")
        rows.append([ds, r.get("n"), len(r.get("per_class", {})), r.get("num_templates"), pct(r["top1"]),
                     pct(r["top5"]), pct(r["mean_per_class"]),
                     pct(1 / n_cls) if n_cls else "–", pct(min(5, n_cls) / n_cls) if n_cls else "–",
                     f"{pct(clean)} ({num(ov.get('n_overlapping'))} removed)" if clean is not None else "–"])
    return rows


def _retrieval_rows(results: dict) -> list[list[Any]]:
    rows = []
    for ds, r in results.get("retrieval", {}).items():
        chance = retrieval_chance(r)
        clean = (r.get("overlap") or {}).get("clean") or {}
        for key, label, candidates in (("image_to_text", "image → text", r.get("n_texts")),
                                       ("text_to_image", "text → image", r.get("n_images"))):
            cells = " · ".join(f"R@{_k_of(k)} {pct(v)}" for k, v in r[key].items())
            ch = " · ".join(f"{pct(v)}" for v in chance[key].values())
            cl = " · ".join(f"{pct(v)}" for v in (clean.get(key) or {}).values()) or "–"
            rows.append([ds, label, candidates, cells, ch, cl])
        rows.append([ds, "mean recall", "", pct(r.get("mean_recall")), "", pct(clean.get("mean_recall"))])
    return rows


def write_summary(results: dict, out_dir: str | os.PathLike, storage: Storage | None = None) -> str:
    """``out_dir/index.html`` with the scores (and their chance levels) and one PNG per
    zero-shot/retrieval set; returns the page's path."""
    storage = storage or Storage.from_env()
    out = os.fspath(out_dir)
    figs: list[str] = []
    for ds, r in results.get("zeroshot", {}).items():
        fname = f"zeroshot_{_safe(ds)}.png"
        storage.write_bytes(join(out, fname), plot_zeroshot(ds, r))
        figs.append(figure(fname, f"Zero-shot {ds}: top-1 accuracy of each class; the dashed line is chance "
                                  f"(one class in {len(r['per_class'])}), the solid one the overall top-1.",
                           element_id=f"zeroshot-{_safe(ds)}"))
    for ds, r in results.get("retrieval", {}).items():
        fname = f"retrieval_{_safe(ds)}.png"
        storage.write_bytes(join(out, fname), plot_retrieval(ds, r))
        figs.append(figure(fname, f"Retrieval {ds}: recall@K both ways; each dash is what ranking at random "
                                  "reaches (K of the candidates, more for image → text when an image has "
                                  "several captions).", element_id=f"retrieval-{_safe(ds)}"))
    model = results.get("model", {})
    cards = [card("model", esc(model.get("class", "–"))), card("image size", num(model.get("image_size"))),
             card("GMACs per sample", num(model.get("gmacs_per_sample"))),
             card("samples seen", num(results.get("samples_seen"))),
             card("training compute (GMACs)", num(results.get("compute_gmacs")))]
    notes = ""
    for ds in results.get("collapsed") or []:
        why = ((results.get("diagnostics") or {}).get(ds) or {}).get("why", "")
        notes += note(f"<b>{esc(ds)}</b>: the model does not tell these images apart yet ({esc(why)}); its "
                      "scores there are at chance level.", warn=True)
    body = f"<div class='cards'>{''.join(cards)}</div>{notes}"
    if results.get("zeroshot"):
        body += "<h2>Zero-shot classification</h2>" + table(
            ["dataset", "images", "classes", "templates", "top-1", "top-5", "mean per class", "chance top-1",
             "chance top-5", "top-1 without overlap"], _zeroshot_rows(results),
            numeric=[False, True, True, True, True, True, True, True, True, True], element_id="zeroshot")
    if results.get("retrieval"):
        body += "<h2>Retrieval</h2>" + table(
            ["dataset", "direction", "candidates", "recall", "chance (same K)", "without overlap"],
            _retrieval_rows(results), numeric=[False, False, True, False, False, False], element_id="retrieval")
    if results.get("linear_probe"):
        lp = [[ds, pct(r["top1"]), num(r.get("best_C")), r.get("n_train"), r.get("n_val"), r.get("n_test"),
               pct(((r.get("overlap") or {}).get("clean") or {}).get("top1"))]
              for ds, r in results["linear_probe"].items()]
        body += "<h2>Linear probe</h2>" + table(
            ["dataset", "top-1", "C", "train images", "validation images", "test images", "top-1 without overlap"],
            lp, numeric=[False, True, True, True, True, True, True], element_id="linear-probe")
    if figs:
        body += "<h2>Plots</h2>" + "".join(figs)
    metrics = results.get("metrics") or flatten_metrics(results)
    body += ("<details><summary>Every metric under its stable name (as in results.json and "
             "<code>metacurate scaling collect</code>)</summary>"
             + table(["metric", "value"], [[k, v] for k, v in metrics.items()], numeric=[False, True],
                     element_id="metrics") + "</details>")
    subtitle = (f"checkpoint <code>{esc(results.get('checkpoint', ''))}</code> · evaluated "
                f"{esc(results.get('created_utc', ''))}")
    page_url = join(out, "index.html")
    storage.write_bytes(page_url, page(f"metacurate eval — {results.get('checkpoint', '')}", subtitle, body,
                                       heading="Evaluation").encode("utf-8"))
    return page_url


def collect_csv(json_paths: Iterable[str | os.PathLike], out_csv: str | os.PathLike,
                storage: Storage | None = None) -> str:
    """One CSV row per results JSON (checkpoint, compute columns, every flat metric); returns the CSV path."""
    storage = storage or Storage.from_env()
    rows, columns = [], ["checkpoint", "gmacs_per_sample", "samples_seen", "compute"]
    for p in json_paths:
        r = storage.read_json(os.fspath(p))
        if not isinstance(r, dict) or str(r.get("schema", "")).split("/")[0] != SCHEMA.split("/")[0]:
            raise ValueError(f"{p} is not a metacurate eval results file")
        flat = r.get("metrics") or flatten_metrics(r)
        row = {"checkpoint": r.get("checkpoint"),
               "gmacs_per_sample": r.get("model", {}).get("gmacs_per_sample"),
               "samples_seen": r.get("samples_seen"), "compute": r.get("compute_gmacs")}
        row.update(flat)
        for k in flat:
            if k not in columns:
                columns.append(k)
        rows.append(row)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=columns)
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    url = os.fspath(out_csv)
    storage.write_bytes(url, text.getvalue().encode("utf-8"))
    return url
