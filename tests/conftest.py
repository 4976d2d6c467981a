"""Shared fixtures: one Spark session for the whole run, WordNet location, temp run dirs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Tests using these fixtures run Spark; the hook below marks them `spark` (the marker
#: tests/test_spark_versions.py selects to run them again under the other Spark line).
SPARK_FIXTURES = frozenset({"spark", "curate"})


def pytest_report_header(config):
    """Which Spark this run tests: the suite runs under more than one pyspark line."""
    try:
        import pyspark
    except ImportError:
        return "pyspark: not installed"
    return f"pyspark {pyspark.__version__} ({Path(pyspark.__file__).parent}); python {sys.executable}"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SPARK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark():
    """The one local[2] SparkSession of the test run (start-up costs ~10 s)."""
    from jobs.spark import get_spark

    session = get_spark(
        "local[2]", "metacurate-tests",
        conf={"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "4"},
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def wordnet_dir() -> Path:
    """Debian's wordnet-base (installed by .ci/run); tests needing it fail loudly without it."""
    d = Path(os.environ.get("METACURATE_WORDNET", "/usr/share/wordnet"))
    if not (d / "data.noun").exists():
        pytest.fail(f"WordNet 3.0 not found at {d}: `apt-get install wordnet-base` (.ci/run does this)")
    return d


@pytest.fixture(scope="session")
def moto_endpoint():
    """One real S3 API for the whole test run: moto's server, a subprocess on 127.0.0.1. Every S3
    test works in a bucket of its own, so the tests share the server but never each other's keys."""
    import subprocess
    import tempfile
    import time

    from jobs.localcluster import free_port

    port = free_port()
    # its log goes to a file: a pipe nobody reads fills up with one line per request and stalls the server
    log_file = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log_file, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import s3fs

        deadline = time.monotonic() + 60
        while True:  # up once it answers an S3 call, not merely once the port listens
            try:
                s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                                  skip_instance_cache=True).ls("")
                break
            except Exception:
                if proc.poll() is not None:
                    log_file.seek(0)
                    raise RuntimeError(f"moto's S3 server exited: {log_file.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log_file.close()


@pytest.fixture()
def moto_aws_env(moto_endpoint, monkeypatch):
    """The standard AWS variables pointing at the moto server (for code that takes no storage options);
    fsspec's cached S3 filesystems are dropped so they pick the endpoint up."""
    import s3fs

    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield env
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def curate(spark):
    """``curate(pool, metadata, out, settings={"balance.t": 40, ...}, stages=None)``: run the curation
    stages (metadata, match, count, balance by default; their incomplete upstream ones too) of a
    config made from dotted settings; returns ``{stage: summary}``."""
    from jobs.config import load_config
    from jobs.stages import balance, count, match, metadata, run_stages

    default = [metadata.STAGE.name, match.STAGE.name, count.STAGE.name, balance.STAGE.name]

    def run(pool: str, meta: str, out: str, settings: dict | None = None, stages: list[str] | None = None) -> dict:
        values = {"pool.path": pool, "metadata.path": meta, "run_dir": out, **(settings or {})}
        return run_stages(load_config(None, values=values), stages or default, spark=spark)

    return run
