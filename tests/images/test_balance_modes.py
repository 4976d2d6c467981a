"""Balancing after download and online balancing, through the real stages on a loopback web.

A pool where the most common entry ("dog") also has the most dead links: balanced before
download, its count includes the rows that never arrive; balanced after download, the counts are
over the images that did arrive, so the draw differs exactly as the formula says.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

pytestmark = pytest.mark.slow
T = 6


@pytest.fixture(scope="module")
def web(tmp_path_factory, http_server, natural):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("bmodes")
    rows = []
    for i in range(40):
        entry = "dog" if i < 24 else "cat"
        path = f"/bm{i}.jpg"
        if entry == "dog" and i % 2:  # half of the dog images are gone
            rows.append((http_server.url(f"/gone{i}.jpg"), f"a {entry} {i}"))
            continue
        b = io.BytesIO()
        natural(rng, 120, 120).save(b, "JPEG", quality=90)
        http_server.routes[path] = (200, b.getvalue(), 0.0)
        rows.append((http_server.url(path), f"a {entry} {i}"))
    (root / "pool").mkdir()
    pq.write_table(pa.table({"url": [u for u, _ in rows], "text": [t for _, t in rows]}), root / "pool" / "p.parquet")
    (root / "metadata.json").write_text(json.dumps(["dog", "cat"]))
    # the eval set: one image nobody uses (dedup needs eval hashes; nothing overlaps)
    (root / "evalimgs").mkdir()
    natural(np.random.default_rng(99), 100, 100).save(root / "evalimgs" / "e.png")
    return root


def _run(spark, web, tmp_path, **balance) -> tuple[dict, list[dict]]:
    from curation.evalsets import hash_evalset
    from curation.storage import Storage
    from jobs.config import load_config
    from jobs.stages import run_stages

    run = tmp_path / "run"
    hash_evalset("toy", str(web / "evalimgs"), str(run / "evalsets"), Storage())
    values = {"run_dir": str(run), "pool.path": str(web / "pool"), "metadata.path": str(web / "metadata.json"),
              "balance.t": T, "balance.seed": 5, "download.allow_loopback": True, "download.image_size": 64,
              "download.processes": 1, "download.threads": 4, "download.timeout": 5, "shard.samples_per_shard": 50,
              **{f"balance.{k}": v for k, v in balance.items()}}
    summaries = run_stages(load_config(None, values=values), spark=spark)
    samples = [json.loads(s["json"]) for s in wds.WebDataset(sorted(str(p) for p in (run / "shards").glob("*.tar")),
                                                             shardshuffle=False)]
    return summaries, samples


def _p_keep(ids: list[int], counts: dict[int, int]) -> float:
    q = 1.0
    for e in ids:
        q *= 1.0 - min(1.0, T / counts[e])
    return 1.0 - q


def test_balance_after_download_counts_the_images_that_arrived(spark, web, tmp_path):
    from curation.balancing import uniform_from_uid

    s, samples = _run(spark, web, tmp_path, after="download")
    assert s["balance"]["out"] == s["balance"]["in"] == 40  # everything goes on to the download
    assert s["download"]["out"] == 28 and s["download"]["rejected"] == {"http_404": 12}
    figures = s["shard"]["balance_after_download"]
    assert figures["survivors"] == 28 and figures["t"] == T
    arrived = {0: 12, 1: 16}  # dog: 24 matched, 12 arrived; cat: 16 and 16
    after = pq.read_table(tmp_path / "run" / "shards" / "_stats" / "after_download.parquet").to_pydict()
    assert dict(zip(after["entry_id"], after["count_downloaded"])) == arrived
    assert dict(zip(after["entry_id"], after["count_matched"])) == {0: 24, 1: 16}
    # every survivor's draw follows the counts over what arrived, and the kept ones carry that p_keep
    written = {m["uid"]: m for m in samples}
    rejected = pq.read_table(tmp_path / "run" / "rejects" / "shard").to_pydict()
    assert set(rejected["reason"]) <= {"balanced_out"}
    assert len(written) + len(rejected["uid"]) == 28 == s["shard"]["in"]
    for uid, m in written.items():
        p = _p_keep(m["entry_ids"], arrived)
        assert m["p_keep"] == pytest.approx(p, abs=1e-12) and uniform_from_uid(5, uid) < p
    inputs = pq.read_table(tmp_path / "run" / "download" / "_input").to_pydict()
    ids_of = dict(zip(inputs["uid"], inputs["entry_ids"]))
    for uid in rejected["uid"]:  # drawn out: u >= the p_keep of the counts over what arrived
        assert uniform_from_uid(5, uid) >= _p_keep(ids_of[uid], arrived)
    assert figures["kept"] == len(written)


def test_online_balance_ships_every_arrived_row_with_its_p_keep(spark, web, tmp_path):
    s, samples = _run(spark, web, tmp_path, online=True)
    assert s["balance"]["out"] == 40 and s["shard"]["out"] == 28 and "balanced_out" not in s["shard"]["rejected"]
    matched = {0: 24, 1: 16}  # online after match: p_keep from the counts of the matched pool
    for m in samples:
        assert m["p_keep"] == pytest.approx(_p_keep(m["entry_ids"], matched), abs=1e-12)
    assert {round(m["p_keep"], 6) for m in samples} == {round(T / 24, 6), round(T / 16, 6)}
