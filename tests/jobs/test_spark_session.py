"""The session get_spark() builds: Python workers get the environment and socket type it sets."""
import os

from jobs.spark import PYTHON_WORKER_ENV


def test_python_workers_get_the_allocator_environment_and_unix_sockets(spark):
    sc = spark.sparkContext
    names = sorted(PYTHON_WORKER_ENV)
    seen = sc.parallelize(range(4), 4).map(lambda _: [os.environ.get(k) for k in names]).collect()
    expected = [os.environ.get(k, PYTHON_WORKER_ENV[k]) for k in names]
    assert seen == [expected] * 4
    # ... and Arrow in the workers really allocates from the pool that variable names
    pools = sc.parallelize(range(2), 2).map(lambda _: __import__("pyarrow").default_memory_pool().backend_name).collect()
    assert pools == [os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")] * 2
    assert sc.getConf().get("spark.python.unix.domain.socket.enabled") == "true"
    # broadcasts and accumulators still work over Unix sockets
    bc = sc.broadcast(list(range(10)))
    acc = sc.accumulator(0)
    sc.parallelize(range(4), 4).foreach(lambda x: acc.add(len(bc.value)))
    assert acc.value == 40
