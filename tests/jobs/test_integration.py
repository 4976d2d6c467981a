"""Integration: a real standalone cluster (kill a worker mid-job), a killed driver, S3 via moto.

All marked slow (CI runs them). Each compares against an undisturbed local run of the same seed.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.demo import make_demo_pool

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def _kept(run):
    d = os.path.join(run, "balance")
    return sorted(pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in sorted(os.listdir(d))
                                    if f.startswith("part-")]).column("uid").to_pylist())


def _counts(run):
    t = pq.read_table(os.path.join(run, "count", "entry_counts.parquet"))
    return dict(zip(t.column("entry_id").to_pylist(), t.column("count").to_pylist()))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("ipool")
    return make_demo_pool(str(root), n_rows=4000, seed=3, n_files=4)


@pytest.fixture(scope="module")
def reference(curate, pool, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("ref") / "run")
    curate(pool["pool"], pool["metadata"], run, {"balance.t": 40, "balance.seed": 11, "pool.rows_per_unit": 250})
    return run


def _curate_cmd(pool, run, master):
    return [sys.executable, "-m", "jobs.cli", "curate", "--pool", pool["pool"], "--metadata", pool["metadata"],
            "--out", run, "--t", "40", "--seed", "11", "--master", master]


def _wait_for_units(run, stage, n, proc, timeout=240):
    d = os.path.join(run, stage, "_units")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(d) and len(os.listdir(d)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended before {n} {stage} units were done: rc={proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {n} {stage} units")


def test_standalone_cluster_matches_local_and_survives_a_killed_worker(pool, reference, tmp_path):
    from jobs.localcluster import start_cluster

    env = dict(os.environ, METACURATE_UNIT_DELAY_S="0.7")
    cluster = start_cluster(workers=2, cores=1, memory="1g", worker_env={"METACURATE_UNIT_DELAY_S": "0.7"})
    try:
        # 1) undisturbed cluster run == local[2] run
        run1 = str(tmp_path / "cluster1")
        # rows_per_unit must equal the reference's: the CLI default differs, so use a config override
        cmd = [sys.executable, "-m", "jobs.cli", "run", "--set", f"run_dir={run1}",
               "--set", f"pool.path={pool['pool']}", "--set", f"metadata.path={pool['metadata']}",
               "--set", "balance.t=40", "--set", "balance.seed=11", "--set", "pool.rows_per_unit=250",
               "--set", "stages=[match, count, balance]", "--master", cluster.master_url]
        done = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, timeout=400)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert _kept(run1) == _kept(reference)
        assert _counts(run1) == _counts(reference)
        # 2) kill one worker (with its executors) in the middle of the match stage
        run2 = str(tmp_path / "cluster2")
        cmd2 = [c if c != run1 else run2 for c in cmd]
        cmd2[cmd2.index(f"run_dir={run1}")] = f"run_dir={run2}"
        proc = subprocess.Popen(cmd2, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_for_units(run2, "match", 3, proc)
        cluster.kill_worker(0)
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out.decode()[-3000:]
        assert sorted(os.listdir(os.path.join(run2, "match", "_units"))) == \
            sorted(os.listdir(os.path.join(reference, "match", "_units")))
        assert _kept(run2) == _kept(reference)
        assert _counts(run2) == _counts(reference)
    finally:
        cluster.stop()


def test_killed_driver_rerun_gives_same_output(pool, reference, tmp_path):
    run = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--set", f"run_dir={run}",
           "--set", f"pool.path={pool['pool']}", "--set", f"metadata.path={pool['metadata']}",
           "--set", "balance.t=40", "--set", "balance.seed=11", "--set", "pool.rows_per_unit=250",
           "--set", "stages=[match, count, balance]", "--master", "local[2]"]
    env = dict(os.environ, METACURATE_UNIT_DELAY_S="0.3")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _wait_for_units(run, "balance", 4, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(run, "balance", "_SUCCESS"))
    done = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, timeout=400)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert _kept(run) == _kept(reference)
    assert len(_kept(run)) == len(set(_kept(run)))
    summary = json.load(open(os.path.join(run, "balance", "_summary.json")))
    assert summary["kept"] == len(_kept(reference))


@pytest.fixture(scope="module")
def moto_s3(moto_endpoint):
    import s3fs

    opts = {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    fs.mkdir("metacurate-test")
    return opts, fs


def test_whole_run_on_s3_paths(curate, pool, reference, moto_s3):
    opts, fs = moto_s3
    fs.put(pool["pool"], "metacurate-test/pool", recursive=True)
    fs.put(pool["metadata"], "metacurate-test/meta/metadata.json")
    fs.invalidate_cache()
    settings = {"balance.t": 40, "balance.seed": 11, "pool.rows_per_unit": 250,
                "storage.endpoint_url": opts["endpoint_url"], "storage.key": "testing", "storage.secret": "testing"}
    args = ("s3://metacurate-test/pool", "s3://metacurate-test/meta/metadata.json", "s3://metacurate-test/run")
    summaries = curate(*args, settings)
    fs.invalidate_cache()
    assert fs.exists("metacurate-test/run/balance/_SUCCESS")
    kept = sorted(pa.concat_tables([pq.read_table(fs.open(f)) for f in sorted(fs.glob("metacurate-test/run/balance/part-*.parquet"))]).column("uid").to_pylist())
    assert kept == _kept(reference)
    counts = pq.read_table(fs.open("metacurate-test/run/count/entry_counts.parquet"))
    assert dict(zip(counts.column("entry_id").to_pylist(), counts.column("count").to_pylist())) == _counts(reference)
    assert summaries["match"]["in"] == summaries["match"]["out"] + sum(summaries["match"]["rejected"].values())
    # a re-run finds every stage complete on S3 and skips it
    again = curate(*args, settings)
    assert again["balance"]["kept"] == summaries["balance"]["kept"]
