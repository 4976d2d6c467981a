"""A download killed with SIGKILL leaves no worker behind, and the re-run finishes the stage with
every row accounted for once.

img2dataset's local distributor runs a ``spawn`` process pool under the driver. Before
``curation.orphans.DieWithParent``, its workers went on downloading and writing tar files into the
run directory for 20+ s after the driver was killed, while a re-run could already be writing there.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


DRIVER = textwrap.dedent("""
    import sys
    from jobs.config import load_config
    from jobs.stages import run_stages

    def no_spark():
        raise AssertionError("no Spark needed")

    if __name__ == "__main__":  # the spawned pool workers import this file again
        cfg = load_config(None, values={"run_dir": sys.argv[1], "download.image_size": 64, "download.processes": 2,
                                        "download.threads": 2, "download.timeout": 30,
                                        "download.samples_per_shard": 4, "download.allow_loopback": True,
                                        "download.distributor": "multiprocessing"})
        s = run_stages(cfg, ["download"], spark_factory=no_spark, add_upstream=False)["download"]
        print("DONE", s["in"], s["out"], sum(s["rejected"].values()), flush=True)
""")


def test_a_killed_download_leaves_no_workers_and_resumes_without_duplicates(tmp_path, image_helpers):
    from curation.rundir import RunDir

    images = image_helpers
    srv = images.Server()
    try:
        rng = np.random.default_rng(5)
        n = 16
        for i in range(n):  # slow: every worker is mid-shard when the driver dies
            srv.routes[f"/img{i}.jpg"] = (200, images.jpeg_bytes(images.natural_image(rng, 96, 80)), 6.0)
        root = tmp_path / "run"
        (root / "balance").mkdir(parents=True)
        uids = [f"u{i:02d}" for i in range(n)]
        pq.write_table(pa.table({"uid": uids, "url": [srv.url(f"/img{i}.jpg") for i in range(n)],
                                 "text": [f"photo {i}" for i in range(n)],
                                 "entry_ids": pa.array([[1]] * n, pa.list_(pa.int32())),
                                 "p_keep": [0.5] * n}), root / "balance" / "part-000000.parquet")
        bal = RunDir(str(root)).stage("balance")
        bal.write_summary({"in": n, "out": n, "rejected": {}})
        bal.write_success("test-balance")
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        driver = subprocess.Popen([sys.executable, str(script), str(root)], cwd=Path(__file__).resolve().parents[2],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            workers: list[int] = []
            while time.time() < deadline:  # wait until the pool's workers are fetching
                # the pool's workers and img2dataset's stats logger (every spawned child but the
                # resource tracker, which exits by itself once its pipe closes)
                workers = [p for p in _children(driver.pid) if "resource_tracker" not in _cmdline(p)]
                if len(workers) >= 3 and len(srv.hits) >= 2:
                    break
                assert driver.poll() is None, driver.stdout.read().decode(errors="replace")
                time.sleep(0.1)
            assert len(workers) >= 3 and srv.hits, "the download pool never started fetching"
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=10)
            t_kill = time.time()
            while time.time() - t_kill < 5 and any(_alive(p) for p in workers):
                time.sleep(0.1)
            left = {p: _cmdline(p)[:200] for p in workers if _alive(p)}
            assert not left, f"download workers outlived the killed driver: {left}"
            before = _snapshot(root / "download")
            time.sleep(7)  # longer than one slow image: a surviving worker would have written by now
            assert _snapshot(root / "download") == before
            assert not (root / "download" / "_SUCCESS").exists()
        finally:
            if driver.poll() is None:
                driver.kill()
        for i in range(n):  # the re-run: fast server
            srv.routes[f"/img{i}.jpg"] = srv.routes[f"/img{i}.jpg"][:2] + (0.0,)
        done = subprocess.run([sys.executable, str(script), str(root)], cwd=Path(__file__).resolve().parents[2],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        line = [x for x in done.stdout.splitlines() if x.startswith("DONE")][-1].split()
        assert line[1:] == [str(n), str(n), "0"], line
        keys = []
        for t in sorted((root / "download").glob("*.tar")):
            with tarfile.open(t) as tf:
                keys += [m.name.rsplit(".", 1)[0] for m in tf.getmembers() if m.name.endswith(".jpg")]
        assert len(keys) == len(set(keys)) == n  # no duplicates, no holes
        assert (root / "download" / "_SUCCESS").exists()
    finally:
        srv.close()
