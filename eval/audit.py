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
import html
import io
import json
import logging
import tarfile
from collections import Counter
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


def _sweep_plot(ks: list[int], counts: list[int], k: int) -> bytes:
    """The k-sweep plot as PNG bytes (written by the caller through the run's storage)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ks, counts, marker="o")
    ax.axvline(k, color="red", linestyle="--", label=f"configured k = {k}")
    ax.set_xlabel("Hamming distance threshold k")
    ax.set_ylabel("pool images with an eval near-duplicate")
    ax.set_title("Overlap vs k (pHash)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_audit(out_dir: str, pool: pa.Table, evals: pa.Table, storage: Storage, *, k: int = 8,
                phash_mode: str = "exact", max_pairs: int = 60, title: str = "metacurate overlap audit",
                base: str | None = None) -> dict[str, Any]:
    """Write ``out_dir/index.html`` + ``k_sweep.png`` + ``audit.json``; return the summary dict.

    Every read (thumbnails from tars / eval sources) and write goes through ``storage``; ``tar``
    paths in ``pool`` are relative to ``base`` when it is given (a run directory)."""
    out_dir = out_dir.rstrip("/")
    storage.makedirs(out_dir)
    ph = pool.column("phash").to_numpy().astype(np.uint64) if len(pool) else np.zeros(0, np.uint64)
    eh = evals.column("phash").to_numpy().astype(np.uint64) if len(evals) else np.zeros(0, np.uint64)
    ks, counts, (q, e, d) = k_sweep(ph, eh)
    at_k = d <= k
    q, e, d = q[at_k], e[at_k], d[at_k]
    ds = evals.column("dataset").to_pylist()
    datasets = sorted(set(ds))
    pairs_per_set = Counter(ds[j] for j in e)
    pool_per_set = {name: len({int(i) for i, j in zip(q, e) if ds[j] == name}) for name in datasets}
    evals_per_set = Counter(ds)
    summary = {
        "k": k, "phash_mode": phash_mode, "pool_images": len(pool), "eval_images": len(evals),
        "overlapping_pool_images": int(len(set(q.tolist()))), "pairs": int(len(q)),
        "per_dataset": {n: {"eval_images": evals_per_set[n], "pairs": pairs_per_set.get(n, 0),
                            "pool_images": pool_per_set[n]} for n in datasets},
        "k_sweep": {"k": ks, "overlapping_pool_images": counts},
    }
    storage.write_bytes(join(out_dir, "k_sweep.png"), _sweep_plot(ks, counts, k))
    uids, tars, keys = (pool.column(c).to_pylist() for c in ("uid", "tar", "key"))
    ekeys, srcs = evals.column("key").to_pylist(), evals.column("source").to_pylist()
    order = np.lexsort((e, q, d))[:max_pairs]
    rows_html = []
    for n in order:
        i, j = int(q[n]), int(e[n])
        tar = join(base, tars[i]) if base and tars[i] and "://" not in tars[i] and not tars[i].startswith("/") \
            else tars[i]
        left = _thumb_b64(_read_member(tar, keys[i], storage) if tar else None)
        right = _thumb_b64(_load_source(srcs[j], storage) if srcs[j] else None)
        rows_html.append(
            f"<tr><td><img src='{left}' alt='pool'><br>{html.escape(str(uids[i]))}</td>"
            f"<td><img src='{right}' alt='eval'><br>{html.escape(ds[j])} / {html.escape(str(ekeys[j]))}</td>"
            f"<td>{int(d[n])}</td></tr>")
    table_rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{v['eval_images']}</td><td>{v['pool_images']}</td><td>{v['pairs']}</td></tr>"
        for n, v in summary["per_dataset"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>pHash path: <b>{html.escape(phash_mode)}</b> ({'bit-exact with imagehash.phash' if phash_mode == 'exact' else 'fast draft-mode decode, approximate'});
threshold k = <b>{k}</b>; pool images: {len(pool)}; eval images: {len(evals)};
pool images with an eval near-duplicate: <b id="overlap-total">{summary['overlapping_pool_images']}</b> ({len(q)} pairs).</p>
<h2>Overlap per evaluation set (k = {k})</h2>
<table id="per-dataset"><tr><th>eval set</th><th>eval images</th><th>pool images overlapping</th><th>pairs</th></tr>{table_rows}</table>
<h2>Sweep over k</h2><img src="k_sweep.png" alt="k sweep">
<table><tr><th>k</th>{''.join(f'<td>{x}</td>' for x in ks)}</tr><tr><th>overlaps</th>{''.join(f'<td>{c}</td>' for c in counts)}</tr></table>
<h2>Found pairs (closest first, at most {max_pairs})</h2>
<table id="pairs"><tr><th>pool image</th><th>eval image</th><th>Hamming</th></tr>{''.join(rows_html)}</table>
</body></html>"""
    storage.write_bytes(join(out_dir, "audit.json"), json.dumps(summary, indent=1).encode())
    storage.write_bytes(join(out_dir, "index.html"), page.encode("utf-8"))
    log.info("audit: %d pool images overlap eval sets at k=%d -> %s/index.html",
             summary["overlapping_pool_images"], k, out_dir)
    return summary


def _ok_pool(hashes: pa.Table) -> pa.Table:
    return hashes.filter(pc.equal(hashes.column("status"), "ok")).select(["uid", "phash", "tar", "key"])


def audit_hashes(hashes: str, eval_hashes: str, out_dir: str, storage: Storage, *, k: int = 8,
                 phash_mode: str = "exact", base: str | None = None) -> dict[str, Any]:
    """Audit pool hashes already computed (a folder or file of ``uid, tar, key, phash, status`` rows,
    e.g. a run's dedup hashes) against eval hashes (an eval-hash folder or file)."""
    pool = _ok_pool(storage.read_parquet(hashes))
    return write_audit(out_dir, pool, load_eval_hashes(eval_hashes, storage), storage, k=k,
                       phash_mode=phash_mode, base=base)


def audit_shards(shards: str, evalsets: str, out_dir: str, storage: Storage, *, k: int = 8,
                 phash_mode: str = "exact") -> dict[str, Any]:
    """Audit any WebDataset shards (e.g. someone else's) against hashed eval sets."""
    tables = [hash_tar(t, storage, phash_mode) for t in storage.expand(shards)]
    return write_audit(out_dir, _ok_pool(pa.concat_tables(tables)), load_eval_hashes(evalsets, storage), storage,
                       k=k, phash_mode=phash_mode)
