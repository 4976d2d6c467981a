"""The report and the inspector on an s3:// run directory, against moto's S3 server on 127.0.0.1."""
from __future__ import annotations

import re

import pytest

from jobs.commands.inspect import format_inspect
from jobs.report import write_report

pytestmark = pytest.mark.slow


def test_report_and_inspect_on_s3(fixture_run, moto_aws_env):
    import s3fs

    run, info = fixture_run(n_entries=300, n_texts=2000, t=5, later_stages=True)
    fs = s3fs.S3FileSystem(endpoint_url=moto_aws_env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
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
