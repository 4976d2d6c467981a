"""Train/test overlap audit: which training images are near-duplicates of evaluation images.

Why a page: contamination claims must be checkable. The page lists overlap counts per eval set at
the configured ``k``, sweeps ``k = 0..16`` (how sensitive the count is to the threshold), shows
found pairs side by side, and records which pHash path (exact / fast) produced the hashes.

Inputs are plain tables so the same code audits a run (its dedup hashes) or any existing shards:
``pool``: uid, phash:uint64, tar, key (where to fetch the image); ``evals``: dataset, key,
phash:uint64, source (``file:PATH`` / ``tar:URL#MEMBER`` / ``parquet:URL#ROW``).
"""
from __future__ import annotations

import base64
import io
import json
import logging
import tarfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.evalsets import hash_tar, load_eval_hashes
from curation.neardup import NearDupIndex
from curation.storage import Storage, join

log = logging.getLogger(__name__)
SWEEP_MAX_K = 16


def k_sweep(pool_hashes: np.ndarray, eval_hashes: np.ndarray, max_k: int = SWEEP_MAX_K
            ) -> tuple[list[int], list[int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pool images with an eval near-duplicate at each k (one search at ``max_k``, then counting)."""
    q, e, d = NearDupIndex(eval_hashes, max_k, expected_queries=max(len(pool_hashes), 1)).query(pool_hashes)
    best = np.full(len(pool_hashes), 99, dtype=np.int64)
    np.minimum.at(best, q, d)
    ks = list(range(max_k + 1))
    return ks, [int((best <= k).sum()) for k in ks], (q, e, d)


def _read_member(tar_url: str, member_key: str, storage: Storage) -> bytes | None:
    """Bytes of the first image member of sample ``member_key`` in a tar (audit thumbnails only)."""
    with storage.open(tar_url, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for m in tar:
            base = m.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if key == member_key and ext.lower() in ("jpg", "jpeg", "png", "webp"):
                return tar.extractfile(m).read()  # type: ignore[union-attr]
    return None


def _load_source(source: str, storage: Storage) -> bytes | None:
    """Image bytes of an eval image from its ``source`` (``file:`` / ``tar:`` / ``parquet:``)."""
    try:
        kind, rest = source.split(":", 1)
        if kind == "file":
            return storage.read_bytes(rest)
        if kind == "tar":
            url, member = rest.rsplit("#", 1)
            return _read_member(url, member.split(".")[0], storage)
        if kind == "parquet":
            url, row = rest.rsplit("#", 1)
            with storage.open(url, "rb") as f:
                t = pq.read_table(f)
            col = next(c for c in ("image", "jpg", "png", "bytes", "img") if c in t.column_names)
            v = t.column(col)[int(row)].as_py()
            return v["bytes"] if isinstance(v, dict) else v
    except Exception as exc:  # the audit must not die on one unreadable thumbnail
        log.warning("audit: cannot load %s: %s", source, exc)
    return None


def _thumb_b64(data: bytes | None, size: int = 128) -> str:
    if not data:
        return ""
    from PIL import Image
    try:
        im = Image.open(io.BytesIO(data))
        im.thumbnail((size, size))
        b = io.BytesIO()
        im.convert("RGB").save(b, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(b.getvalue()).decode()
    except Exception:
        return ""


def _sweep_plot(ks: list[int], counts: list[int], k: int, confirmed: int | None) -> bytes:
    """The k-sweep plot as PNG bytes (written by the caller through the run's storage)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.plot(ks, counts, marker="o", color="#4C72B0", label="pHash within k")
    if confirmed is not None:
        ax.scatter([k], [confirmed], color="#1a7f37", zorder=3, s=50, label=f"confirmed by the colour check at k = {k}")
    ax.axvline(k, color="#C44E52", linestyle="--", label=f"configured k = {k}")
    ax.set_xlabel("Hamming distance threshold k (bits of 64)")
    ax.set_ylabel("pool images with an\neval near-duplicate")
    # counts of images: a linear axis from 0, whole numbers only (a handful of pairs must not get
    # ticks at 0.5)
    ax.set_ylim(0, max([1, *counts]) * 1.12)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(min(ks) - 0.5, max(ks) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", frameon=True, framealpha=0.9, edgecolor="none")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pool_images(wanted: set[tuple[str, str]], storage: Storage) -> dict[tuple[str, str], bytes]:
    """Image bytes of ``(tar, key)`` samples, reading each tar once."""
    by_tar: dict[str, set[str]] = {}
    for tar, key in wanted:
        by_tar.setdefault(tar, set()).add(key)
    found: dict[tuple[str, str], bytes] = {}
    for tar, keys in by_tar.items():
        try:
            with storage.open(tar, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    if key in keys and ext.lower() in ("jpg", "jpeg", "png", "webp"):
                        found[(tar, key)] = tf.extractfile(m).read()  # type: ignore[union-attr]
        except Exception as exc:  # the audit must not die on one unreadable tar
            log.warning("audit: cannot read %s: %s", tar, exc)
    return found


def _truth_figures(found: set[str], truth: set[str]) -> dict[str, Any]:
    tp = len(found & truth)
    return {"known_copies": len(truth), "found": len(found), "true_positives": tp,
            "precision": tp / len(found) if found else None, "recall": tp / len(truth) if truth else None}


def write_audit(out_dir: str, pool: pa.Table, evals: pa.Table, storage: Storage, *, k: int = 8,
                phash_mode: str = "exact", max_colour_distance: float | None = None, max_pairs: int = 60,
                title: str = "Overlap audit", base: str | None = None,
                truth: set[str] | None = None) -> dict[str, Any]:
    """Write ``out_dir/index.html`` + ``k_sweep.png`` + ``audit.json``; return the summary dict.

    Every pHash pair within ``k`` is listed; with ``max_colour_distance`` each pair is checked a
    second time (the two images' 8x8 colour grids, as the dedup stage does) and only confirmed
    pairs count as overlap. ``truth``: pool uids known to be copies (the quickstart plants some):
    the page then states precision and recall of both rules. ``tar`` paths in ``pool`` are
    relative to ``base`` when given (a run directory). Every read and write goes through ``storage``."""
    from curation.phash import colour_distance, colour_signatures_bytes

    out_dir = out_dir.rstrip("/")
    storage.makedirs(out_dir)
    ph = pool.column("phash").to_numpy().astype(np.uint64) if len(pool) else np.zeros(0, np.uint64)
    eh = evals.column("phash").to_numpy().astype(np.uint64) if len(evals) else np.zeros(0, np.uint64)
    ks, counts, (q, e, d) = k_sweep(ph, eh)
    at_k = d <= k
    q, e, d = q[at_k], e[at_k], d[at_k]
    uids, tars, keys = (pool.column(c).to_pylist() for c in ("uid", "tar", "key"))
    ds, ekeys, srcs = (evals.column(c).to_pylist() for c in ("dataset", "key", "source"))
    ecolour = evals.column("colour").to_pylist() if "colour" in evals.column_names else [None] * len(evals)

    def tar_url(i: int) -> str:
        t = tars[i]
        return join(base, t) if base and t and "://" not in t and not t.startswith("/") else t

    images = _pool_images({(tar_url(int(i)), keys[int(i)]) for i in set(q.tolist())}, storage)
    colour = np.full(len(q), np.nan)
    if max_colour_distance is not None:
        for n, (i, j) in enumerate(zip(q.tolist(), e.tolist())):
            data, sig = images.get((tar_url(i), keys[i])), ecolour[j]
            if data is not None and sig is not None:
                a, errs = colour_signatures_bytes([data])
                if errs[0] is None:
                    colour[n] = float(colour_distance(a, np.frombuffer(sig, dtype=np.uint8))[0])
    confirmed = np.isnan(colour) | (colour <= max_colour_distance) if max_colour_distance is not None \
        else np.ones(len(q), bool)
    datasets = sorted(set(ds))
    found_all = {uids[int(i)] for i in q}
    found_confirmed = {uids[int(i)] for i, c in zip(q, confirmed) if c}
    summary = {
        "k": k, "phash_mode": phash_mode, "max_colour_distance": max_colour_distance,
        "pool_images": len(pool), "eval_images": len(evals),
        "overlapping_pool_images": len(found_confirmed), "pairs": int(confirmed.sum()),
        "phash_pairs": int(len(q)), "phash_pool_images": len(found_all),
        "per_dataset": {n: {"eval_images": ds.count(n),
                            "pairs": int(sum(1 for j, c in zip(e, confirmed) if c and ds[j] == n)),
                            "pool_images": len({int(i) for i, j, c in zip(q, e, confirmed) if c and ds[j] == n}),
                            "phash_pairs": int(sum(1 for j in e if ds[j] == n))} for n in datasets},
        "k_sweep": {"k": ks, "overlapping_pool_images": counts},
    }
    if truth is not None:
        summary["truth"] = {"phash": _truth_figures(found_all, truth),
                            "confirmed": _truth_figures(found_confirmed, truth)}
    storage.write_bytes(join(out_dir, "k_sweep.png"),
                        _sweep_plot(ks, counts, k, len(found_confirmed) if max_colour_distance is not None else None))
    storage.write_bytes(join(out_dir, "audit.json"), json.dumps(summary, indent=1).encode())
    storage.write_bytes(join(out_dir, "index.html"),
                        _audit_page(summary, q, e, d, colour, confirmed, uids, keys, ds, ekeys, srcs, images,
                                    tar_url, storage, max_pairs, title).encode("utf-8"))
    log.info("audit: %d pool images overlap eval sets at k=%d (%d pHash pairs, %d confirmed) -> %s/index.html",
             summary["overlapping_pool_images"], k, len(q), summary["pairs"], out_dir)
    return summary


def _audit_page(summary, q, e, d, colour, confirmed, uids, keys, ds, ekeys, srcs, images, tar_url, storage,
                max_pairs: int, title: str) -> str:
    from curation import pages

    k, mcd = summary["k"], summary["max_colour_distance"]
    rule = (f"A pool image counts as a copy when its pHash is within Hamming distance <b>{k}</b> of an eval "
            f"image's" + (f" and the two images' 8x8 colour grids differ by at most <b>{pages.num(mcd)}</b> "
                          "(mean over channels, 0-255): pHash sees only brightness, so same-layout images of "
                          "other colours would collide" if mcd is not None else "") + ".")
    cards = [pages.card("pool images", pages.num(summary["pool_images"])),
             pages.card("eval images", pages.num(summary["eval_images"])),
             pages.card("pool images overlapping", f"<span id='overlap-total'>"
                                                   f"{pages.num(summary['overlapping_pool_images'])}</span>"),
             pages.card(f"pHash pairs within k = {k}", pages.num(summary["phash_pairs"]))]
    if mcd is not None:
        cards.append(pages.card("confirmed by colour", pages.num(summary["pairs"])))
    truth = ""
    if "truth" in summary:
        t = summary["truth"]
        truth = "<h2>Against the known copies</h2>" + pages.table(
            ["rule", "known copies", "flagged", "of them copies", "precision", "recall"],
            [[name, t[key]["known_copies"], t[key]["found"], t[key]["true_positives"],
              pages.pct(t[key]["precision"]), pages.pct(t[key]["recall"])]
             for name, key in (("pHash only", "phash"), ("pHash + colour check", "confirmed"))],
            numeric=[False, True, True, True, False, False])
    per_set = pages.table(
        ["eval set", "eval images", "pool images overlapping", "confirmed pairs", "pHash pairs"],
        [[n, v["eval_images"], v["pool_images"], v["pairs"], v["phash_pairs"]] for n, v in summary["per_dataset"].items()],
        numeric=[False, True, True, True, True], element_id="per-dataset", empty="No evaluation images.")
    sweep = pages.table(["k", *[str(x) for x in summary["k_sweep"]["k"]]],
                        [["pool images (pHash)", *summary["k_sweep"]["overlapping_pool_images"]]],
                        numeric=[False] + [True] * len(summary["k_sweep"]["k"]))
    order = np.lexsort((e, q, d))[:max_pairs]
    rows = []

    def thumb(src: str, what: str) -> str:
        # no <img> without a picture: a broken-image icon would look like a rendering fault
        inner = f"<img src='{src}' alt='{what}'>" if src else f"<span class='na'>{what} not readable</span>"
        return f"<div class='thumb'>{inner}</div>"

    for n in order:
        i, j = int(q[n]), int(e[n])
        left = _thumb_b64(images.get((tar_url(i), keys[i])))
        right = _thumb_b64(_load_source(srcs[j], storage) if srcs[j] else None)
        verdict = ("<span class='ok'>copy</span>" if confirmed[n] else
                   "<span class='na'>not a copy (colours differ)</span>")
        rows.append([f"{thumb(left, 'pool image')}{pages.esc(uids[i])}",
                     f"{thumb(right, 'eval image')}{pages.esc(ds[j])} / {pages.esc(ekeys[j])}",
                     str(int(d[n])), "–" if np.isnan(colour[n]) else f"{colour[n]:.1f}", verdict])
    pairs = pages.table(["pool image", "eval image", "Hamming distance", "colour difference", "verdict"], rows,
                        raw=True, element_id="pairs", numeric=[False, False, True, True, False],
                        empty=f"No overlaps found: no pool image has an eval image within Hamming distance {k}.")
    verdict_note = ""
    if summary["overlapping_pool_images"] == 0:
        rejected = summary["phash_pairs"] - summary["pairs"]
        verdict_note = pages.note(
            "<b>No overlaps found</b>: no pool image counts as a copy of an evaluation image"
            + (f" (the {pages.num(rejected)} pHash pair{'s' if rejected != 1 else ''} within k = {k} "
               "differ in colour: listed below)" if rejected else f" within Hamming distance {k}") + ".")
    body = (f"<p>{rule}</p><div class='cards'>{''.join(cards)}</div>{verdict_note}{truth}"
            f"<h2>Overlap per evaluation set</h2>{per_set}"
            f"<h2>Sweep over k</h2><figure><img src='k_sweep.png' alt='pool images with an eval near-duplicate "
            f"for each k'><figcaption>How many pool images have an eval image within each Hamming distance "
            f"(pHash alone); the dashed line is the configured k.</figcaption></figure>{sweep}"
            f"<h2>Pairs found (closest first, at most {max_pairs})</h2>{pairs}")
    mode = "bit-exact with imagehash.phash" if summary["phash_mode"] == "exact" else "fast draft-mode decode"
    return pages.page(title, f"pHash path: {pages.esc(summary['phash_mode'])} ({mode})", body)


def _ok_pool(hashes: pa.Table) -> pa.Table:
    return hashes.filter(pc.equal(hashes.column("status"), "ok")).select(["uid", "phash", "tar", "key"])


def audit_hashes(hashes: str, eval_hashes: str, out_dir: str, storage: Storage, *, k: int = 8,
                 phash_mode: str = "exact", max_colour_distance: float | None = None, base: str | None = None,
                 truth: set[str] | None = None) -> dict[str, Any]:
    """Audit pool hashes already computed (a folder or file of ``uid, tar, key, phash, status`` rows,
    e.g. a run's dedup hashes) against eval hashes (an eval-hash folder or file)."""
    pool = _ok_pool(storage.read_parquet(hashes))
    return write_audit(out_dir, pool, load_eval_hashes(eval_hashes, storage), storage, k=k,
                       phash_mode=phash_mode, max_colour_distance=max_colour_distance, base=base, truth=truth)


def audit_shards(shards: str, evalsets: str, out_dir: str, storage: Storage, *, k: int = 8,
                 phash_mode: str = "exact", max_colour_distance: float | None = None,
                 truth: set[str] | None = None) -> dict[str, Any]:
    """Audit any WebDataset shards (e.g. someone else's) against hashed eval sets."""
    tables = [hash_tar(t, storage, phash_mode) for t in storage.expand(shards)]
    return write_audit(out_dir, _ok_pool(pa.concat_tables(tables)), load_eval_hashes(evalsets, storage), storage,
                       k=k, phash_mode=phash_mode, max_colour_distance=max_colour_distance, truth=truth)
