"""Shard writer: webdataset reads it back; atomic, resumable, safe keys, sizes.json, manifest."""
from __future__ import annotations

import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from curation.shards import read_tar_samples, sanitize_key, write_shards


def _samples(n: int, prefix: str = "u"):
    for i in range(n):
        yield {"key": f"{prefix}{i}", "jpg": bytes([i % 256]) * (10 + i), "txt": f"caption ü {i}",
               "json": {"uid": f"{prefix}{i}", "url": f"http://x/{i}.jpg", "entry_ids": [i, i + 1],
                        "entries": ["a", "b"], "phash": f"{i:016x}", "p_keep": 0.5}}


def test_write_and_read_back_with_webdataset(tmp_path):
    import webdataset as wds

    res = write_shards(_samples(25), str(tmp_path), 10)
    assert res.shards == ["000000.tar", "000001.tar", "000002.tar"] and res.samples == 25
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"000000.tar": 10, "000001.tar": 10, "000002.tar": 5}
    ds = wds.WebDataset(str(tmp_path / "{000000..000002}.tar"), shardshuffle=False)
    got = list(ds)
    assert len(got) == 25
    first = got[0]
    assert first["txt"].decode() == "caption ü 0"
    meta = json.loads(first["json"])
    assert meta["uid"] == "u0" and meta["entry_ids"] == [0, 1] and meta["phash"] == "0" * 16
    man = pq.read_table(tmp_path / "manifest.parquet")
    assert man.num_rows == 25 and man.column("phash").to_pylist()[3] == 3
    assert man.column("bytes").to_pylist()[0] == 10


def test_keys_are_sanitised(tmp_path):
    bad = ["../../etc/passwd", "/abs/path", "a.b.c", "dup", "dup", ""]
    samples = [{"key": k, "jpg": b"x", "txt": "t", "json": {"uid": str(i)}} for i, k in enumerate(bad)]
    write_shards(samples, str(tmp_path), 100)
    with tarfile.open(tmp_path / "000000.tar") as tar:
        names = tar.getnames()
    for n in names:
        assert "/" not in n and ".." not in n and n.count(".") == 1
    keys = [n.split(".")[0] for n in names if n.endswith(".jpg")]
    assert len(set(keys)) == len(bad)
    assert sanitize_key("../x") == "___x"


def test_interrupted_write_never_leaves_final_name_and_resume(tmp_path):
    class Boom(RuntimeError):
        pass

    def failing():
        for i, s in enumerate(_samples(25)):
            if i == 15:  # in the middle of shard 1
                raise Boom()
            yield s

    with pytest.raises(Boom):
        write_shards(failing(), str(tmp_path), 10)
    files = sorted(os.listdir(tmp_path))
    assert "000000.tar" in files and "000001.tar" not in files
    # a tar being written when the process died exists only under its temporary name
    mtime0 = os.path.getmtime(tmp_path / "000000.tar")
    (tmp_path / "000001.tar.tmp").write_bytes(b"truncated garbage")
    res = write_shards(_samples(25), str(tmp_path), 10)
    assert res.skipped == ["000000.tar"] and res.written == ["000001.tar", "000002.tar"]
    assert os.path.getmtime(tmp_path / "000000.tar") == mtime0
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert sum(1 for _ in read_tar_samples(str(tmp_path / "000001.tar"))) == 10
    assert json.loads((tmp_path / "sizes.json").read_text())["000002.tar"] == 5


@pytest.mark.slow
def test_shards_on_s3_api(moto_aws_env):
    """Same writer on an s3:// prefix (moto server on 127.0.0.1; endpoint via AWS_ENDPOINT_URL)."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("shards-test")
    res = write_shards(_samples(12), "s3://shards-test/run/shards", 5)
    assert res.written == ["000000.tar", "000001.tar", "000002.tar"]
    res2 = write_shards(_samples(12), "s3://shards-test/run/shards", 5)
    assert res2.skipped == res.written and not res2.written
    got = list(read_tar_samples("s3://shards-test/run/shards/000001.tar"))
    assert [json.loads(g["json"])["uid"] for g in got] == [f"u{i}" for i in range(5, 10)]
    sizes = json.loads(fs.cat_file("shards-test/run/shards/sizes.json"))
    assert sizes == {"000000.tar": 5, "000001.tar": 5, "000002.tar": 2}
    assert not fs.glob("shards-test/run/shards/*.tmp")
