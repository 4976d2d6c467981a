"""Training reads its shards from ``s3://`` (moto's S3 server on 127.0.0.1), in the main process and
in DataLoader worker processes, with the endpoint and keys taken from the standard AWS env vars."""
import json

import pytest

from training.data import dataset_size, expand_shards
from training.loop import TrainConfig, train

BUCKET = "metacurate-train"


@pytest.fixture(scope="module")
def s3_fs(moto_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    return fs


@pytest.mark.parametrize("workers", [0, 1])
def test_train_two_steps_from_s3_shards(s3_fs, moto_aws_env, make_shards, tmp_path, workers):
    fs = s3_fs  # the code under test finds the endpoint through the AWS_* env only (moto_aws_env)
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
