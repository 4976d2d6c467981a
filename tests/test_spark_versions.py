"""Both supported Spark lines: the tests marked ``spark`` run once more under pyspark 3.5.

The suite itself runs under the pyspark of this interpreter (the newest 4.x that ``pyproject.toml``
admits, in CI). ``bash infra/bootstrap.sh --test`` also makes ``.venv-spark35/``: pyspark 3.5 (what
EMR 7.x, Dataproc 2.2/2.3 and Databricks 14.3-16.4 LTS run) with every other package shared from
this interpreter. The slow test below runs ``pytest -m spark`` with that environment's Python, so
each Spark code path (sessions, mapInArrow, RDD shuffles, the CLI, spark-submit, the standalone
cluster) is exercised on both lines. Tests get the ``spark`` mark from tests/conftest.py when they
use the ``spark`` or ``curate`` fixture, or from an explicit ``pytest.mark.spark`` when they start
Spark another way (the CLI in a subprocess, spark-submit, a cluster).
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPARK35_PYTHON = REPO / ".venv-spark35" / "bin" / "python"
#: Set in the second run, so that it never starts a third one (it selects `-m spark` and this test
#: has no such mark, but a mark added to this folder later must not recurse).
NESTED = "METACURATE_SPARK_LINE_RUN"
#: A hung cluster or JVM in the second run must not hold CI until its own limit.
TIMEOUT_S = 45 * 60


def _spark35_version() -> str:
    if not SPARK35_PYTHON.exists():
        reason = (f"no pyspark 3.5 environment at {SPARK35_PYTHON.parent.parent}: "
                  "`bash infra/bootstrap.sh --test` makes it")
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must test both Spark lines)")
        pytest.skip(reason)
    probe = subprocess.run([str(SPARK35_PYTHON), "-I", "-c", "import jobs, pyspark; print(pyspark.__version__)"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, (f"{SPARK35_PYTHON} cannot import pyspark and metacurate; run "
                                   f"`bash infra/bootstrap.sh --test` again:\n{probe.stderr[-2000:]}")
    version = probe.stdout.strip()
    assert version.startswith("3.5."), (f"{SPARK35_PYTHON} has pyspark {version}, not 3.5.x; remove "
                                        ".venv-spark35 and run `bash infra/bootstrap.sh --test` again")
    return version


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get(NESTED)), reason="already the second Spark line's run")
def test_spark_tests_pass_under_pyspark_3_5(tmp_path):
    version = _spark35_version()
    # The child sets these for its own interpreter and Spark (tests/conftest.py); inherited, they
    # would send its executors to this interpreter, with the other pyspark.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME")}
    env[NESTED] = "3.5"
    cmd = [str(SPARK35_PYTHON), "-m", "pytest", "-m", "spark", "-p", "no:cacheprovider",
           "--durations=10", f"--basetemp={tmp_path / 'basetemp'}", str(REPO / "tests")]
    # its own process group: on a timeout the clusters and JVMs it started go too
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the pyspark {version} run took over {TIMEOUT_S} s:\n{out[-6000:]}")
    print(out[-3000:])  # shown with -rP, and in the failure report
    assert f"pyspark {version} (" in out, f"the run's header does not name pyspark {version}:\n{out[:3000]}"
    assert proc.returncode == 0, f"tests fail under pyspark {version} (exit {proc.returncode}):\n{out[-8000:]}"
