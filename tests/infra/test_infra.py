"""Deployment files in infra/: Dockerfile, Spark operator manifests, entrypoint, sizing script, docs.

Docker and Kubernetes are not available here, so the image and manifests are checked structurally
(parsed, required fields, cross-references between them and the code). The slow test runs the real
``spark-submit`` entry point (``infra/driver.py`` + the ``--py-files`` zip) end to end.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"


# --------------------------------------------------------------------------- Dockerfile
def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    if buf:
        raise ValueError(f"dangling line continuation at the end: {buf!r}")
    return out


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a metacurate Dockerfile (empty list: fine)."""
    problems = []
    instrs = parse_dockerfile(text)
    names = [i for i, _ in instrs]
    froms = [a for i, a in instrs if i == "FROM"]
    if not froms or any(i != "ARG" for i in names[:names.index("FROM")]):
        problems.append("the first instruction must be FROM (ARGs may precede it)")
    for image in froms:
        ref = image.split()[0]
        name, _, tag = ref.partition(":")
        if "python" in name and (not tag or tag == "latest" or "$" in tag):
            problems.append(f"FROM {ref}: pin the Python image to an explicit tag, not latest/none")
    runs = " ; ".join(a for i, a in instrs if i == "RUN")
    if not re.search(r"apt-get install[^;]*openjdk-(17|21)-jre", runs):
        problems.append("no JDK 17/21 installed with apt-get")
    if not re.search(r"apt-get install[^;]*wordnet-base", runs):
        problems.append("wordnet-base is not installed")
    torch = re.search(r"pip install[^;&]*--index-url[^;&]*torch==", runs)
    project = re.search(r"pip install(?: --no-cache-dir)? \.(\s|$|\[)", runs)
    if not torch:
        problems.append("torch is not installed from a wheel index with a pinned version")
    if not project:
        problems.append("the project is not installed with `pip install .`")
    if torch and project and torch.start() > project.start():
        problems.append("torch must be installed before the project (else pip picks another torch build)")
    env = " ".join(a for i, a in instrs if i == "ENV")
    for needed in ("PYSPARK_PYTHON=python3", "NO_ALBUMENTATIONS_UPDATE=1"):
        if needed not in env:
            problems.append(f"ENV {needed} missing")
    home = re.search(r"SPARK_HOME=\S*/python(3\.\d+)/site-packages/pyspark\b", env)
    if not home:
        problems.append("SPARK_HOME must be the pyspark package directory")
    py_tags = [re.match(r"(3\.\d+)", r.split()[0].partition(":")[2]) for r in froms if "python" in r.split()[0]]
    if home and py_tags and py_tags[-1] and py_tags[-1].group(1) != home.group(1):
        problems.append(f"SPARK_HOME points into python{home.group(1)} but the base image is "
                        f"python:{py_tags[-1].group(1)}")
    if "ENTRYPOINT" not in names:
        problems.append("no ENTRYPOINT")
    return problems


def test_dockerfile_structure():
    text = (INFRA / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    instrs = parse_dockerfile(text)
    # Every COPY source exists and the image holds every import package the job zips.
    from jobs.spark import PACKAGES

    copied = set()
    for instr, args in instrs:
        if instr == "COPY":
            srcs = shlex.split(args)[:-1]
            for src in srcs:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                copied.add(src.strip("./"))
    assert set(PACKAGES) <= copied, f"packages not copied into the image: {set(PACKAGES) - copied}"
    entry = [a for i, a in instrs if i == "ENTRYPOINT"][0]
    assert "/opt/metacurate/infra/entrypoint.sh" in entry
    assert any(i == "WORKDIR" and a == "/opt/metacurate" for i, a in instrs)


@pytest.mark.parametrize("bad, expected", [
    ("FROM python:latest", "explicit tag"),
    ("FROM python", "explicit tag"),
    ("RUN pip install .", "first instruction must be FROM"),
    ("FROM python:3.12.8-slim-bookworm", "SPARK_HOME points into python3.11"),
])
def test_dockerfile_checker_rejects_bad_files(bad, expected):
    good = (INFRA / "Dockerfile").read_text()
    first_from = next(line for line in good.splitlines() if line.startswith("FROM "))
    text = good.replace(first_from, bad, 1) if bad.startswith("FROM") else bad + "\n" + good
    assert any(expected in p for p in dockerfile_problems(text)), dockerfile_problems(text)


def test_dockerfile_checker_wants_torch_before_project():
    good = (INFRA / "Dockerfile").read_text()
    torch_line = next(line for line in good.splitlines() if "torch==" in line and line.startswith("RUN"))
    moved = good.replace(torch_line + "\n", "") + torch_line + "\n"
    assert dockerfile_problems(good) == []
    assert any("before the project" in p for p in dockerfile_problems(moved))


# --------------------------------------------------------------------------- Kubernetes manifests
def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), f"{path.name}: incomplete document {d}"
        assert d["metadata"].get("name"), f"{path.name}: {d['kind']} without metadata.name"
    return docs


def _env_names(pod: dict) -> set[str]:
    names = {e["name"] for e in pod.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    if any("secretRef" in e for e in pod.get("envFrom", [])):
        names |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}  # whole Secret
    return names


def _check_sparkapp(app: dict, config_maps: set[str]) -> None:
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    spec = app["spec"]
    for key in ("type", "mainApplicationFile", "sparkVersion", "driver", "executor"):  # CRD `required`
        assert key in spec, f"SparkApplication.spec.{key} is required"
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["mainApplicationFile"].endswith("infra/driver.py") or spec["mainApplicationFile"].endswith("/driver.py")
    assert spec["arguments"] == ["run", "--config", "/config/run.yaml"]
    assert spec["restartPolicy"]["type"] == "OnFailure"
    assert isinstance(spec["sparkVersion"], str) and spec["sparkVersion"].startswith("4.")
    assert ":" in spec["image"] and not spec["image"].endswith(":latest")
    volumes = {v["name"]: v for v in spec["volumes"]}
    for role in ("driver", "executor"):
        pod = spec[role]
        assert pod["cores"] >= 1 and re.fullmatch(r"\d+[mg]", pod["memory"]), f"{role} resources"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= _env_names(pod), role
    assert spec["executor"]["instances"] >= 1 and re.fullmatch(r"\d+[mg]", spec["executor"]["memoryOverhead"])
    mounts = {m["mountPath"]: m["name"] for m in spec["driver"]["volumeMounts"]}
    assert "/config" in mounts
    assert volumes[mounts["/config"]]["configMap"]["name"] in config_maps


def test_sparkapplication_manifest(tmp_path):
    docs = _docs(K8S / "sparkapplication.yaml")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("SparkApplication") == 1 and "ConfigMap" in kinds
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    app = next(d for d in docs if d["kind"] == "SparkApplication")
    _check_sparkapp(app, set(cms))
    # The image ships the package: the main file is inside the image's /opt/metacurate checkout.
    assert app["spec"]["mainApplicationFile"] == "local:///opt/metacurate/infra/driver.py"
    assert (REPO / "infra" / "driver.py").exists()
    sa = app["spec"]["driver"]["serviceAccount"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"][0]["name"] == sa
    # The embedded run.yaml is a valid config for the job.
    from jobs.config import load_config

    cfg_file = tmp_path / "run.yaml"
    cm_name = next(v["configMap"]["name"] for v in app["spec"]["volumes"] if "configMap" in v)
    cfg_file.write_text(cms[cm_name]["data"]["run.yaml"])
    cfg = load_config(str(cfg_file))
    assert cfg.run_dir.startswith("s3://") and cfg.pool.path.startswith("s3://")
    assert cfg.metadata.path.startswith("s3://")


def test_pyfiles_variant_manifest(tmp_path):
    docs = _docs(K8S / "sparkapplication-pyfiles.yaml")
    main_cms = {d["metadata"]["name"] for d in _docs(K8S / "sparkapplication.yaml") if d["kind"] == "ConfigMap"}
    app = next(d for d in docs if d["kind"] == "SparkApplication")
    _check_sparkapp(app, main_cms)
    py_files = app["spec"]["deps"]["pyFiles"]
    from jobs.spark import package_zip

    zip_name = Path(package_zip(str(tmp_path))).name  # the file `python -m jobs.spark --zip` builds
    assert py_files and all(f.endswith("/" + zip_name) for f in py_files)


def test_bad_run_yaml_would_be_caught(tmp_path):
    """The manifest check is only useful if load_config rejects a broken embedded config."""
    from curation.errors import InputError
    from jobs.config import load_config

    docs = _docs(K8S / "sparkapplication.yaml")
    text = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["run.yaml"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("rows_per_unit:", "rows_per_unti:"))
    with pytest.raises(InputError, match="rows_per_unti"):
        load_config(str(bad))


# --------------------------------------------------------------------------- entrypoint.sh
def _stub(path: Path, body: str = 'printf "%s\\n" "$0" "$@"') -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _entrypoint(args: list[str], env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_")}
    return subprocess.run(["bash", str(INFRA / "entrypoint.sh"), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_entrypoint_syntax_and_passthrough():
    assert subprocess.run(["bash", "-n", str(INFRA / "entrypoint.sh")]).returncode == 0
    r = _entrypoint([sys.executable, "-c", "import os; print('ok', os.environ['SPARK_HOME'])"],
                    {"SPARK_HOME": "/x/pyspark"})
    assert r.returncode == 0 and r.stdout.strip() == "ok /x/pyspark"


def test_entrypoint_executor_command_line(tmp_path):
    """Executor mode builds the KubernetesExecutorBackend JVM command from Spark's pod variables."""
    _stub(tmp_path / "jdk" / "bin" / "java")
    env = {"JAVA_HOME": str(tmp_path / "jdk"), "SPARK_HOME": "/opt/pyspark", "SPARK_DRIVER_URL": "spark://d:7078",
           "SPARK_EXECUTOR_ID": "3", "SPARK_EXECUTOR_CORES": "4", "SPARK_EXECUTOR_MEMORY": "4g",
           "SPARK_APPLICATION_ID": "spark-abc", "SPARK_EXECUTOR_POD_IP": "10.0.0.7",
           "SPARK_EXECUTOR_POD_NAME": "exec-3", "SPARK_CONF_DIR": "/opt/spark/conf",
           "SPARK_JAVA_OPT_10": "-Dk=10", "SPARK_JAVA_OPT_0": "-Dk=0", "SPARK_JAVA_OPT_2": "-Dk=2"}
    r = _entrypoint(["executor"], env)
    assert r.returncode == 0, r.stderr
    argv = r.stdout.splitlines()
    assert argv[0].endswith("jdk/bin/java")
    assert argv[1:3] == ["-Xms4g", "-Xmx4g"]
    assert argv[3:6] == ["-Dk=0", "-Dk=2", "-Dk=10"]  # numeric order, not lexical
    assert argv[argv.index("-cp") + 1] == "/opt/spark/conf:/opt/pyspark/jars/*"
    assert "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend" in argv
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--driver-url"] == "spark://d:7078" and pairs["--executor-id"] == "3"
    assert pairs["--cores"] == "4" and pairs["--hostname"] == "10.0.0.7" and pairs["--podName"] == "exec-3"


def test_entrypoint_executor_needs_driver_url():
    r = _entrypoint(["executor"], {"SPARK_HOME": "/opt/pyspark"})
    assert r.returncode != 0 and "SPARK_DRIVER_URL" in r.stderr


def test_entrypoint_driver_is_client_mode_spark_submit(tmp_path):
    _stub(tmp_path / "spark" / "bin" / "spark-submit")
    r = _entrypoint(["driver", "--properties-file", "/opt/spark/conf/spark.properties", "local:///x/driver.py"],
                    {"SPARK_HOME": str(tmp_path / "spark"), "SPARK_DRIVER_BIND_ADDRESS": "10.0.0.5"})
    assert r.returncode == 0, r.stderr
    argv = r.stdout.splitlines()
    assert argv[0].endswith("spark/bin/spark-submit")
    assert argv[1:5] == ["--deploy-mode", "client", "--conf", "spark.driver.bindAddress=10.0.0.5"]
    assert argv[-1] == "local:///x/driver.py"


# --------------------------------------------------------------------------- sizing script + docs
def test_sizing_arithmetic():
    sys.path.insert(0, str(INFRA))
    try:
        import measure_sizing as ms
    finally:
        sys.path.remove(str(INFRA))
    assert ms.core_hours_per_m(3600.0, 1, 1_000_000) == pytest.approx(1.0)
    assert ms.core_hours_per_m(900.0, 2, 250_000) == pytest.approx(2.0)
    one = {"rows": 100_000, "seconds": {"match": 36.0, "count": 18.0, "balance": 9.0}}
    two = {"rows": 300_000, "seconds": {"match": 108.0, "count": 20.0, "balance": 27.0}}
    md, per_m = ms.table([one, two], cores=1)
    # basis: the largest size, 108 s per 300k rows on 1 core = 0.1 core-h per 1M rows -> 160 at 1.6B
    assert per_m["match"] == pytest.approx(0.1)
    assert per_m["count"] == pytest.approx(20.0 / 3600 / 0.3)
    assert "| match | measured, 300,000 rows, 1 core(s) | 0.1000 | 160 | 1,000 |" in md
    # marginal: count grew 2 s over 200k rows -> 2/3600/0.2 = 0.0028 core-h per 1M rows
    assert "| count | marginal 100,000->300,000 rows | 0.0028 | 4 | 28 |" in md
    shrinking = {"rows": 300_000, "seconds": {"match": 30.0, "count": 20.0, "balance": 27.0}}
    assert "| match | marginal" not in ms.table([one, shrinking], cores=1)[0]  # no negative slopes
    assert "ESTIMATE" in md  # image stages are labelled as estimates, not measurements


def test_readme_references_existing_files():
    text = (INFRA / "README.md").read_text()
    for ref in sorted(set(re.findall(r"(?<![\w/])infra/[\w./-]+\.(?:sh|py|yaml|md)\b|(?<![\w/])infra/Dockerfile\b", text))):
        assert (REPO / ref).exists(), f"infra/README.md mentions {ref}, which does not exist"
    for f in INFRA.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts and f.name != "README.md":
            assert f.relative_to(REPO).as_posix() in text, f"infra/README.md does not document {f.name}"
    assert "Sizing" in text and "1.6B" in text and "10B" in text


# --------------------------------------------------------------------------- spark-submit end to end
_BOOT = """\
import os, runpy, sys
sys.path.extend({sites!r})  # after the stdlib, as site would, but without running any .pth file
args = sys.argv[1:]
while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
    args = args[1:]
if args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
elif args[0] == "-c":
    sys.argv = ["-c", *args[2:]]
    exec(compile(args[1], "<string>", "exec"), {{"__name__": "__main__"}})
else:
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    runpy.run_path(args[0], run_name="__main__")
"""


def _python_without_metacurate(tmp_path: Path) -> Path:
    """A Python that has the dependencies (pyspark, pyarrow, ...) but not metacurate.

    metacurate is installed editable here (a .pth file), so the plain interpreter would import it
    whatever --py-files says. `python -S` skips .pth files; the site-packages directories are
    appended to sys.path by a small boot script instead, in this interpreter's order (the pyspark 3.5
    environment's own directory comes before the one it shares the other dependencies from). Like a
    cluster whose workers only have the deps.
    """
    sites = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    boot = tmp_path / "boot.py"
    boot.write_text(_BOOT.format(sites=sites))
    exe = tmp_path / "python-no-metacurate"
    _stub(exe, f'exec {shlex.quote(sys.executable)} -S {shlex.quote(str(boot))} "$@"')
    return exe


def _spark_submit(tmp_path: Path, master: str, driver_args: list[str]) -> subprocess.CompletedProcess:
    """`spark-submit --master MASTER --py-files metacurate_pkgs.zip infra/driver.py ARGS`, with a
    driver and executors that can import our code only from the zip."""
    import pyspark

    from jobs.spark import ensure_java, package_zip

    python = _python_without_metacurate(tmp_path)
    probe = subprocess.run([str(python), "-c", "import pyarrow, pyspark, yaml\nimport jobs"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert "No module named 'jobs'" in probe.stderr, f"isolation broken: {probe.returncode} {probe.stderr[-2000:]}"
    zip_path = package_zip(str(tmp_path))
    spark_home = Path(pyspark.__file__).parent
    ensure_java()
    env = {**os.environ, "SPARK_HOME": str(spark_home), "PYSPARK_PYTHON": str(python),
           "PYSPARK_DRIVER_PYTHON": str(python), "SPARK_LOCAL_IP": "127.0.0.1"}
    cmd = [str(spark_home / "bin" / "spark-submit"), "--master", master, "--py-files", zip_path,
           "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.ui.enabled=false",
           str(INFRA / "driver.py"), *driver_args]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"spark-submit failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def _balanced_rows(run: Path) -> dict:
    """The balance summary, after checking that every stage completed and that the data folder
    holds exactly the rows the summary says were kept."""
    for stage in ("metadata", "match", "count", "balance"):
        assert (run / stage / "_SUCCESS").exists(), f"{stage}/_SUCCESS missing"
    summary = json.loads((run / "balance" / "_summary.json").read_text())
    assert summary["reconciled"] and summary["in"] == summary["out"] + sum(summary["rejected"].values())
    assert summary["kept"] == summary["out"] > 0
    assert pq.read_table(run / "balance").num_rows == summary["kept"]
    return summary


@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_driver_with_py_files(tmp_path):
    """`spark-submit --py-files metacurate_pkgs.zip infra/driver.py curate ...` completes all stages,
    with driver and executors that can import our code only from the zip."""
    from jobs.demo import make_demo_pool

    paths = make_demo_pool(str(tmp_path / "data"), n_rows=400, n_files=2)
    out = tmp_path / "run"
    r = _spark_submit(tmp_path, "local[2]", ["curate", "--pool", paths["pool"], "--metadata", paths["metadata"],
                                             "--out", str(out), "--t", "50", "--seed", "3"])
    summary = _balanced_rows(out)
    assert summary["t"] == 50 and summary["seed"] == 3 and summary["pool"] == 400
    assert "balance: t=50 seed=3" in r.stdout  # the CLI's own summary, printed by the driver


@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_run_config_on_a_standalone_cluster(tmp_path):
    """`spark-submit --master spark://... --py-files ... infra/driver.py run --config run.yaml` on a
    standalone master with two workers: spark-submit's --master wins over the config's default
    (the application is registered with the master, not run in local mode), the executors import
    our code only from the zip, and the kept rows are all in RUN/balance/."""
    from jobs.demo import make_demo_pool
    from jobs.localcluster import start_cluster

    paths = make_demo_pool(str(tmp_path / "data"), n_rows=600, n_files=3)
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(out), "pool": {"path": paths["pool"], "rows_per_unit": 100},
        "metadata": {"path": paths["metadata"]}, "balance": {"t": 40, "seed": 5},
        "stages": ["metadata", "match", "count", "balance"]}))
    cluster = start_cluster(workers=2, cores=1, memory="1g")
    try:
        _spark_submit(tmp_path, cluster.master_url, ["run", "--config", str(config)])
        apps = cluster.applications()
    finally:
        cluster.stop()
    assert [(a["name"], a["state"]) for a in apps] == [("metacurate", "FINISHED")], apps
    summary = _balanced_rows(out)
    assert summary["t"] == 40 and summary["seed"] == 5 and summary["pool"] == 600
