"""The session get_spark() builds: Python workers get the environment and socket type it sets."""
import os

from jobs.spark import PYTHON_WORKER_ENV, UNIX_SOCKET_SPARK, spark_version


def test_python_workers_get_the_allocator_environment_and_unix_sockets(spark):
    sc = spark.sparkContext
    names = sorted(PYTHON_WORKER_ENV)
    seen = sc.parallelize(range(4), 4).map(lambda _: [os.environ.get(k) for k in names]).collect()
    expected = [os.environ.get(k, PYTHON_WORKER_ENV[k]) for k in names]
    assert seen == [expected] * 4
    # ... and Arrow in the workers really allocates from the pool that variable names
    pools = sc.parallelize(range(2), 2).map(lambda _: __import__("pyarrow").default_memory_pool().backend_name).collect()
    assert pools == [os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")] * 2
    # Unix sockets where this Spark has them (the worker daemon reads the variable Spark sets from
    # the setting); older lines stay on TCP loopback and get no setting they do not know
    unix = spark_version() >= UNIX_SOCKET_SPARK
    assert sc.getConf().get("spark.python.unix.domain.socket.enabled", None) == ("true" if unix else None)
    flags = sc.parallelize(range(2), 2).map(lambda _: os.environ.get("PYTHON_UNIX_DOMAIN_ENABLED", "")).collect()
    assert [f.lower() == "true" for f in flags] == [unix] * 2
    # broadcasts and accumulators still work over the worker sockets
    bc = sc.broadcast(list(range(10)))
    acc = sc.accumulator(0)
    sc.parallelize(range(4), 4).foreach(lambda x: acc.add(len(bc.value)))
    assert acc.value == 40


def test_progress_logs_the_block_s_tasks_and_clears_its_job_group(spark, caplog):
    import logging
    import re
    import time

    from jobs.spark import progress, task_counts

    sc = spark.sparkContext
    with caplog.at_level(logging.INFO, logger="jobs.spark"):
        with progress(sc, "slowjob", every=0.2) as group:
            assert sc.parallelize(range(6), 6).map(lambda x: (time.sleep(0.4), x)[1]).collect() == list(range(6))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slowjob:")]
    assert lines  # 6 tasks of 0.4 s on 2 cores take >= 1.2 s, polled every 0.2 s
    for line in lines:
        assert re.fullmatch(r"slowjob: \d/6 tasks \(\d+%\), \d running, 0 failed, \d+s elapsed(, ETA \d+s)?", line), line
    done = [int(line.split()[1].split("/")[0]) for line in lines]
    assert done == sorted(done)
    assert sc.getLocalProperty("spark.jobGroup.id") is None  # later jobs are not counted under it
    sc.parallelize(range(3), 3).count()
    assert task_counts(sc, group) == {"total": 6, "done": 6, "running": 0, "failed": 0}


def test_the_jvm_runs_the_installed_pyspark_line(spark):
    """Python and JVM sides are one Spark release (a stray SPARK_HOME would pair other jars with this
    pyspark), and spark_version() reads it the same way."""
    import pyspark

    assert spark.version.split(".")[:2] == pyspark.__version__.split(".")[:2]
    assert spark_version() == tuple(int(n) for n in spark.version.split(".")[:2])
