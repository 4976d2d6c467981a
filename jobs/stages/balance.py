"""Stage `balance`: keep a matched row with ``p_keep = 1 - prod(1 - min(1, t / count[e]))``.

The draw is a pure function, ``u = blake2b(seed, uid) -> [0, 1)``, keep iff ``u < p_keep``: the same
seed keeps the same rows whatever the partitioning, executor count or retries. ``t`` is given, or
solved from ``balance.target_size`` (the smallest t whose expected kept count reaches it).
``mode: random`` is the control arm of experiments: every matched row gets the same
``p_keep = target_size / matched``.

Outputs: ``RUN/balance/part-N.parquet`` (the kept rows with ``p_keep``), and beside them, out of the
data, ``_stats/kept_counts.parquet`` (entry_id, kept) and ``_stats/t_sweep.json`` (expected kept
count for a range of t, for the report's plot).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import balancing
from curation.errors import InputError
from curation.rundir import StageDir, parquet_rows, reject_table
from curation.settings import SettingError, setting
from curation.storage import Storage
from jobs.stages import count, match, metadata
from jobs.stages.base import (
    PhaseClock,
    Stage,
    StageContext,
    arrow_compute_ready,
    merge_unit_summaries,
    run_units,
    throttle,
)

log = logging.getLogger(__name__)

KEPT_COUNTS = "_stats/kept_counts.parquet"
T_SWEEP = "_stats/t_sweep.json"


@dataclass
class BalanceConfig:
    t: float | None = setting(20_000.0, "balancing threshold t (20000: the 400M set; 170000: the 2.5B set)",
                              flag="--t", finite=True)
    target_size: int | None = setting(None, "instead of t: solve the smallest t whose expected kept count "
                                            "reaches this", minimum=1)
    seed: int = setting(0, "seed of the deterministic per-uid draw")
    sweep_points: int = setting(40, "number of t values in the kept-fraction-vs-t sweep (report plot)", minimum=1)
    mode: str = setting("metaclip", "'metaclip' (p = min(1, t/count)) or 'random' (a uniform subset of "
                                    "target_size matched rows: the control arm)", choices=("metaclip", "random"))
    after: str = setting("match", "when the draw happens: 'match' (here, on the matched pool, MetaCLIP 1's "
                                  "order) or 'download' (this stage passes every matched row on; the shard "
                                  "stage counts over the images that downloaded and survived dedup, then draws: "
                                  "failed downloads do not skew the balance)", choices=("match", "download"))
    online: bool = setting(False, "write every (downloaded, deduped) matched row to the shards with its p_keep "
                                  "instead of drawing once: `metacurate train --online-balance` then draws a "
                                  "fresh balanced subset every epoch, u(seed, epoch, uid) < p_keep")
    tail_p: float | None = setting(None, "MetaCLIP 2: instead of t, give every metadata language the threshold "
                                         "whose tail (entries matched fewer than t times) holds this share of "
                                         "that language's matches", minimum=0, finite=True)
    reference_lang: str = setting("en", "with several metadata languages and t: the language that keeps t; every "
                                        "other language gets the t with the same tail proportion (MetaCLIP 2)")

    def validate(self) -> None:
        if self.target_size is not None:
            self.t = None
        if self.tail_p is not None:
            if not 0 < self.tail_p <= 1:
                raise SettingError("tail_p", f"is a share of matches, in (0, 1], got {self.tail_p}")
            if self.target_size is not None:
                raise SettingError("tail_p", "and `balance.target_size` both set the thresholds: give one")
        if self.t is None and self.target_size is None and self.tail_p is None:
            raise SettingError("t", "or `balance.target_size` (or `balance.tail_p`) must be set")
        if self.t is not None and not self.t > 0:
            raise SettingError("t", f"must be > 0, got {self.t}")
        if self.mode == "random" and (self.after != "match" or self.online):
            raise SettingError("mode", "'random' is the control arm of a balance drawn once after matching: "
                                       "it goes with `after: match` and `online: false`")
        if self.mode == "random" and self.target_size is None:
            raise SettingError("mode", "'random' needs `balance.target_size` (the number of rows to keep)")


class BalanceStage(Stage):
    name = "balance"
    help = "keep rows with p_keep = 1 - prod(1 - min(1, t/count)); deterministic per-uid draw"
    upstream = (count.CountStage,)
    section = "balance"
    Config = BalanceConfig
    section_doc = "balancing"

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s: BalanceConfig = ctx.settings(self)
        if s.after == "download" or s.online:
            log.info("balance: every matched row goes on with its p_keep (the draw is %s)",
                     "per epoch, in training" if s.online and s.after == "match" else "in the shard stage")
        match_summary = ctx.upstream_summary(match.MatchStage)
        n_entries = int(match_summary["n_entries"])
        counts = count.load_counts(ctx.dir(count.CountStage), n_entries)
        files = ctx.dir(match.MatchStage).part_files()
        sc = ctx.spark.sparkContext
        # int64 counts and float64 probabilities end to end: head counts of a billion-row pool pass
        # 2**24, where float32 stops counting exactly, and p_keep must be MetaCLIP's to 1e-12.
        counts_bc = sc.broadcast(counts.astype(np.int64))
        max_count = int(counts.max()) if counts.size else 1
        t = s.t
        uniform_p = None
        langs, per_lang_mode = language_mode(ctx, s, n_entries)
        per_lang = None
        if s.mode == "random":
            uniform_p = min(1.0, s.target_size / max(match_summary["out"], 1))
            t = float(max_count)  # reported only; every row gets uniform_p
            log.info("balance: random mode, p_keep = %.6g for every matched row", uniform_p)
        elif s.target_size is not None:
            log.info("balance: solving t for target_size=%s", f"{s.target_size:,}")
            t = float(balancing.solve_t(lambda ts: _expected_kept(ctx.spark, files, counts_bc, ts, ctx.storage),
                                        s.target_size, max_count))
            log.info("balance: t = %s", t)
        if per_lang_mode:
            per_lang, prob, t, t_of_entry = per_language_probabilities(s, counts, langs)
        else:
            if s.tail_p is not None and s.mode == "metaclip":
                t = float(balancing.p_to_t(counts, s.tail_p))
                log.info("balance: t = %s (tail proportion %s)", t, s.tail_p)
            prob = balancing.entry_probabilities(counts, t)
            t_of_entry = np.full(counts.shape, t, dtype=np.float64)
        p_bc = sc.broadcast(prob)
        ts = sorted(set(np.unique(np.geomspace(1, max(max_count, 2), s.sweep_points).round()).tolist()) | {float(t)})
        units = [{"unit": match._unit_of(f), "path": f} for f in files]
        task_ctx = {"settings": asdict(s), "storage": ctx.storage, "out": out.url, "rejects": out.rejects_url,
                    "draw": s.after == "match" and not s.online,
                    "p_bc": p_bc, "counts_bc": counts_bc, "ts": ts, "uniform_p": uniform_p}
        t0 = time.perf_counter()
        results = run_units(ctx, out, units, _balance_unit, task_ctx, self.name)
        seconds = {"units": round(time.perf_counter() - t0, 3)}
        total = merge_unit_summaries(results)
        sweep = np.sum([r["sweep"] for r in results], axis=0) if results else np.zeros(len(ts))
        ctx.storage.write_json(out.path(T_SWEEP), {"t": ts, "expected_kept": sweep.tolist(), "chosen_t": t,
                                                   "per_language": per_lang is not None})
        kept_counts = count.counts_array(ctx.spark, out.part_files(), n_entries, ctx.storage)
        nz = np.flatnonzero(kept_counts)
        ctx.storage.write_parquet(pa.table({"entry_id": pa.array(nz.astype(np.int32)),
                                            "kept": pa.array(kept_counts[nz], pa.int64())}), out.path(KEPT_COUNTS))
        matched = counts > 0
        return {**total, "t": t, "target_size": s.target_size, "seed": s.seed, "mode": s.mode,
                "after": s.after, "online": s.online,
                "pool": match_summary["in"], "matched": total["in"],
                "expected_kept": float(sum(r["expected_kept"] for r in results)), "kept": total["out"],
                "head_entries": int((counts > t_of_entry).sum()),
                "tail_entries": int((matched & (counts <= t_of_entry)).sum()),
                **({"per_language": _per_language(per_lang, counts, langs, results)} if per_lang else {}),
                "seconds": seconds}


    def input_rows(self, ctx: StageContext):
        return match.MatchStage, parquet_rows(ctx.storage, ctx.dir(match.MatchStage).part_files())

    def output_rows(self, ctx: StageContext, out: StageDir) -> int:
        return parquet_rows(ctx.storage, out.part_files())


STAGE = BalanceStage()


def language_mode(ctx: StageContext, s: BalanceConfig, n_entries: int) -> tuple[np.ndarray | None, bool]:
    """The entries' languages and whether thresholds are set per language (MetaCLIP 2): several
    metadata languages, or ``tail_p`` given, under ``mode: metaclip``."""
    langs = entry_languages(ctx, n_entries)
    per_lang = langs is not None and s.mode == "metaclip" and (s.tail_p is not None or len(set(langs.tolist())) > 1)
    if per_lang and s.target_size is not None:
        raise InputError("balance.target_size solves one t, but the metadata has entries in "
                         f"{len(set(langs.tolist()))} languages: give `balance.t` (the "
                         f"{s.reference_lang!r} threshold) or `balance.tail_p` instead")
    return langs, per_lang


def per_language_probabilities(s: BalanceConfig, counts: np.ndarray, langs: np.ndarray
                               ) -> tuple[dict[str, float], np.ndarray, float, np.ndarray]:
    """Per-language thresholds, entry probabilities, the reference language's t and each entry's t."""
    per_lang = balancing.thresholds_per_language(counts, langs, t=s.t, tail_p=s.tail_p, reference=s.reference_lang)
    log.info("balance: per-language thresholds %s", ", ".join(f"{k}={v:g}" for k, v in sorted(per_lang.items())))
    prob = balancing.entry_probabilities_per_language(counts, langs, per_lang)
    t = float(per_lang.get(s.reference_lang, s.t if s.t is not None else max(per_lang.values())))
    t_of_entry = np.array([per_lang[x] for x in langs.tolist()], dtype=np.float64)
    return per_lang, prob, t, t_of_entry


def entry_languages(ctx: StageContext, n_entries: int) -> np.ndarray | None:
    """Each entry id's language (``entries.parquet``'s ``lang``), or None when the metadata has none."""
    table = metadata.entries_table_of(ctx.dir(metadata.MetadataStage))
    if "lang" not in table.column_names:
        return None
    ids = table.column("entry_id").to_numpy()
    langs = np.full(n_entries, "", dtype=object)
    langs[ids] = np.asarray(table.column("lang").to_pylist(), dtype=object)
    return langs


def _per_language(ts: dict, counts: np.ndarray, langs: np.ndarray, results: list[dict]) -> dict:
    """Per language: its t, entries, head entries and matched / kept rows."""
    rows_in: dict = {}
    rows_kept: dict = {}
    for r in results:
        for k, v in r.get("lang_in", {}).items():
            rows_in[k] = rows_in.get(k, 0) + v
        for k, v in r.get("lang_kept", {}).items():
            rows_kept[k] = rows_kept.get(k, 0) + v
    out = {}
    for lang, t in sorted(ts.items()):
        c = counts[langs == lang]
        out[lang] = {"t": float(t), "entries": int(c.size), "matched_entries": int((c > 0).sum()),
                     "head_entries": int((c > t).sum()), "matches": int(c.sum()),
                     "tail_proportion": balancing.t_to_p(c, t),
                     "rows_in": int(rows_in.get(lang, 0)), "rows_kept": int(rows_kept.get(lang, 0))}
    return out


def kept_counts_url(d: StageDir) -> str:
    return d.path(KEPT_COUNTS)


def sweep_url(d: StageDir) -> str:
    return d.path(T_SWEEP)


def _expected_unit(path: str, task_ctx: dict) -> list[float]:
    t = task_ctx["storage"].read_parquet(path, ["entry_ids"])
    offsets, flat = count.csr(t.column("entry_ids"))
    return balancing.expected_kept_for_ts(offsets, flat, task_ctx["counts_bc"].value, task_ctx["ts"]).tolist()


def _expected_kept(spark, files: list[str], counts_bc, ts: np.ndarray, storage: Storage) -> np.ndarray:
    task_ctx = {"counts_bc": counts_bc, "ts": [float(t) for t in ts], "storage": storage}
    rdd = spark.sparkContext.parallelize(files, max(1, len(files)))
    per_file = rdd.map(lambda f: _expected_unit(f, task_ctx)).collect()
    return np.sum(np.array(per_file, dtype=np.float64).reshape(len(files), len(ts)), axis=0)


def _balance_unit(unit: dict, task_ctx: dict) -> dict:
    s = BalanceConfig(**task_ctx["settings"])
    storage: Storage = task_ctx["storage"]
    out = StageDir(task_ctx["out"], storage, task_ctx["rejects"])
    throttle()
    clock = PhaseClock()
    arrow_compute_ready(clock)
    prob = task_ctx["p_bc"].value
    counts = task_ctx["counts_bc"].value
    table = storage.read_parquet(unit["path"])
    offsets, flat = count.csr(table.column("entry_ids"))
    clock.lap("read")
    if task_ctx.get("uniform_p") is not None:  # the random-subset control: entries ignored
        pk = np.full(table.num_rows, task_ctx["uniform_p"], dtype=np.float64)
    else:
        pk = balancing.p_keep_csr(offsets, flat, prob)
    uid_col = table.column("uid").combine_chunks()
    u = balancing.uniform_from_uid_array(s.seed, uid_col)
    keep = u < pk if task_ctx.get("draw", True) else np.ones(len(pk), dtype=bool)
    clock.lap("draw")
    kept = table.filter(pa.array(keep)).append_column("p_keep", pa.array(pk[keep], pa.float64()))
    drop = np.flatnonzero(~keep)
    drop_arr = pa.array(drop)
    # "p_keep=<p> u=<u>" built by Arrow (shortest round-trip float text), not per-row f-strings.
    detail = pc.binary_join_element_wise("p_keep=", pa.array(pk).take(drop_arr).cast(pa.string()), " u=",
                                         pa.array(u).take(drop_arr).cast(pa.string()), "")
    rejects = reject_table(uid_col.take(drop_arr), BalanceStage.name, np.ones(len(drop), np.int8),
                           ("", "balanced_out"), detail)
    clock.lap("assemble")
    name = f"part-{unit['unit']:06d}.parquet"
    match.write_part(rejects, out.rejects(name), storage)
    match.write_part(kept, out.path(name), storage)
    clock.lap("write")
    sweep = balancing.expected_kept_for_ts(offsets, flat, counts, task_ctx["ts"]).tolist()
    clock.lap("t_sweep")
    summary = {"unit": unit["unit"], "in": table.num_rows, "out": kept.num_rows,
               "rejected": {"balanced_out": int(len(drop))} if len(drop) else {},
               "expected_kept": float(pk.sum()), "sweep": sweep, "phases": clock.as_dict()}
    if "lang" in table.column_names:
        summary["lang_in"] = _value_counts(table.column("lang"))
        summary["lang_kept"] = _value_counts(kept.column("lang"))
    out.write_unit(unit["unit"], summary)
    return summary


def _value_counts(col) -> dict:
    return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(col.combine_chunks()).to_pylist()}
