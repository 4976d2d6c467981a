"""A run directory is relocatable: nothing inside it stores its own absolute path, so a copy (to
another disk, a bucket, a colleague's machine) reads, resumes and re-runs like the original.

Found on main: dedup stored absolute tar paths, so a copied run dir gave
``shard: out=0 rejected={missing_phash: 124}``."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def _strings_in(path) -> list[str]:
    """Every string a run file holds: the text of JSON/text files, every string cell of parquet."""
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        out = []
        for col in t.columns:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                out += [v for v in col.to_pylist() if v]
        return out
    if path.suffix in (".json", ".jsonl", ".txt", ".html", ".csv", ".yaml", ""):
        return [path.read_text(errors="replace")]
    return []


def test_a_copied_run_dir_resumes_and_holds_no_absolute_path(spark, tmp_path, http_server, natural):
    from curation.evalsets import hash_evalset
    from curation.storage import Storage
    from jobs.config import load_config
    from jobs.stages import run_stages

    rng = np.random.default_rng(11)
    web = tmp_path / "web"
    (web / "pool").mkdir(parents=True)
    rows = []
    for i in range(12):
        b = io.BytesIO()
        natural(rng, 100, 90).save(b, "JPEG", quality=90)
        http_server.routes[f"/reloc{i}.jpg"] = (200, b.getvalue(), 0.0)
        rows.append((http_server.url(f"/reloc{i}.jpg"), f"a {'dog' if i % 3 else 'cat'} {i}"))
    pq.write_table(pa.table({"url": [u for u, _ in rows], "text": [t for _, t in rows]}), web / "pool" / "p.parquet")
    (web / "metadata.json").write_text(json.dumps(["dog", "cat"]))
    (web / "evalimgs").mkdir()
    natural(np.random.default_rng(99), 100, 100).save(web / "evalimgs" / "e.png")

    def config(run):
        return load_config(None, values={
            "run_dir": str(run), "pool.path": str(web / "pool"), "metadata.path": str(web / "metadata.json"),
            "balance.t": 100, "download.allow_loopback": True, "download.image_size": 64, "download.processes": 1,
            "download.threads": 4, "download.timeout": 5, "shard.samples_per_shard": 5})

    first = tmp_path / "first" / "run"
    hash_evalset("toy", str(web / "evalimgs"), str(first / "evalsets"), Storage())
    s1 = run_stages(config(first), spark=spark)
    assert s1["shard"]["out"] == 12 and s1["shard"]["rejected"] == {}

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, moved)
    shutil.rmtree(tmp_path / "first")
    leaks = [(str(p.relative_to(moved)), v[:120]) for p in moved.rglob("*") if p.is_file()
             for v in _strings_in(p) if str(first) in v or "/first/" in v]
    assert not leaks, f"the run dir stores its own absolute path: {leaks[:5]}"

    # the copy is complete: nothing re-runs ...
    marks = {p: p.stat().st_mtime_ns for p in moved.glob("*/_SUCCESS")}
    assert len(marks) >= 7
    run_stages(config(moved), spark=spark)
    assert {p: p.stat().st_mtime_ns for p in moved.glob("*/_SUCCESS")} == marks
    # ... and a stage re-run in the copy reads its upstream from the copy
    for name, folder in (("shard", "shards"), ("dedup", "dedup")):
        shutil.rmtree(moved / folder)
        shutil.rmtree(moved / "rejects" / name, ignore_errors=True)
    s3 = run_stages(config(moved), spark=spark)
    assert s3["shard"]["out"] == 12 and s3["shard"]["rejected"] == {}, s3["shard"]
    assert s3["dedup"]["in"] == s1["dedup"]["in"] and s3["dedup"]["out"] == s1["dedup"]["out"]
    m1 = json.loads(json.dumps(s1["shard"].get("shards")))
    assert s3["shard"]["shards"] == m1
