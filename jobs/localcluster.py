"""A Spark standalone cluster (master + N workers) on 127.0.0.1, from the pyspark wheel.

The wheel ships ``spark-class`` but not the sbin start scripts, so we start the JVMs directly.
Used by the integration tests and by ``infra/standalone-cluster.sh``; each worker runs in its own
process group so a test can kill one worker *with its executors* to simulate a lost machine.

  python -m jobs.localcluster start --workers 2 --cores 1 --memory 2g   # prints the master URL
  python -m jobs.localcluster stop
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

STATE = Path(tempfile.gettempdir()) / "metacurate-localcluster.json"


def _spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict | None = None) -> dict:
    from jobs.spark import ensure_java

    ensure_java()
    import pyspark

    env = dict(os.environ)
    # The JVMs run this pyspark's spark-class, which takes its jars from SPARK_HOME: one inherited
    # from another Spark install (or the other pyspark line) would mix two Spark versions.
    env["SPARK_HOME"] = str(Path(pyspark.__file__).parent)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.update(extra or {})
    return env


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class LocalCluster:
    master_url: str
    master_pid: int
    worker_pids: list[int] = field(default_factory=list)
    web_port: int = 0
    log_dir: str = ""

    def status(self) -> dict:
        """The master's JSON status page: workers, active and completed applications."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/json/", timeout=5) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        """Workers registered with the master."""
        return sum(1 for w in self.status().get("workers", []) if w.get("state") == "ALIVE")

    def applications(self) -> list[dict]:
        """Applications that ran or run on this cluster (name, state, cores, ...), oldest first:
        a job that ran in local mode by mistake is not among them."""
        status = self.status()
        return status.get("completedapps", []) + status.get("activeapps", [])

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i``'s whole process group: the worker JVM, its executors, their Pythons."""
        try:
            os.killpg(self.worker_pids[i], signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every process; the scratch folder (logs, worker dirs) goes too unless ``keep_logs``
        (a cluster that failed to start keeps it: the error message points there)."""
        for pid in self.worker_pids + [self.master_pid]:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        for pid in self.worker_pids + [self.master_pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.log_dir and not keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def start_cluster(workers: int = 2, cores: int = 1, memory: str = "2g", timeout: float = 90,
                  worker_env: dict | None = None) -> LocalCluster:
    port, web = free_port(), free_port()
    log_dir = tempfile.mkdtemp(prefix="metacurate-cluster-")
    env = _env()
    master = subprocess.Popen(
        [_spark_class(), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", str(web)],
        env=env, stdout=open(os.path.join(log_dir, "master.log"), "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    cluster = LocalCluster(f"spark://127.0.0.1:{port}", master.pid, [], web, log_dir)
    try:
        _wait_port(port, timeout)
        for i in range(workers):
            w = subprocess.Popen(
                [_spark_class(), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                 "--work-dir", os.path.join(log_dir, f"work{i}"), cluster.master_url],
                env=_env(worker_env), stdout=open(os.path.join(log_dir, f"worker{i}.log"), "wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
            cluster.worker_pids.append(w.pid)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if cluster.alive_workers() >= workers:
                    return cluster
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"only some of {workers} workers registered within {timeout}s; logs in {log_dir}")
    except BaseException:
        cluster.stop(keep_logs=True)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--cores", type=int, default=1)
    s.add_argument("--memory", default="2g")
    sub.add_parser("stop")
    args = ap.parse_args(argv)
    if args.cmd == "start":
        c = start_cluster(args.workers, args.cores, args.memory)
        STATE.write_text(json.dumps(c.__dict__))
        print(c.master_url)
        print(f"master web UI: http://127.0.0.1:{c.web_port}  logs: {c.log_dir}", file=sys.stderr)
    else:
        if not STATE.exists():
            print("no cluster started by this tool", file=sys.stderr)
            return 1
        LocalCluster(**json.loads(STATE.read_text())).stop()
        STATE.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
