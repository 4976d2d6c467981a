"""A whole run on an S3 API (moto's server on 127.0.0.1) with the storage given only by the run
config's `storage:` section: no AWS_* variable exists in any process.

Every command runs as its own process with a cleaned environment: `evalsets hash`, `run` (every
stage), `report`, `audit`, `train` (2 steps, checkpoints written to s3://) and `eval` (the
checkpoint read back from s3://). If any read or write dropped the run's storage options, it could
not find the endpoint and the command would fail.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "no-env"
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square")


def _image(colour: str, shape: str, seed: int) -> bytes:
    """A shape on a random texture: every image has a pHash of its own (plain shapes on plain
    backgrounds are near-duplicates of each other)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize((96, 96), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    x0, y0 = (int(v) for v in rng.integers(5, 30, 2))
    box = [x0, y0, x0 + 55, y0 + 55]
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    b = io.BytesIO()
    img.save(b, "JPEG", quality=90)
    return b.getvalue()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "S3_ENDPOINT_URL"}
    env["PYTHONPATH"] = str(REPO)
    env["METACURATE_PROGRESS_S"] = "0"
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"metacurate {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_run_report_audit_train_eval_on_s3_with_config_storage_only(moto_endpoint, tmp_path):
    import s3fs

    from jobs.synthetic import serve_directory

    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    www = tmp_path / "www"
    www.mkdir()
    served = serve_directory(str(www))
    try:
        rows, n = [], 0
        for colour in COLOURS:
            for shape in SHAPES:
                for k in range(6):
                    (www / f"{n}.jpg").write_bytes(_image(colour, shape, n))
                    rows.append((f"{served.base_url}/{n}.jpg", f"a {colour} {shape} photo {k}"))
                    n += 1
        rows.append((f"{served.base_url}/missing.jpg", "a red circle that is gone"))
        # the eval set: two of the served images (so dedup finds them) and one unseen image
        evals = {"e0.jpg": (www / "0.jpg").read_bytes(), "e1.jpg": (www / "7.jpg").read_bytes(),
                 "e2.jpg": _image("yellow", "circle", 999)}
        for name, data in evals.items():
            fs.pipe_file(f"{BUCKET}/evalimgs/{name}", data)
        buf = io.BytesIO()
        pq.write_table(pa.table({"url": [u for u, _ in rows], "text": [t for _, t in rows]}), buf)
        fs.pipe_file(f"{BUCKET}/pool/part-0.parquet", buf.getvalue())
        fs.pipe_file(f"{BUCKET}/metadata.json", json.dumps(list(COLOURS) + list(SHAPES) + ["photo"]).encode())
        run = f"s3://{BUCKET}/run"
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "run_dir": run, "pool": {"path": f"s3://{BUCKET}/pool", "rows_per_unit": 20},
            "metadata": {"path": f"s3://{BUCKET}/metadata.json"}, "balance": {"t": 1000, "seed": 0},
            "download": {"image_size": 64, "processes": 1, "threads": 4, "timeout": 5, "allow_loopback": True},
            "dedup": {"evalsets": f"s3://{BUCKET}/evalsets", "k": 4},
            "shard": {"samples_per_shard": 20},
            "storage": {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"},
            "spark": {"master": "local[2]"}}))
        env = _clean_env()
        cfg = ["--config", str(config)]
        _cli("evalsets", "hash", "--name", "toy", "--images", f"s3://{BUCKET}/evalimgs", "--out",
             f"s3://{BUCKET}/evalsets", *cfg, env=env, cwd=tmp_path)
        _cli("run", *cfg, env=env, cwd=tmp_path)
    finally:
        served.stop()
    fs.invalidate_cache()
    summaries = {}
    for folder in ("metadata", "match", "count", "balance", "download", "dedup", "shards"):
        assert fs.exists(f"{BUCKET}/run/{folder}/_SUCCESS"), folder
        s = json.loads(fs.cat_file(f"{BUCKET}/run/{folder}/_summary.json"))
        assert s["in"] == s["out"] + sum(s["rejected"].values()), (folder, s)
        summaries[folder] = s
    assert summaries["match"]["in"] == len(rows) and summaries["download"]["rejected"] == {"http_404": 1}
    assert summaries["dedup"]["rejected"] == {"eval_overlap": 2}
    shards = summaries["shards"]
    assert shards["out"] == len(rows) - 3 and shards["shards"] == 3
    assert not list(tmp_path.glob(f"{BUCKET}*")) and not Path(BUCKET).exists()  # nothing went to local disk

    _cli("report", run, *cfg, env=env, cwd=tmp_path)
    _cli("audit", run, *cfg, env=env, cwd=tmp_path)
    fs.invalidate_cache()
    assert fs.cat_file(f"{BUCKET}/run/report/index.html").startswith(b"<!DOCTYPE html>")
    audit = json.loads(fs.cat_file(f"{BUCKET}/run/audit/audit.json"))
    assert audit["overlapping_pool_images"] == 2

    shard_spec = f"{run}/shards/{{000000..000002}}.tar"
    _cli("train", *cfg, "--shards", shard_spec, "--out", f"s3://{BUCKET}/train", "--model", "tiny", "--steps", "2",
         "--batch-size", "8", "--save-every", "1", "--workers", "0", "--tokenizer", "bytes", "--no-progress",
         env=env, cwd=tmp_path)
    fs.invalidate_cache()
    checkpoints = fs.glob(f"{BUCKET}/train/checkpoints/*.pt")
    assert checkpoints, fs.find(f"{BUCKET}/train")
    _cli("eval", *cfg, "--checkpoint", f"s3://{BUCKET}/train", "--retrieval", f"toyshards={shard_spec}",
         "--out", f"s3://{BUCKET}/eval/results.json", env=env, cwd=tmp_path)
    fs.invalidate_cache()
    results = json.loads(fs.cat_file(f"{BUCKET}/eval/results.json"))
    assert any(k.startswith("retrieval/toyshards/") for k in results["metrics"]), results["metrics"]
