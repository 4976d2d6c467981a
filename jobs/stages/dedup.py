"""Stage `dedup`: remove downloaded images that are near-duplicates of evaluation images.

One Spark task per downloaded tar hashes its images (pHash, bit-exact with imagehash by default)
and queries a multi-index Hamming index of the eval hashes, built once per executor process from
the hash files (read by the task, not shipped). Every pair within ``dedup.k`` is recorded and then
checked a second time: pHash sees only luminance, so the two images' 8x8 colour grids must also
agree (``dedup.max_colour_distance``). A confirmed pair's pool image is rejected as
``eval_overlap``; undecodable images as ``corrupt_image``.

``RUN/dedup/`` holds three data folders and a side file:

* ``hashes/``      one row per downloaded sample: uid, tar, key, phash:uint64, status, detail;
* ``overlap/``     one row per (pool image, eval image) pair: uid, dataset, key, hamming, ...;
* ``eval_hashes/`` the eval hashes this run used (dataset, key, phash, source), kept with the run
  so the audit and later readers need not know where the eval sets were hashed;
* ``_params.json`` k and the pHash path.

``tar`` columns hold paths relative to the run directory, so a run can be moved or copied.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from curation.evalsets import eval_hash_files, hash_tar, load_eval_hashes
from curation.neardup import NearDupIndex
from curation.phash import colour_distance, colour_signatures_bytes
from curation.rundir import StageDir, reject_rows
from curation.settings import setting
from curation.storage import Storage, join, relative
from jobs.stages import download
from jobs.stages.base import Stage, StageContext

log = logging.getLogger(__name__)

HASHES = "hashes"
OVERLAP = "overlap"
EVAL_HASHES = "eval_hashes"
PARAMS = "_params.json"
DEFAULT_EVALSETS = "evalsets"
OVERLAP_SCHEMA = pa.schema([("uid", pa.string()), ("dataset", pa.string()), ("key", pa.string()),
                            ("hamming", pa.int32()), ("eval_phash", pa.uint64()), ("phash", pa.uint64()),
                            ("tar", pa.string()), ("pool_key", pa.string()),
                            ("colour_distance", pa.float32()), ("confirmed", pa.bool_())])


@dataclass
class DedupConfig:
    evalsets: str | None = setting(None, "eval hashes: a folder written by `metacurate evalsets hash` (or one "
                                         "of its files); default: RUN/evalsets")
    k: int = setting(8, "Hamming distance threshold for near-duplicates", minimum=0)
    phash_mode: str = setting("exact", "pHash path: 'exact' (bit-exact imagehash) or 'fast' (draft-mode JPEG "
                                       "decode)", choices=("exact", "fast"))
    max_colour_distance: float | None = setting(
        6.0, "second check of every pHash pair: the mean difference (0-255) of the two images' 8x8 colour "
              "grids must be at most this for the pair to count as a copy (pHash sees only luminance: "
              "same-layout images of other colours collide); null: pHash alone decides", minimum=0, finite=True)


class DedupStage(Stage):
    name = "dedup"
    help = "remove near-duplicates of evaluation images (pHash, Hamming <= k)"
    upstream = (download.DownloadStage,)
    section = "dedup"
    Config = DedupConfig
    section_doc = "eval-set near-duplicate removal"
    failure_reasons = ("corrupt_image",)
    sizing_estimate = (0.5, "pHash ~0.83 ms per 256 px image plus ~1 ms of JPEG decode and tar reading")

    def inputs(self, ctx: StageContext) -> list:
        """The eval hash files are an input: hashing an eval set again redoes the stage."""
        return [ctx.stamp(f) for f in eval_hash_files(evalsets_of(ctx), ctx.storage)]

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s: DedupConfig = ctx.settings(self)
        storage = ctx.storage
        evalsets = evalsets_of(ctx)
        snapshot = out.path(EVAL_HASHES)
        for f in eval_hash_files(evalsets, storage):  # the run keeps the hashes it used
            storage.copy(f, join(snapshot, f.rsplit("/", 1)[-1]))
        load_eval_hashes(snapshot, storage)  # fail early, on the driver, with a clear message
        tars = download.tar_files(ctx.dir(download.DownloadStage))
        task = {"run": ctx.run.url, "evalsets": snapshot, "out": out.url, "rejects": out.rejects_url,
                "k": s.k, "phash_mode": s.phash_mode, "storage": storage,
                "max_colour_distance": s.max_colour_distance}
        if not tars:
            stats: list[dict] = []
        else:
            from jobs.spark import progress

            sc = ctx.spark.sparkContext

            def run_part(it: Iterable[str]) -> Iterator[str]:
                for tar in it:
                    yield json.dumps(dedup_tar(tar, task))

            with progress(sc, self.name):
                stats = [json.loads(x) for x in sc.parallelize(tars, len(tars)).mapPartitions(run_part).collect()]
        storage.write_json(out.path(PARAMS), {"k": s.k, "phash_mode": s.phash_mode,
                                              "max_colour_distance": s.max_colour_distance})
        rejected: Counter = Counter()
        pairs: Counter = Counter()
        for st in stats:
            rejected.update(st["rejected"])
            pairs.update(st["pairs"])
        return {"in": sum(st["in"] for st in stats), "out": sum(st["out"] for st in stats),
                "rejected": dict(rejected), "k": s.k, "phash_mode": s.phash_mode,
                "max_colour_distance": s.max_colour_distance,
                "overlap_pairs": sum(pairs.values()), "overlap_by_dataset": dict(sorted(pairs.items())),
                "unconfirmed_pairs": sum(st.get("unconfirmed", 0) for st in stats)}


    def output_rows(self, ctx: StageContext, out: StageDir) -> int:
        """Hashed samples that passed: ``status == ok`` and no eval near-duplicate."""
        hashes = ctx.storage.read_parquet(hashes_url(out), ["uid", "status"]) if ctx.storage.exists(
            hashes_url(out)) else pa.table({"uid": pa.array([], pa.string()), "status": pa.array([], pa.string())})
        overlapping = confirmed_uids(out)
        return sum(1 for u, st in zip(hashes.column("uid").to_pylist(), hashes.column("status").to_pylist())
                   if st == "ok" and u not in overlapping)


STAGE = DedupStage()


def evalsets_of(ctx: StageContext) -> str:
    return ctx.settings(DedupStage).evalsets or ctx.run.path(DEFAULT_EVALSETS)


def hashes_url(d: StageDir) -> str:
    return d.path(HASHES)


def overlap_url(d: StageDir) -> str:
    return d.path(OVERLAP)


def eval_hashes_url(d: StageDir) -> str:
    return d.path(EVAL_HASHES)


def params(d: StageDir) -> dict:
    url = d.path(PARAMS)
    return d.storage.read_json(url) if d.storage.exists(url) else {}


_INDEX_CACHE: dict[tuple, tuple[NearDupIndex, pa.Table]] = {}


def _eval_index(evalsets: str, k: int, storage: Storage) -> tuple[NearDupIndex, pa.Table]:
    """Built once per (executor) process and reused by every task in it."""
    files = eval_hash_files(evalsets, storage)
    key = (tuple(storage.ukey(f) for f in files), k)  # ukey changes when a file is rewritten
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        table = load_eval_hashes(evalsets, storage)
        _INDEX_CACHE[key] = (NearDupIndex(table.column("phash").to_numpy(), k), table)
    return _INDEX_CACHE[key]


def dedup_tar(tar: str, task: dict) -> dict:
    """Hash one downloaded tar, find its eval near-duplicates, write its hash/overlap/reject parts."""
    storage: Storage = task["storage"]
    index, evals = _eval_index(task["evalsets"], task["k"], storage)
    tar_name = relative(tar, task["run"])
    images: list[bytes] = []
    hashes = hash_tar(tar, storage, task["phash_mode"], name=tar_name, images=images)
    ok = np.array([s == "ok" for s in hashes.column("status").to_pylist()], dtype=bool)
    ph = hashes.column("phash").to_numpy()
    qi, ei, dist = index.query(ph[ok])
    qi = np.nonzero(ok)[0][qi]
    uids = hashes.column("uid").to_pylist()
    keys = hashes.column("key").to_pylist()
    ds, ek, eph = (evals.column(c).to_pylist() for c in ("dataset", "key", "phash"))
    colour, confirmed = _second_check(qi, ei, images, evals, task.get("max_colour_distance"))
    overlap = pa.table({
        "uid": [uids[i] for i in qi], "dataset": [ds[j] for j in ei], "key": [ek[j] for j in ei],
        "hamming": pa.array(dist, pa.int32()), "eval_phash": pa.array([eph[j] for j in ei], pa.uint64()),
        "phash": pa.array(ph[qi], pa.uint64()), "tar": [tar_name] * len(qi), "pool_key": [keys[i] for i in qi],
        "colour_distance": pa.array(colour, pa.float32()), "confirmed": pa.array(confirmed, pa.bool_()),
    }, schema=OVERLAP_SCHEMA)
    rejects = []
    statuses, details = hashes.column("status").to_pylist(), hashes.column("detail").to_pylist()
    for i in np.nonzero(~ok)[0]:
        rejects.append({"uid": uids[i], "stage": DedupStage.name, "reason": statuses[i], "detail": details[i]})
    best: dict[int, list[int]] = {}
    for n, q in enumerate(qi):
        if confirmed[n]:
            best.setdefault(int(q), []).append(n)
    for q, ns in best.items():
        ns.sort(key=lambda n: (dist[n], ds[ei[n]], ek[ei[n]]))
        n0 = ns[0]
        more = f" (+{len(ns) - 1} more)" if len(ns) > 1 else ""
        check = "" if np.isnan(colour[n0]) else f" colour_distance={colour[n0]:.1f}"
        rejects.append({"uid": uids[q], "stage": DedupStage.name, "reason": "eval_overlap",
                        "detail": f"dataset={ds[ei[n0]]} key={ek[ei[n0]]} hamming={int(dist[n0])}{check}{more}"})
    part = re.sub(r"[^A-Za-z0-9_-]", "_", tar.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    tag = hashlib.sha1(tar_name.encode("utf-8")).hexdigest()[:8]  # same-named tars of other folders apart
    name = f"{part}-{tag}.parquet"
    out = StageDir(task["out"], storage, task["rejects"])
    storage.write_parquet(hashes, out.path(HASHES, name))
    storage.write_parquet(overlap, out.path(OVERLAP, name))
    storage.write_parquet(reject_rows(rejects), out.rejects(name))
    reasons = Counter(r["reason"] for r in rejects)
    return {"tar": tar_name, "in": len(hashes), "out": len(hashes) - sum(reasons.values()),
            "rejected": dict(reasons), "pairs": dict(Counter(ds[j] for j, c in zip(ei, confirmed) if c)),
            "unconfirmed": int(len(confirmed) - int(np.sum(confirmed)))}


def _second_check(qi: np.ndarray, ei: np.ndarray, images: list[bytes], evals: pa.Table,
                  max_distance: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per pHash pair: the colour-grid distance of the two images, and whether the pair counts
    (distance <= ``max_distance``; pairs whose eval side has no colour signature, or when the
    check is off, count on pHash alone)."""
    n = len(qi)
    colour = np.full(n, np.nan, dtype=np.float32)
    if max_distance is None or n == 0:
        return colour, np.ones(n, dtype=bool)
    eval_sigs = evals.column("colour").to_pylist()
    pool_rows = sorted(set(int(q) for q in qi))
    sigs, errors = colour_signatures_bytes([images[r] for r in pool_rows])
    pool_sig = {r: (None if e is not None else s) for r, s, e in zip(pool_rows, sigs, errors)}
    for n_, (q, j) in enumerate(zip(qi.tolist(), ei.tolist())):
        a, b = pool_sig[q], eval_sigs[j]
        if a is not None and b is not None:
            colour[n_] = float(colour_distance(a, np.frombuffer(b, dtype=np.uint8))[0])
    confirmed = np.isnan(colour) | (colour <= max_distance)
    return colour, confirmed


def confirmed_uids(d: StageDir) -> set[str]:
    """Pool uids with a confirmed eval near-duplicate (the ones the stage rejected)."""
    t = load_overlap(d, ["uid", "confirmed"])
    return {u for u, c in zip(t.column("uid").to_pylist(), t.column("confirmed").to_pylist()) if c is not False}


def load_overlap(d: StageDir, columns: list[str] | None = None) -> pa.Table:
    url = overlap_url(d)
    if not d.storage.exists(url) or not d.storage.list_files(url, ".parquet"):
        return OVERLAP_SCHEMA.empty_table() if columns is None else OVERLAP_SCHEMA.empty_table().select(columns)
    return d.storage.read_parquet(url, columns)
