"""Stage `shard`: the surviving samples (downloaded, hashed, no eval overlap) as WebDataset shards.

``RUN/shards/{000000..N}.tar`` with ``<key>.jpg``, ``<key>.txt`` and ``<key>.json`` (uid, url, entry
ids and their strings, phash, p_keep), ``sizes.json`` (open_clip's format) and ``manifest.parquet``
(one row per sample). Shards are written atomically and a re-run skips complete ones.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from curation import balancing
from curation.phash import hash_to_hex
from curation.rundir import StageDir, parquet_rows, reject_rows
from curation.settings import setting
from curation.shards import read_tar_samples, sanitize_key, write_shards
from curation.storage import relative
from jobs.stages import balance, count, dedup, download, match, metadata
from jobs.stages.base import Stage, StageContext

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
SIZES = "sizes.json"


@dataclass
class ShardConfig:
    samples_per_shard: int = setting(1000, "samples per WebDataset tar", minimum=1)


class ShardStage(Stage):
    name = "shard"
    folder = "shards"
    help = "write WebDataset shards + sizes.json + manifest.parquet"
    upstream = (dedup.DedupStage,)
    section = "shard"
    Config = ShardConfig
    section_doc = "WebDataset shards"
    failure_reasons = ("missing_phash", "malformed_sample")
    sizing_estimate = (0.1, "re-packing tar members without decoding, ~0.3 ms per sample")

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s: ShardConfig = ctx.settings(self)
        storage = ctx.storage
        meta = metadata.entries_table_of(ctx.dir(metadata.MetadataStage), ["entry_id", "entry"])
        entries = dict(zip(meta.column("entry_id").to_pylist(), meta.column("entry").to_pylist()))
        dd = ctx.dir(dedup.DedupStage)
        hashes = storage.read_parquet(dedup.hashes_url(dd))
        overlapping = dedup.confirmed_uids(dd)
        by_tar: dict[str, dict[str, tuple[int, str]]] = {}
        for tar, key, ph, st in zip(*(hashes.column(c).to_pylist() for c in ("tar", "key", "phash", "status"))):
            by_tar.setdefault(tar, {})[key] = (ph, st)
        rejects: list[dict] = []
        bal = ctx.settings(balance.BalanceStage)
        late = None  # uid -> (p_keep, kept) when the balance is drawn here, over the images that arrived
        extra: dict[str, Any] = {}
        if bal.after == "download":
            survivors = {u for u, st in zip(hashes.column("uid").to_pylist(), hashes.column("status").to_pylist())
                         if st == "ok" and u not in overlapping}
            late, extra = balance_survivors(ctx, bal, survivors, out)

        def samples() -> Iterator[dict[str, Any]]:
            for tar in download.tar_files(ctx.dir(download.DownloadStage)):
                name = relative(tar, ctx.run.url)
                info = by_tar.get(name, {})
                for smp in read_tar_samples(tar, storage):
                    ph, st = info.get(smp["__key__"], (None, "missing_phash"))
                    try:
                        meta_json = json.loads(smp.get("json") or b"{}")
                    except ValueError:
                        meta_json = {}
                    uid = str(meta_json.get("uid") or smp["__key__"])
                    if st == "missing_phash":  # dedup never saw this sample: do not ship it unchecked
                        rejects.append({"uid": uid, "stage": self.name, "reason": "missing_phash",
                                        "detail": f"{name}#{smp['__key__']} has no row in dedup/hashes"})
                        continue
                    if st != "ok" or uid in overlapping:  # already a dedup reject row
                        continue
                    if "jpg" not in smp:
                        rejects.append({"uid": uid, "stage": self.name, "reason": "malformed_sample",
                                        "detail": f"{name}#{smp['__key__']} has no .jpg member"})
                        continue
                    ids = [int(x) for x in (meta_json.get("entry_ids") or [])]
                    p_keep = meta_json.get("p_keep")
                    if late is not None:
                        p_keep, kept, u = late.get(uid, (0.0, False, 1.0))
                        if not kept:
                            rejects.append({"uid": uid, "stage": self.name, "reason": "balanced_out",
                                            "detail": f"p_keep={p_keep!r} u={u!r} (balanced after download)"})
                            continue
                    yield {"key": sanitize_key(uid), "jpg": smp["jpg"],
                           "txt": meta_json.get("caption") or smp.get("txt", b"").decode("utf-8", "replace"),
                           "json": {"uid": uid, "url": meta_json.get("url"), "entry_ids": ids,
                                    "entries": [entries.get(i, "") for i in ids], "phash": hash_to_hex(ph),
                                    "p_keep": float(p_keep) if p_keep is not None else 1.0}}

        result = write_shards(samples(), out.url, s.samples_per_shard, storage=storage)
        storage.write_parquet(reject_rows(rejects), out.rejects("part-00000.parquet"))
        return {"in": result.samples + len(rejects), "out": result.samples,
                "rejected": dict(Counter(r["reason"] for r in rejects)),
                "shards": len(result.shards), "shards_written": len(result.written),
                "shards_skipped": len(result.skipped), "samples_per_shard": s.samples_per_shard, **extra}


    def output_rows(self, ctx: StageContext, out: StageDir) -> int:
        return parquet_rows(ctx.storage, [manifest_url(out)])


STAGE = ShardStage()

AFTER_DOWNLOAD = "_stats/after_download.parquet"


def balance_survivors(ctx: StageContext, bal: Any, survivors: set[str], out: StageDir
                      ) -> tuple[dict[str, tuple[float, bool, float]], dict]:
    """``balance.after: download``: counts over the images that downloaded and survived dedup,
    p = min(1, t / count), the same per-uid draw (all kept when ``online``). Returns
    ``uid -> (p_keep, kept, u)`` and the summary figures; writes ``_stats/after_download.parquet``
    (entry_id, count before download, count after, kept) for the report."""
    storage = ctx.storage
    n_entries = int(ctx.upstream_summary(match.MatchStage)["n_entries"])
    inputs = ctx.dir(download.DownloadStage).path(download.INPUT)
    if storage.exists(inputs) and storage.list_files(inputs, ".parquet"):
        rows = storage.read_parquet(inputs, ["uid", "entry_ids"])
    else:  # every URL was refused: nothing arrived
        rows = pa.table({"uid": pa.array([], pa.string()), "entry_ids": pa.array([], pa.list_(pa.int32()))})
    mask = pa.array([u in survivors for u in rows.column("uid").to_pylist()])
    rows = rows.filter(mask)
    offsets, flat = count.csr(rows.column("entry_ids"))
    after = balancing.entry_counts(flat, n_entries)
    before = count.load_counts(ctx.dir(count.CountStage), n_entries)
    langs, per_lang_mode = balance.language_mode(ctx, bal, n_entries)
    per_lang = None
    if per_lang_mode:
        per_lang, prob, t, t_of_entry = balance.per_language_probabilities(bal, after, langs)
    else:
        t = bal.t
        if bal.tail_p is not None:
            t = float(balancing.p_to_t(after, bal.tail_p))
        elif t is None:
            t = float(balancing.solve_t(lambda ts: balancing.expected_kept_for_ts(offsets, flat, after, ts),
                                        bal.target_size, int(after.max()) if after.size else 1))
        prob = balancing.entry_probabilities(after, t)
        t_of_entry = np.full(after.shape, t, dtype=np.float64)
    pk = balancing.p_keep_csr(offsets, flat, prob)
    uids = rows.column("uid").combine_chunks()
    u = balancing.uniform_from_uid_array(bal.seed, uids)
    keep = np.ones(len(pk), bool) if bal.online else u < pk
    kept_counts = np.bincount(flat[np.repeat(keep, np.diff(offsets))], minlength=n_entries) if flat.size else \
        np.zeros(n_entries, np.int64)
    nz = np.flatnonzero((before > 0) | (after > 0))
    storage.write_parquet(pa.table({"entry_id": pa.array(nz.astype(np.int32)),
                                    "count_matched": pa.array(before[nz], pa.int64()),
                                    "count_downloaded": pa.array(after[nz], pa.int64()),
                                    "kept": pa.array(kept_counts[nz].astype(np.int64), pa.int64())}),
                          out.path(AFTER_DOWNLOAD))
    plan = {uid: (float(p), bool(k), float(x)) for uid, p, k, x in zip(uids.to_pylist(), pk, keep, u)}
    figures = {"balance_after_download": {
        "t": t, "online": bal.online, "survivors": len(plan), "kept": int(keep.sum()),
        "expected_kept": float(pk.sum()), "head_entries_matched": int((before > t_of_entry).sum()),
        "head_entries_downloaded": int((after > t_of_entry).sum()),
        **({"per_language_t": per_lang} if per_lang else {})}}
    log.info("shard: balanced after download at t=%s: %d of %d surviving images kept", t, int(keep.sum()), len(plan))
    return plan, figures


def manifest_url(d: StageDir) -> str:
    return d.path(MANIFEST)


def sizes_url(d: StageDir) -> str:
    return d.path(SIZES)
