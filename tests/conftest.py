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
