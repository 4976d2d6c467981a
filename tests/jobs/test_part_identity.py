"""Pins the bytes of the `match/` and `balance/` part files (and their reject parts) for a fixed pool, metadata and seed.

The hashes in ``data/part_hashes.json`` were recorded before the stage layer was restructured, so
this test shows that moving code between modules changed no output. Parquet files carry the
writer's version (``created_by``), so the file hashes are compared when this pyarrow is the one
that recorded them; the content hashes (schema + every value, in order) are compared always.

Regenerate (only when an output change is intended, and say why in the commit):
    METACURATE_RECORD_PART_HASHES=1 python -m pytest tests/jobs/test_part_identity.py
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import main

HASHES = Path(__file__).parent / "data" / "part_hashes.json"
ENTRIES = ["dog", "cat", "hot dog", "red", "blue", "photo", "image", "tree", "big tree", "car",
           "sea turtle", "stock photo", "a", "river", "cat.", "c++", "new york", "york"]
WORDS = ENTRIES + ["the", "on", "in", "with", "my", "dog's", "(dog)", "T-shirt", "北京", "\u00e9t\u00e9",
                   ",", ".", "!", "?", "untitled"]


def _write_pool(root: Path) -> tuple[str, str]:
    """Three files with several row groups: uids given in one, nulls, blanks, repeats of a uid, a
    pass-through column, captions with tabs and newlines."""
    rng = random.Random(7)
    pool = root / "pool"
    pool.mkdir()
    uid_n = 0
    for f in range(3):
        urls, texts, uids, extra = [], [], [], []
        for i in range(700):
            r = rng.random()
            if r < 0.03:
                text = None
            elif r < 0.06:
                text = rng.choice(["", "  ", "\t"])
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
                if rng.random() < 0.1:
                    text = text.replace(" ", rng.choice(["\t", "\n", " , "]), 1)
            urls.append(None if rng.random() < 0.01 else f"http://img.example/{f}/{i}.jpg")
            texts.append(text)
            uid_n += 1
            uids.append(f"u{uid_n if rng.random() > 0.02 else max(1, uid_n - 5)}")
            extra.append(rng.randint(0, 100))
        cols = {"url": urls, "text": texts, "width": extra}
        if f == 1:
            cols["uid"] = uids
        pq.write_table(pa.table(cols), pool / f"part-{f}.parquet", row_group_size=200)
    meta = root / "metadata.json"
    meta.write_text(json.dumps(ENTRIES), encoding="utf-8")
    return str(pool), str(meta)


def _content_hash(path: str) -> str:
    table = pq.read_table(path)
    h = hashlib.sha256(str(table.schema.remove_metadata()).encode())
    h.update(json.dumps(table.to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _part_hashes(run: Path) -> dict:
    out = {}
    for folder, pattern in (("match", "part-*.parquet"), ("balance", "part-*.parquet"),
                            ("rejects/match", "*.parquet"), ("rejects/balance", "*.parquet")):
        for path in sorted((run / folder).glob(pattern)):
            key = f"{folder}/{path.name}"
            out[key] = {"file": hashlib.sha256(path.read_bytes()).hexdigest(), "content": _content_hash(str(path))}
    return out


def test_match_and_balance_parts_are_byte_identical(spark, tmp_path):
    pool, meta = _write_pool(tmp_path)
    run = tmp_path / "run"
    assert main(["curate", "--pool", pool, "--metadata", meta, "--out", str(run), "--t", "40",
                 "--seed", "3"]) == 0
    got = _part_hashes(run)
    assert any(k.startswith("match/") for k in got) and any(k.startswith("balance/") for k in got)
    reasons = set(pq.read_table(run / "rejects" / "match").column("reason").to_pylist())
    assert {"duplicate_uid", "null_text", "empty_text", "no_match", "null_url"} <= reasons
    if os.environ.get("METACURATE_RECORD_PART_HASHES"):
        HASHES.parent.mkdir(exist_ok=True)
        HASHES.write_text(json.dumps({"pyarrow": pa.__version__, "parts": got}, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(HASHES.read_text())
    assert sorted(got) == sorted(pinned["parts"])
    for key, want in pinned["parts"].items():
        assert got[key]["content"] == want["content"], f"{key}: rows or schema changed"
        if pinned["pyarrow"] == pa.__version__:
            assert got[key]["file"] == want["file"], f"{key}: file bytes changed"
