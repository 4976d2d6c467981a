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
import html
import io
import json
import os
from typing import Any, Iterable

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


def write_summary(results: dict, out_dir: str | os.PathLike, storage: Storage | None = None) -> str:
    """``out_dir/index.html`` with the metric table and one PNG per zero-shot/retrieval set;
    returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    storage = storage or Storage.from_env()
    out = os.fspath(out_dir)
    figs: list[tuple[str, str]] = []

    def save(fig, ax, task: str, ds: str, title: str) -> None:
        ax.set_ylim(0, 1)
        ax.set_title(title)
        fig.tight_layout()
        fname = f"{task}_{_safe(ds)}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        storage.write_bytes(join(out, fname), buf.getvalue())
        figs.append((f"{task} {ds}", fname))

    for ds, r in results.get("zeroshot", {}).items():
        names = list(r["per_class"])
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(names) + 1), 3), dpi=100)
        ax.bar(range(len(names)), [r["per_class"][n] for n in names], color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("top-1")
        save(fig, ax, "zeroshot", ds, f"zero-shot per-class accuracy: {ds}")
    for ds, r in results.get("retrieval", {}).items():
        ks = list(r["image_to_text"])
        fig, ax = plt.subplots(figsize=(4.5, 3), dpi=100)
        width = 0.38
        xs = range(len(ks))
        ax.bar([x - width / 2 for x in xs], [r["image_to_text"][k] for k in ks], width,
               label="image→text")
        ax.bar([x + width / 2 for x in xs], [r["text_to_image"][k] for k in ks], width,
               label="text→image")
        ax.set_xticks(list(xs), ks)
        ax.legend(fontsize=8)
        save(fig, ax, "retrieval", ds, f"retrieval recall: {ds}")
    metrics = results.get("metrics") or flatten_metrics(results)
    rows = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                     for k, v in metrics.items())
    imgs = "\n".join(f"<figure><img src='{html.escape(f)}' alt='{html.escape(t)}'>"
                     f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, f in figs)
    model = results.get("model", {})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>metacurate eval</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:2px 10px}}
figure{{display:inline-block;margin:8px}}</style></head><body>
<h1>Evaluation of {html.escape(str(results.get('checkpoint', '')))}</h1>
<p>model {html.escape(str(model.get('class')))}, image size {model.get('image_size')},
GMACs/sample {model.get('gmacs_per_sample')}, samples seen {results.get('samples_seen')};
{html.escape(str(results.get('created_utc', '')))}</p>
<table><tr><th>metric</th><th>value</th></tr>
{rows}
</table>
{imgs}
</body></html>
"""
    page_url = join(out, "index.html")
    storage.write_bytes(page_url, page.encode("utf-8"))
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
