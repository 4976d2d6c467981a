"""Faults around the stage contract: a second job in the same run directory, stale leases, inputs
that do not hold what their summary claims, outputs that lost rows, broken markers.

Each case checks the message, the exit code where a command runs, that no `_SUCCESS` is written
where data was lost, and that in = out + rejected where the stage did run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from curation.rundir import RunDir, RunLock, RunLocked
from curation.storage import Storage
from jobs.cli import main
from jobs.stages.base import Stage, StageContext, StageError, execute

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the lease
def test_a_live_lease_stops_a_second_job_with_its_owner_named(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    with RunLock(run, command="balance", settle_s=0):
        with pytest.raises(RunLocked, match=rf"in use by pid {os.getpid()} on {socket.gethostname()} "
                                            r"\(`balance`"):
            RunLock(run, settle_s=0).acquire()
    assert not (tmp_path / "run" / "_LOCK").exists()  # released on exit


def test_a_stale_lease_of_another_host_is_taken_over(tmp_path, caplog):
    run = RunDir(str(tmp_path / "run"))
    run.storage.write_json(run.path("_LOCK"), {"owner": "x", "host": "gone-host", "pid": 1, "heartbeat": time.time() - 600})
    with caplog.at_level("WARNING"), RunLock(run, stale_after_s=90, settle_s=0) as lock:
        assert lock.holds()
    assert "from pid 1 on gone-host: it stopped refreshing it" in caplog.text


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    run = RunDir(str(tmp_path / "run"))
    run.storage.write_json(run.path("_LOCK"), {"owner": "x", "host": socket.gethostname(), "pid": pid,
                                               "heartbeat": time.time()})
    with caplog.at_level("WARNING"), RunLock(run, settle_s=0) as lock:
        assert lock.holds()
    assert "that process is gone" in caplog.text


def test_a_garbage_lease_counts_as_stale(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "_LOCK").write_bytes(b"\x00not json")
    with RunLock(run, settle_s=0) as lock:
        assert lock.holds()


def test_the_heartbeat_refreshes_the_lease(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    with RunLock(run, heartbeat_s=0.05, settle_s=0):
        first = json.loads((tmp_path / "run" / "_LOCK").read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / "run" / "_LOCK").read_text())["heartbeat"] > first


@pytest.mark.slow
def test_the_lease_works_on_s3(moto_endpoint):
    import s3fs

    opts = {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem(skip_instance_cache=True, **opts).mkdir("lock-test")
    run = RunDir("s3://lock-test/run", Storage(opts))
    with RunLock(run, command="match", settle_s=0.1):
        assert run.storage.exists("s3://lock-test/run/_LOCK")
        with pytest.raises(RunLocked, match="in use by pid"):
            RunLock(run, settle_s=0.1).acquire()
    assert not run.storage.exists("s3://lock-test/run/_LOCK")


@pytest.mark.slow
def test_two_runs_at_once_in_one_directory(tmp_path):
    """The second `run` on a run directory in use exits 2 naming the owner; the first completes,
    and what its summary claims is what its parts hold."""
    from jobs.demo import make_demo_pool

    paths = make_demo_pool(str(tmp_path / "data"), n_rows=2000, n_files=4)
    run = tmp_path / "run"
    base = [sys.executable, "-m", "jobs.cli", "curate", "--pool", paths["pool"], "--metadata", paths["metadata"],
            "--out", str(run), "--rows-per-unit", "200", "--master", "local[1]"]
    env = dict(os.environ, PYTHONPATH=str(REPO), METACURATE_UNIT_DELAY_S="0.4", METACURATE_PROGRESS_S="0")
    first = subprocess.Popen(base + ["--t", "30"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "_LOCK").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    second = subprocess.run(base + ["--t", "5"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    summary = json.loads((run / "balance" / "_summary.json").read_text())
    assert summary["t"] == 30
    assert pq.read_table(run / "balance").num_rows == summary["out"]
    assert not (run / "_LOCK").exists()


# --------------------------------------------------------------------------- the checks of execute
class _Toy(Stage):
    """A stage without Spark: writes ``rows`` rows and claims ``claim``."""
    name = "toy"

    def __init__(self, rows: int, claim: dict, rejects: int = 0) -> None:
        self.rows, self.claim, self.rejects = rows, claim, rejects

    def run(self, ctx, out):
        ctx.storage.write_parquet(pa.table({"x": list(range(self.rows))}), out.path("part-000000.parquet"))
        ctx.storage.write_parquet(pa.table({"uid": ["u"] * self.rejects, "stage": ["toy"] * self.rejects,
                                            "reason": ["bad"] * self.rejects, "detail": [""] * self.rejects}),
                                  out.rejects("part-000000.parquet"))
        return dict(self.claim)

    def output_rows(self, ctx, out):
        from curation.rundir import parquet_rows

        return parquet_rows(ctx.storage, out.part_files())


def _ctx(tmp_path) -> StageContext:
    return StageContext(cfg=None, run=RunDir(str(tmp_path / "run")))


@pytest.mark.parametrize("rows, rejects, claim, message", [
    (5, 0, {"in": 6, "out": 5, "rejected": {}}, r"rows do not reconcile: in=6 != out=5 \+ rejected=0"),
    (4, 0, {"in": 5, "out": 5, "rejected": {}}, r"holds 4 rows but the stage counted 5"),
    (5, 0, {"in": 6, "out": 5, "rejected": {"bad": 1}}, r"holds 0 reject rows but the stage counted 1"),
])
def test_a_stage_that_lost_rows_is_never_marked_complete(tmp_path, rows, rejects, claim, message):
    ctx = _ctx(tmp_path)
    with pytest.raises(StageError, match=message):
        execute(_Toy(rows, claim, rejects), ctx)
    assert not (tmp_path / "run" / "toy" / "_SUCCESS").exists()
    assert not (tmp_path / "run" / "toy" / "_summary.json").exists()
    summary = execute(_Toy(5, {"in": 6, "out": 5, "rejected": {"bad": 1}}, 1), ctx)  # the honest one passes
    assert summary["reconciled"] and (tmp_path / "run" / "toy" / "_SUCCESS").exists()


def test_empty_or_garbage_markers_count_as_absent(tmp_path, caplog):
    ctx = _ctx(tmp_path)
    execute(_Toy(3, {"in": 3, "out": 3, "rejected": {}}), ctx)
    d = ctx.dir(_Toy)
    (tmp_path / "run" / "toy" / "_SUCCESS").write_bytes(b"")  # a zero-byte marker (e.g. Spark's, or a cut copy)
    assert d.success() is None
    (tmp_path / "run" / "toy" / "_units").mkdir()
    (tmp_path / "run" / "toy" / "_units" / "000001.json").write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert d.done_units() == {}
    assert "unreadable; its unit runs again" in caplog.text
    summary = execute(_Toy(3, {"in": 3, "out": 3, "rejected": {}}), ctx)  # runs again, cleanly
    assert summary["out"] == 3 and json.loads((tmp_path / "run" / "toy" / "_SUCCESS").read_text())["fingerprint"]


class _KilledWriterToy(_Toy):
    """As a stage whose task was killed between writing a temporary file and renaming it, then ran
    again elsewhere: the data is complete, the temporaries are left over."""

    def run(self, ctx, out):
        summary = super().run(ctx, out)
        junk = b"PAR1 cut off"
        for url in (out.path("part-000001.parquet"), out.path("_units", "000003.json"), out.rejects("part-1.parquet")):
            folder, name = os.path.split(url)
            os.makedirs(folder, exist_ok=True)
            Path(folder, f".tmp-{'ab' * 16}-{name}").write_bytes(junk)
        Path(out.path(".keep-me")).write_bytes(b"not ours")  # a dot file of another tool stays
        return summary


def test_temporaries_of_killed_writers_are_removed_when_the_stage_completes(tmp_path):
    ctx = _ctx(tmp_path)
    summary = execute(_KilledWriterToy(4, {"in": 4, "out": 4, "rejected": {}}), ctx)
    assert summary["reconciled"] and (tmp_path / "run" / "toy" / "_SUCCESS").exists()
    left = sorted(str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob(".*") if p.is_file())
    assert left == ["toy/.keep-me"]
    # pyarrow, pandas and DuckDB read the folder as the 4 rows (DuckDB's *.parquet glob would have
    # matched a left-over .tmp-...parquet)
    import duckdb

    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path / 'run' / 'toy'}/*.parquet')").fetchall()[0][0] == 4
    assert Storage().remove_temporaries(str(tmp_path / "run")) == 0


def test_an_input_that_lost_rows_stops_the_next_stage(curate, tmp_path, capsys):
    """match is complete, then one of its parts disappears (a half-copied run, or the tasks look
    elsewhere): balance refuses to run rather than balance fewer rows and call it complete."""
    from jobs.demo import make_demo_pool

    paths = make_demo_pool(str(tmp_path / "data"), n_rows=800, n_files=2)
    run = tmp_path / "run"
    s = curate(paths["pool"], paths["metadata"], str(run), {"balance.t": 20, "pool.rows_per_unit": 200},
               stages=["count"])
    assert s["match"]["out"] > 0
    (run / "match" / "part-000001.parquet").unlink()
    cfg = ["--set", f"run_dir={run}", "--set", f"pool.path={paths['pool']}",
           "--set", f"metadata.path={paths['metadata']}", "--set", "balance.t=20"]
    assert main(["balance", *cfg]) == 1
    err = capsys.readouterr().err
    assert "balance: its input, the match stage's output" in err and f"says {s['match']['out']:,}" in err
    assert not (run / "balance" / "_SUCCESS").exists()
