"""The image stages on an s3:// run dir (moto on 127.0.0.1) with the config's `storage:` options only.

No AWS_* variable is set in this process: if any fsspec call in download / evalsets hash / dedup /
shard / audit dropped the options, it would not find the moto endpoint and the test would fail.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def _jpeg(img, q=90) -> bytes:
    b = io.BytesIO()
    img.convert("RGB").save(b, "JPEG", quality=q)
    return b.getvalue()


def _put_parquet(fs, table: pa.Table, path: str) -> None:
    b = io.BytesIO()
    pq.write_table(table, b)
    fs.pipe_file(path, b.getvalue())


@pytest.fixture()
def moto_opts(moto_endpoint, monkeypatch):
    """The moto S3 server; the storage options come from a RunConfig, the env has no AWS_* at all."""
    from jobs.config import load_config

    for var in [v for v in os.environ if v.startswith("AWS_") or v == "S3_ENDPOINT_URL"]:
        monkeypatch.delenv(var)
    cfg = load_config(None, ["run_dir=s3://imgs3/run", f"storage.endpoint_url={moto_endpoint}",
                             "storage.key=testing", "storage.secret=testing", "download.image_size=64",
                             "download.processes=1", "download.threads=4", "download.timeout=3",
                             "download.samples_per_shard=4", "download.allow_loopback=true", "dedup.k=8",
                             "shard.samples_per_shard=3"])
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **cfg.storage.storage().options)
    fs.mkdir("imgs3")
    return cfg, fs


def test_image_stages_on_s3_with_config_storage_options(moto_opts, http_server, natural, spark, tmp_path):
    from curation.evalsets import hash_evalset
    from curation.shards import read_tar_samples
    from jobs.config import run_dir_of
    from jobs.stages import run_stages

    cfg, fs = moto_opts
    storage = cfg.storage.storage()
    opts = storage.options
    assert not [v for v in os.environ if v.startswith("AWS_")]
    rng = np.random.default_rng(5)
    evals = [natural(rng, 300, 300) for _ in range(2)]
    for i, im in enumerate(evals):
        b = io.BytesIO()
        im.save(b, "PNG")
        fs.pipe_file(f"imgs3/evalimgs/e{i}.png", b.getvalue())
    routes = {f"/s3ok{i}.jpg": _jpeg(natural(rng, 220, 260)) for i in range(5)}
    routes["/s3planted.jpg"] = _jpeg(evals[0].resize((150, 150)), 60)
    http_server.routes.update({p: (200, b, 0.0) for p, b in routes.items()})
    paths = sorted(routes) + ["/s3missing.jpg"]
    run = "s3://imgs3/run"
    _put_parquet(fs, pa.table({"uid": [p.strip("/").split(".")[0] for p in paths],
                               "url": [http_server.url(p) for p in paths],
                               "text": [f"caption {p}" for p in paths],
                               "entry_ids": pa.array([[1, 2]] * len(paths), pa.list_(pa.int32())),
                               "p_keep": [0.5] * len(paths)}), "imgs3/run/balance/part-000000.parquet")
    bal = run_dir_of(cfg).stage("balance")  # marked complete, as if it had run
    bal.write_summary({"in": len(paths), "out": len(paths), "rejected": {}})
    bal.write_success("test-balance")
    _put_parquet(fs, pa.table({"entry_id": pa.array([1, 2], pa.int32()), "entry": ["one", "two"]}),
                 "imgs3/run/metadata/entries.parquet")

    def stage(name):
        return run_stages(cfg, [name], spark=spark, add_upstream=False)[name]

    s = stage("download")
    assert s["in"] == 7 and s["out"] == 6 and s["rejected"] == {"http_404": 1}
    fs.invalidate_cache()
    assert fs.glob("imgs3/run/download/*.tar") and fs.glob("imgs3/run/download/_input/*.parquet")
    rej = pq.read_table(io.BytesIO(fs.cat_file("imgs3/run/rejects/download/part-00000.parquet"))).to_pylist()
    assert [(r["uid"], r["reason"]) for r in rej] == [("s3missing", "http_404")]

    h = hash_evalset("toy", "s3://imgs3/evalimgs", f"{run}/evalsets", storage)
    assert h["hashed"] == 2
    d = stage("dedup")
    assert d["in"] == 6 and d["rejected"] == {"eval_overlap": 1}
    fs.invalidate_cache()
    overlap = storage.read_parquet(f"{run}/dedup/overlap").to_pylist()
    assert [r["uid"] for r in overlap] == ["s3planted"]

    sh = stage("shard")
    assert sh["out"] == 5
    fs.invalidate_cache()
    sizes = json.loads(fs.cat_file("imgs3/run/shards/sizes.json"))
    assert sizes == {"000000.tar": 3, "000001.tar": 2}
    got = [json.loads(x["json"]) for x in read_tar_samples(f"{run}/shards/000000.tar", storage)]
    assert len(got) == 3 and all(g["entries"] == ["one", "two"] and len(g["phash"]) == 16 for g in got)
    assert "s3planted" not in {g["uid"] for g in got}

    # the audit reads hashes, eval sources and tars from the bucket and writes its page there,
    # with the options from `metacurate audit --config` (the config's `storage:` section)
    import yaml

    from jobs.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": run, "pool": {"path": "s3://imgs3/pool"},
                                   "metadata": {"path": "s3://imgs3/m.json"}, "balance": {"t": 10},
                                   "storage": {"endpoint_url": opts["endpoint_url"], "key": opts["key"],
                                               "secret": opts["secret"]}}))
    assert main(["audit", run, "--config", str(cfg)]) == 0
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("imgs3/run/audit")) == ["audit.json", "index.html", "k_sweep.png"]
    audit = json.loads(fs.cat_file("imgs3/run/audit/audit.json"))
    assert audit["overlapping_pool_images"] == 1 and audit["per_dataset"]["toy"]["pool_images"] == 1
    page = fs.cat_file("imgs3/run/audit/index.html").decode()
    assert "s3planted" in page and page.count("src='data:image/jpeg;base64,") == 2  # both thumbnails loaded
    assert fs.cat_file("imgs3/run/audit/k_sweep.png")[:4] == b"\x89PNG"
    assert main(["audit", "--shards", f"{run}/download", "--evalsets", f"{run}/evalsets", "--out", f"{run}/audit2",
                 "-c", str(cfg)]) == 0
    fs.invalidate_cache()
    assert json.loads(fs.cat_file("imgs3/run/audit2/audit.json"))["overlapping_pool_images"] == 1
    assert not os.path.exists("imgs3") and not (tmp_path / "imgs3").exists()  # nothing went to local disk
