"""download -> dedup -> shard -> audit against a local HTTP server (no internet)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.neardup import brute_force_pairs

pytestmark = pytest.mark.slow


def _jpeg(img, q=92):
    import io
    b = io.BytesIO()
    img.convert("RGB").save(b, "JPEG", quality=q)
    return b.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory, http_server, natural, huge_png_header):
    """A run dir with balance/ rows pointing at the server, and an eval image folder."""
    rng = np.random.default_rng(42)
    root = tmp_path_factory.mktemp("run")
    evals_dir = root / "evalimgs" / "sub"
    evals_dir.mkdir(parents=True)
    eval_imgs = [natural(rng, 320, 320) for _ in range(4)]
    for i, im in enumerate(eval_imgs):
        im.save(evals_dir / f"e{i}.png")
    routes, expect = {}, {}
    for i in range(14):
        routes[f"/ok{i}.jpg"] = (200, _jpeg(natural(rng, int(rng.integers(200, 400)), int(rng.integers(200, 400)))), 0.0)
        expect[f"/ok{i}.jpg"] = "success"
    for i in range(3):  # planted eval near-duplicates: half size + recompression
        im = eval_imgs[i]
        routes[f"/planted{i}.jpg"] = (200, _jpeg(im.resize((160, 160)), 60), 0.0)
        expect[f"/planted{i}.jpg"] = "success"
    expect.update({"/missing0.jpg": "http_404", "/missing1.jpg": "http_404", "/later.jpg": "http_404"})
    routes["/slow.jpg"] = (200, routes["/ok0.jpg"][1], 6.0)
    expect["/slow.jpg"] = "timeout"
    routes["/corrupt.jpg"] = (200, routes["/ok1.jpg"][1][:300] + b"\x00garbage" * 50, 0.0)
    expect["/corrupt.jpg"] = "decode_error"
    routes["/empty.jpg"] = (200, b"", 0.0)
    expect["/empty.jpg"] = "decode_error"
    routes["/huge.png"] = (200, huge_png_header(), 0.0)  # refused from its header, before decoding
    expect["/huge.png"] = "too_large"
    routes["/tiny.jpg"] = (200, _jpeg(natural(rng, 12, 12)), 0.0)
    expect["/tiny.jpg"] = "too_small"
    http_server.routes.update(routes)
    paths = sorted(expect)
    bal = root / "balance"
    bal.mkdir()
    t = pa.table({"uid": [f"uid-{p.strip('/').split('.')[0]}" for p in paths],
                  "url": [http_server.url(p) for p in paths],
                  "text": [f"a photo {i}" for i in range(len(paths))],
                  "entry_ids": pa.array([[i % 3, 5] for i in range(len(paths))], pa.list_(pa.int32())),
                  "p_keep": [0.25] * len(paths)})
    pq.write_table(t, bal / "part-000000.parquet")
    _complete(root, "balance", {"in": len(paths), "out": len(paths), "rejected": {}})
    (root / "metadata").mkdir()
    pq.write_table(pa.table({"entry_id": pa.array(range(6), pa.int32()), "entry": [f"e{i}" for i in range(6)]}),
                   root / "metadata" / "entries.parquet")
    return {"root": root, "expect": {f"uid-{p.strip('/').split('.')[0]}": r for p, r in expect.items()},
            "evals": root / "evalimgs", "server": http_server, "later_body": routes["/ok2.jpg"][1]}


def _complete(root, name, summary):
    """Mark an upstream stage complete, as if it had run (these tests start at download)."""
    from curation.rundir import RunDir

    d = RunDir(str(root)).stage(name)
    d.storage.makedirs(d.url)
    d.write_summary(summary)
    d.write_success(f"test-{name}")


def _config(root, **values):
    from jobs.config import load_config

    base = {"run_dir": str(root), "download.image_size": 96, "download.resize_mode": "center_crop",
            "download.processes": 1, "download.threads": 8, "download.timeout": 2, "download.min_image_size": 32,
            "download.samples_per_shard": 8, "download.allow_loopback": True,  # the test server is on 127.0.0.1
            "dedup.k": 8, "shard.samples_per_shard": 5}
    return load_config(None, values={**base, **values})


def test_download_dedup_shard_audit(run, spark):
    from curation.evalsets import hash_evalset
    from curation.rundir import RunDir
    from curation.storage import Storage
    from jobs.cli import main
    from jobs.stages import download, run_stages
    from jobs.stages.base import StageContext

    root = run["root"]
    cfg = _config(root)

    def stage(name):
        return run_stages(cfg, [name], spark=spark, add_upstream=False)[name]

    s = stage("download")
    assert s["in"] == len(run["expect"]) == s["out"] + sum(s["rejected"].values())
    rej = pq.read_table(root / "rejects/download").to_pylist()
    got = {r["uid"]: r["reason"] for r in rej}
    want = {u: r for u, r in run["expect"].items() if r != "success"}
    assert got == want, (got, want)
    assert all(r["stage"] == "download" and r["detail"] for r in rej)
    n_ok = s["out"]

    # the server now serves the image that 404'd; retry only the failed ones
    run["server"].routes["/later.jpg"] = (200, run["later_body"], 0.0)
    before = json.loads((root / "download" / "_SUCCESS").read_text())
    s2 = download.STAGE.retry_failed(StageContext(cfg=cfg, run=RunDir(str(root))))
    assert s2["out"] == n_ok + 1 and s2["in"] == s["in"]
    assert "uid-later" not in set(pq.read_table(root / "rejects/download").column("uid").to_pylist())
    assert s2["rejected"] == {r: n - (r == "http_404") for r, n in s["rejected"].items() if n - (r == "http_404")}
    assert len(list((root / "download").glob("*.tar"))) == 5  # 4 shards + 1 shard of retries
    after = json.loads((root / "download" / "_SUCCESS").read_text())
    assert after["retry"] == 1 and after["fingerprint"] == before["fingerprint"] != after["output_id"]
    assert json.loads((root / "download" / "_summary.json").read_text())["out"] == s2["out"]

    h = hash_evalset("toy-eval", str(run["evals"]), str(root / "evalsets"), Storage())
    assert h["hashed"] == 4
    d = stage("dedup")
    assert d["in"] == s2["out"] and d["rejected"] == {"eval_overlap": 3}
    overlap = pq.read_table(root / "dedup/overlap").to_pylist()
    assert {r["uid"] for r in overlap} == {"uid-planted0", "uid-planted1", "uid-planted2"}
    assert all(r["dataset"] == "toy-eval" and r["tar"].startswith("download/") for r in overlap)
    # Spark search == brute force over the same hashes
    hashes = pq.read_table(root / "dedup/hashes")
    evals = pq.read_table(root / "dedup/eval_hashes")
    q, e, dist = brute_force_pairs(hashes.column("phash").to_numpy(), evals.column("phash").to_numpy(), 8)
    bf = {(hashes.column("uid")[int(i)].as_py(), evals.column("key")[int(j)].as_py(), int(x)) for i, j, x in zip(q, e, dist)}
    assert bf == {(r["uid"], r["key"], r["hamming"]) for r in overlap}
    drej = pq.read_table(root / "rejects/dedup").to_pylist()
    assert all(r["reason"] == "eval_overlap" and "dataset=toy-eval" in r["detail"] for r in drej)

    sh = stage("shard")
    assert sh["out"] == d["out"] == s2["out"] - 3
    import webdataset as wds
    sizes = json.loads((root / "shards/sizes.json").read_text())
    pattern = str(root / "shards" / f"{{000000..{len(sizes) - 1:06d}}}.tar")
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil"))
    assert len(samples) == sh["out"] == sum(sizes.values())
    meta = samples[0]["json"]
    assert set(meta) >= {"uid", "url", "entry_ids", "entries", "phash", "p_keep"}
    assert meta["entries"] == [f"e{i}" for i in meta["entry_ids"]] and len(meta["phash"]) == 16
    assert isinstance(samples[0]["jpg"], Image.Image) and samples[0]["jpg"].size == (96, 96)
    assert not {m["json"]["uid"] for m in samples} & {"uid-planted0", "uid-planted1", "uid-planted2"}

    assert main(["audit", str(root)]) == 0
    a = json.loads((root / "audit/audit.json").read_text())
    page = (root / "audit/index.html").read_text()
    assert a["overlapping_pool_images"] == 3 and a["per_dataset"]["toy-eval"]["pool_images"] == 3
    assert "k_sweep.png" in page and page.count("data:image/jpeg;base64,") == 2 * a["pairs"]
    assert a["k_sweep"]["overlapping_pool_images"][8] == 3
    assert (root / "audit/k_sweep.png").stat().st_size > 1000


def test_cli_evalsets_and_audit_shards(run, tmp_path):
    from jobs.cli import main

    root = run["root"]
    if not (root / "shards").exists():
        pytest.skip("needs the pipeline test's run")
    out = tmp_path / "run2"
    assert main(["evalsets", "hash", "--name", "toy-eval", "--images", str(run["evals"]), "--out", str(out)]) == 0
    assert pq.read_table(out / "toy-eval.parquet").num_rows == 4
    # the download tars still hold the planted images: an audit of them finds the 3 overlaps
    rc = main(["audit", "--shards", str(root / "download" / "{00000..00003}.tar"), "--evalsets", str(out),
               "--out", str(tmp_path / "aud")])
    assert rc == 0
    assert json.loads((tmp_path / "aud/audit.json").read_text())["overlapping_pool_images"] == 3
    # the curated shards are clean
    assert main(["audit", "--shards", str(root / "shards"), "--evalsets", str(out), "--out", str(tmp_path / "aud2")]) == 0
    assert json.loads((tmp_path / "aud2/audit.json").read_text())["overlapping_pool_images"] == 0
    assert main(["audit"]) == 2
