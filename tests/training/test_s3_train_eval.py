"""`metacurate train` and `metacurate eval` entirely on an object store (moto's S3 server), with the
storage given only by the `storage:` section of a --config file: no AWS_* variable and no ~/.aws
file exists, so every read and write (shards, sizes.json, tokenizer, metrics, checkpoints, resume
discovery, eval datasets, overlap table, results, html) must go through the configured Storage,
in the main process and in the DataLoader worker."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.config import storage_for
from training.tensorboard import read_events

BUCKET = "metacurate-train-eval"


@pytest.fixture()
def no_aws_env(monkeypatch, tmp_path):
    """No AWS_* variable and a HOME without ~/.aws: only the config file can reach the server."""
    import s3fs

    for name in list(os.environ):
        if name.startswith("AWS_") or name == "S3_ENDPOINT_URL":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.slow  # a moto server, two short training runs and an eval (~20 s)
def test_train_resume_and_eval_on_s3_with_storage_from_config(moto_endpoint, no_aws_env, make_shards, tmp_path,
                                                              capsys):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    local = tmp_path / "shards"
    make_shards.write_shards(local, n_shards=2, per_shard=16, seed=5)
    for path in sorted(local.iterdir()):
        fs.put(str(path), f"{BUCKET}/run/shards/{path.name}")
    fs.pipe(f"{BUCKET}/run/dedup/overlap/part-00000.parquet", _overlap_parquet())
    config = tmp_path / "run.yaml"
    config.write_text(f"storage:\n  endpoint_url: {moto_endpoint}\n  key: testing\n  secret: testing\n")
    shards = f"s3://{BUCKET}/run/shards/{{000000..000001}}.tar"
    out = f"s3://{BUCKET}/train"
    common = ["--config", str(config), "--shards", shards, "--out", out, "--model", "micro", "--batch-size", "8",
              "--workers", "1", "--threads", "1", "--no-progress", "--vocab-size", "300", "--log-every", "1",
              "--shuffle-buffer", "8"]

    assert main(["train", *common, "--steps", "3", "--stop-after", "2", "--save-every", "1"]) == 0
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{BUCKET}/train/checkpoints")) == ["step_1.pt", "step_2.pt"]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{BUCKET}/train")) == [
        "checkpoints", "config.json", "metrics.jsonl", "tensorboard", "tokenizer.json"]
    capsys.readouterr()
    # resume: the latest step_N.pt is found on the bucket
    assert main(["train", *common, "--steps", "3", "--save-every", "1", "--resume", "auto"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rindex('{\n  "step"'):])
    assert summary["step"] == 3 and summary["checkpoint"] == f"{out}/checkpoints/step_3.pt"
    rows = [json.loads(line) for line in fs.cat(f"{BUCKET}/train/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["data"]["samples"] >= 8 and rows[-1]["data"]["bad_shards"] == 0
    # TensorBoard: object stores cannot append, so each run wrote its own event file whole
    events = sorted(fs.ls(f"{BUCKET}/train/tensorboard"))
    assert len(events) == 2
    steps = [e.step for path in events for e in read_events(f"s3://{path}", storage_for(str(config)))
             if e.scalars]
    assert sorted(steps) == [1, 2, 3]

    results = f"s3://{BUCKET}/eval/results.json"
    rc = main(["eval", "--config", str(config), "--checkpoint", out, "--zeroshot", "digits",
               "--retrieval", f"shards={shards}", "--overlap", f"s3://{BUCKET}/run", "--out", results,
               "--html", f"s3://{BUCKET}/eval/html", "--batch-size", "16"])
    assert rc == 0
    doc = json.loads(fs.cat(f"{BUCKET}/eval/results.json"))
    assert doc["checkpoint"] == out and doc["samples_seen"] == 24
    assert doc["zeroshot"]["digits"]["n"] == 1797
    assert doc["zeroshot"]["digits"]["overlap"]["n_overlapping"] == 1  # key 0003 is in the overlap table
    assert doc["retrieval"]["shards"]["n_images"] == 32
    assert fs.exists(f"{BUCKET}/eval/html/index.html") and fs.exists(f"{BUCKET}/eval/html/zeroshot_digits.png")


def _overlap_parquet() -> bytes:
    table = pa.table({"uid": ["u"], "dataset": ["digits"], "key": ["0003"], "hamming": pa.array([2], pa.int32())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
