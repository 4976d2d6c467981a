"""The report and the inspector on an s3:// run directory, against moto's S3 server on 127.0.0.1."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

from jobs.commands.inspect import format_inspect
from jobs.report import write_report

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch):
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_report_and_inspect_on_s3(fixture_run, s3_endpoint):
    import s3fs

    run, info = fixture_run(n_entries=300, n_texts=2000, t=5, later_stages=True)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing")
    fs.mkdir("curation")
    fs.put(str(run), "curation/run1", recursive=True)
    assert fs.exists("curation/run1/count/entry_counts.parquet")

    index = write_report("s3://curation/run1")
    assert index == "s3://curation/run1/report/index.html"
    fs.invalidate_cache()
    html = fs.cat("curation/run1/report/index.html").decode("utf-8")
    srcs = re.findall(r"<img\s+src='([^']+)'", html)
    assert len(srcs) == 6
    for src in srcs:
        data = fs.cat(f"curation/run1/report/{src}")
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert fs.exists("curation/run1/report/summary.json")
    assert "eval_near_duplicate" in html

    text = format_inspect("s3://curation/run1", top=5)
    assert f"kept = {info['n_kept']:,}" in text and "shard" in text
