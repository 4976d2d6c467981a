"""Fixture run directories for the report tests, made by code.

``simulate_run`` draws a Zipf-like pool (each text matches 1-4 entries, entry popularity ~ 1/rank),
then applies the balancing rule (ARCHITECTURE.md, "Balancing") exactly (p = min(1, t/count), p_keep = 1 - Π(1 - p), keep iff
u < p_keep) so counts, kept counts, the t sweep and every summary are mutually consistent —
the same files the count / balance stages write. Also usable as a script-free helper to make a
large run for looking at the plots.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SOURCES = ("wordnet", "wiki_unigram", "wiki_bigram", "wiki_title")


def _entry_names(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Readable, unique entry strings with a source label each."""
    try:
        from wordfreq import top_n_list

        words = [w for w in top_n_list("en", max(2 * n, 2000)) if w.isalpha()]
    except Exception:  # wordfreq is a test extra; fall back to made-up words
        syll = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pen", "dar", "tor", "el"]
        words = sorted({"".join(rng.choice(syll, size=rng.integers(2, 4))) for _ in range(4 * n)})
    src_of = rng.choice(len(SOURCES), size=n, p=[0.4, 0.3, 0.2, 0.1])
    names, sources, seen = [], [], set()
    wi = 0
    for i in range(n):
        s = SOURCES[src_of[i]]
        while True:
            if s in ("wordnet", "wiki_unigram"):
                name = words[wi % len(words)] if wi < len(words) else f"{words[wi % len(words)]}{wi // len(words)}"
                wi += 1
            else:
                a, b = rng.choice(min(len(words), 5000), size=2)
                name = f"{words[a]} {words[b]}"
                if s == "wiki_title":
                    name = name.title()
            if name not in seen:
                break
        seen.add(name)
        names.append(name)
        sources.append(s)
    return names, sources


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _success(stage_dir: Path, fingerprint: str) -> None:
    _write_json(stage_dir / "_SUCCESS", {"fingerprint": fingerprint})


def simulate_run(root: str | os.PathLike, n_entries: int = 2000, n_texts: int = 20000, t: float = 20,
                 seed: int = 0, zipf: float = 1.05, later_stages: bool = False,
                 with_metadata: bool = True) -> dict:
    """Write a consistent run directory under ``root``; return the arrays used (for assertions)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names, sources = _entry_names(n_entries, rng)
    rank = rng.permutation(n_entries)  # popularity rank of each entry id (ids not sorted by it)
    w = 1.0 / (rank + 1.0) ** zipf
    w /= w.sum()
    m = rng.choice([1, 2, 3, 4], size=n_texts, p=[0.35, 0.35, 0.2, 0.1])
    ids = rng.choice(n_entries, size=(n_texts, 4), p=w)
    ids = np.where(np.arange(4)[None, :] < m[:, None], ids, -1)
    ids.sort(axis=1)
    dup = np.zeros(ids.shape, dtype=bool)
    dup[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
    ids[dup] = -1
    valid = ids >= 0
    counts = np.bincount(ids[valid], minlength=n_entries).astype(np.int64)

    def p_keep(tt: float) -> np.ndarray:
        p = np.minimum(1.0, tt / np.maximum(counts, 1))
        pe = np.where(valid, p[np.clip(ids, 0, None)], 0.0)
        return 1.0 - np.prod(1.0 - pe, axis=1)

    pk = p_keep(t)
    keep = rng.random(n_texts) < pk
    kept = np.bincount(ids[valid & keep[:, None]], minlength=n_entries).astype(np.int64)
    unmatched = n_texts // 3
    empty = n_texts // 50
    pool = n_texts + unmatched + empty

    entry_id = np.arange(n_entries, dtype=np.int32)
    if with_metadata:
        md = root / "metadata"
        md.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"entry_id": entry_id, "entry": names, "source": sources,
                                 "score": rng.random(n_entries)}), md / "entries.parquet")
        _write_json(md / "_summary.json", {"stage": "metadata", "in": n_entries + 7, "out": n_entries,
                                          "rejected": {"unmatchable_punctuation": 7}})
        _success(md, "md0")
    # match
    mt = root / "match"
    mt.mkdir(parents=True, exist_ok=True)
    _write_json(mt / "_summary.json", {"stage": "match", "in": pool, "out": n_texts,
                                      "rejected": {"no_match": unmatched, "empty_text": empty},
                                      "files_skipped": [], "metadata_fingerprint": "3f97c419b0071d96e3978647",
                                      "n_entries": n_entries, "reconciled": True,
                                      "seconds": {"duplicate_check": 0.7731, "units": 1.1772},
                                      "task_seconds": {"read": 0.0061, "uid": 0.0062, "validate": 0.0391,
                                                       "match": 0.0241, "assemble": 0.0021, "write": 0.0203},
                                      "units": 5, "wall_seconds": 2.0701})
    _success(mt, "match0")
    rj = root / "rejects" / "match"
    rj.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": ["u1", "u2", "u3"], "stage": ["match"] * 3,
                             "reason": ["no_match", "empty_text", "no_match"],
                             "detail": ["no entry matched: 'a photo of <script>'", "text is empty", "x"]}),
                   rj / "part-00000.parquet")
    # count: entries with count 0 are absent
    ct = root / "count"
    ct.mkdir(parents=True, exist_ok=True)
    nz = counts > 0
    pq.write_table(pa.table({"entry_id": pa.array(entry_id[nz], pa.int32()),
                             "entry": [n for n, z in zip(names, nz) if z],
                             "source": [s for s, z in zip(sources, nz) if z],
                             "count": pa.array(counts[nz], pa.int64())}), ct / "entry_counts.parquet")
    _write_json(ct / "_summary.json", {"stage": "count", "in": n_texts, "out": n_texts, "rejected": {},
                                      "entries_counted": int(nz.sum())})
    _success(ct, "count0")
    # balance
    bl = root / "balance"
    (bl / "_stats").mkdir(parents=True, exist_ok=True)
    kz = kept > 0
    pq.write_table(pa.table({"entry_id": pa.array(entry_id[kz], pa.int32()),
                             "kept": pa.array(kept[kz], pa.int64())}), bl / "_stats" / "kept_counts.parquet")
    grid = sorted(set(np.unique(np.geomspace(1, max(2, counts.max()), 24).round(1)).tolist()) | {float(t)})
    _write_json(bl / "_stats" / "t_sweep.json", {"t": grid, "expected_kept": [float(p_keep(g).sum()) for g in grid],
                                      "chosen_t": float(t)})
    n_kept = int(keep.sum())
    _write_json(bl / "_summary.json", {
        "stage": "balance", "in": n_texts, "out": n_kept, "rejected": {"not_drawn": n_texts - n_kept},
        "t": float(t), "seed": seed, "pool": pool, "matched": n_texts, "expected_kept": float(pk.sum()),
        "kept": n_kept, "head_entries": int((counts > t).sum()), "tail_entries": int(((counts > 0) & (counts <= t)).sum()),
        # the fields a real balance stage adds (a None, nested times, a per-language table)
        "target_size": None, "mode": "metaclip", "after": "match", "online": False, "reconciled": True,
        "seconds": {"units": 0.1223}, "wall_seconds": 0.2714,
        "task_seconds": {"read": 0.017, "draw": 0.001, "assemble": 0.002, "t_sweep": 0.002, "write": 0.013},
        "per_language": {"en": {"t": float(t), "tail_proportion": 0.39913793103448275, "entries": n_entries,
                                "rows_in": n_texts, "rows_kept": n_kept}},
    })
    _success(bl, "bal0")
    if later_stages:
        ok = int(n_kept * 0.9)
        _write_json(root / "download" / "_summary.json", {
            "stage": "download", "in": n_kept, "out": ok,
            "rejected": {"http_404": n_kept - ok - 3, "decode_error": 3}, "bytes": 123456789, "seconds": 12.5})
        _success(root / "download", "dl0")
        _write_json(root / "dedup" / "_summary.json", {
            "stage": "dedup", "in": ok, "out": ok - 5, "rejected": {"eval_near_duplicate": 5},
            "hamming_k": 8, "eval_sets": {"cifar10": 10000}})
        _success(root / "dedup", "dd0")
        _write_json(root / "shards" / "_summary.json", {
            "stage": "shard", "in": ok - 5, "out": ok - 5, "rejected": {}, "shards": 3})
        _success(root / "shards", "sh0")
    return {"counts": counts, "kept": kept, "names": names, "sources": sources, "t": float(t),
            "pool": pool, "matched": n_texts, "n_kept": n_kept, "expected_kept": float(pk.sum())}


SMALL = dict(n_entries=1500, n_texts=12000, t=20)


@pytest.fixture
def fixture_run(tmp_path):
    """Factory: fixture_run(**kwargs) -> (run_dir, info)."""
    def make(name: str = "run", **kwargs):
        root = tmp_path / name
        info = simulate_run(root, **kwargs)
        return root, info
    return make


@pytest.fixture(scope="session")
def reported_run(tmp_path_factory):
    """One small fixture run with its report already written (rendering is the slow part)."""
    from jobs.report import write_report

    root = tmp_path_factory.mktemp("reported") / "run"
    info = simulate_run(root, **SMALL)
    index = write_report(str(root))
    return root, info, index
