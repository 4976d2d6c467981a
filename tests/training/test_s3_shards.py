"""Training reads its shards from ``s3://`` (moto's S3 server on 127.0.0.1), in the main process and
in DataLoader worker processes, with the endpoint and keys taken from the standard AWS env vars."""
import json

import pytest

from jobs.localcluster import free_port
from training.data import dataset_size, expand_shards
from training.loop import TrainConfig, train

BUCKET = "metacurate-train"


@pytest.fixture(scope="module")
def s3_env():
    """moto's threaded S3 server in this process (it keeps serving while DataLoader workers read)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
    fs.mkdir(BUCKET)
    yield fs, env
    server.stop()


@pytest.mark.parametrize("workers", [0, 1])
def test_train_two_steps_from_s3_shards(s3_env, make_shards, tmp_path, monkeypatch, workers):
    import fsspec

    fs, env = s3_env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()  # pick the endpoint up from the env
    local = tmp_path / "shards"
    make_shards.write_shards(local, n_shards=2, per_shard=16, seed=5)
    prefix = f"{BUCKET}/w{workers}/shards"
    for path in sorted(local.iterdir()):
        fs.put(str(path), f"{prefix}/{path.name}")
    pattern = f"s3://{prefix}/{{000000..000001}}.tar"
    urls = expand_shards(pattern)
    assert urls == [f"s3://{prefix}/000000.tar", f"s3://{prefix}/000001.tar"]
    assert dataset_size(urls) == 32  # sizes.json read from the bucket

    out = tmp_path / "run"
    summary = train(TrainConfig(shards=pattern, out=str(out), model="micro", steps=2, batch_size=8, lr=1e-3,
                                workers=workers, shuffle_buffer=8, save_every=2, log_every=1, tokenizer="bpe",
                                vocab_size=300, threads=1, progress=False))
    assert summary["step"] == 2
    assert (out / "checkpoints" / "step_2.pt").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert rows[-1]["data"]["samples"] >= 16 and rows[-1]["data"]["bad_shards"] == 0
