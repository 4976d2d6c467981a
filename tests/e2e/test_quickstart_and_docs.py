"""The README's first command at --tiny size, end to end, and every README task command (doc test).

One quickstart run (module fixture) in a temporary folder; then each ```bash block that follows a
`<!-- doctest -->` marker in README.md runs in that folder, so the documented commands cannot rot.
"""
import glob
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import webdataset as wds

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("qs")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "quickstart", "--tiny"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc.stdout


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs += [v for k, v in attrs if k == "src"]


def test_quickstart_outputs(quickstart):
    cwd, stdout = quickstart
    run = cwd / "runs" / "quickstart" / "run"
    for stage, folder in (("match", "match"), ("count", "count"), ("balance", "balance"),
                          ("download", "download"), ("dedup", "dedup"), ("shard", "shards")):
        success = json.loads((run / folder / "_SUCCESS").read_text())
        assert success["stage"] == stage and success["fingerprint"]
        s = json.loads((run / folder / "_summary.json").read_text())
        assert s["in"] == s["out"] + sum(s["rejected"].values()), (stage, s)
    # the chain reconciles: each stage's input is the previous stage's output
    summ = {f: json.loads((run / f / "_summary.json").read_text()) for f in ("match", "balance", "download", "dedup", "shards")}
    assert summ["balance"]["in"] == summ["match"]["out"]
    assert summ["download"]["in"] == summ["balance"]["out"]
    assert summ["dedup"]["in"] == summ["download"]["out"]
    assert summ["shards"]["in"] == summ["dedup"]["out"]
    assert summ["dedup"]["rejected"].get("eval_overlap", 0) >= 1  # the planted held-out copies
    # shards read back with webdataset, and sizes.json agrees
    sizes = json.loads((run / "shards" / "sizes.json").read_text())
    tars = sorted(glob.glob(str(run / "shards" / "*.tar")))
    assert [os.path.basename(t) for t in tars] == sorted(sizes)
    n = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert sample["jpg"][:2] == b"\xff\xd8" and sample["txt"] and meta["uid"] and len(meta["phash"]) == 16
        n += 1
    assert n == sum(sizes.values()) == summ["shards"]["out"]
    # eval JSON present with the scores; reports reference existing PNGs
    results = json.loads((cwd / "runs" / "quickstart" / "eval" / "results.json").read_text())
    assert "zeroshot/digits/top1" in results["metrics"] and "retrieval/heldout/mean_recall" in results["metrics"]
    # the console gives each score with its chance level (a random model's: 1/10 for the digits)
    top1 = results["metrics"]["zeroshot/digits/top1"]
    assert f"zeroshot/digits/top1 = {top1:.3f} (chance 0.100)" in stdout
    assert re.search(r"retrieval/heldout/mean_recall = [01]\.\d{3} \(chance 0\.0\d\d\)", stdout)
    # worldwide curation: three languages labelled, a t per language, retrieval per language
    lid = json.loads((run / "lid" / "_summary.json").read_text())
    assert {"en", "de", "zh"} <= set(lid["languages"])
    per = json.loads((run / "balance" / "_summary.json").read_text())["per_language"]
    assert set(per) == {"en", "de", "zh"} and all(v["rows_in"] > 0 for v in per.values())
    assert per["en"]["t"] == 20 and sum(v["rows_kept"] for v in per.values()) == summ["balance"]["out"]
    for lang in ("de", "zh"):
        assert f"retrieval/heldout-{lang}/mean_recall" in results["metrics"]
        assert f"{lang}: t = " in stdout
    for page in (run / "report" / "index.html", run / "audit" / "index.html"):
        parser = _Imgs()
        parser.feed(page.read_text())
        assert parser.srcs, page
        for src in parser.srcs:
            if src.startswith("data:"):
                continue
            png = page.parent / src
            assert png.exists() and png.stat().st_size > 1000, (page, src)
    assert "report/index.html" in stdout


def pq_uids(folder) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(folder, columns=["uid"]).column("uid").to_pylist()


def _doc_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"<!-- doctest -->\s*```bash\n(.*?)```", text, flags=re.S)


def test_readme_has_doc_tested_task_sections():
    blocks = _doc_blocks()
    assert len(blocks) >= 4
    joined = "\n".join(blocks)
    for command in ("metacurate inspect", "metacurate report", "metacurate train", "metacurate audit",
                    "metacurate eval", "--master", "standalone-cluster.sh"):
        assert command in joined


@pytest.mark.parametrize("index", range(len(_doc_blocks())))
def test_readme_task_commands_run(quickstart, index):
    cwd, _ = quickstart
    if not (cwd / "infra").exists():
        (cwd / "infra").symlink_to(REPO / "infra")
    block = _doc_blocks()[index]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"README block failed:\n{block}\n--- stdout\n{proc.stdout[-2000:]}\n" \
                                 f"--- stderr\n{proc.stderr[-3000:]}"
    if "experiment balance-vs-random" in block:  # the arms must really differ
        res = json.loads((cwd / "runs" / "bvr-tiny" / "results.json").read_text())
        assert len(res["seeds"]) >= 2
        for seed, arms in res["curation"].items():
            bal, rnd = arms["balanced"], arms["random"]
            assert bal["head_entries"] > 0 and bal["kept"] < bal["matched"], (seed, bal)  # the head was cut
            assert rnd["mode"] == "random" and abs(rnd["kept"] - bal["kept"]) <= max(10, 0.2 * bal["kept"])
        kept = {}
        for arm in ("balanced", "random"):
            kept[arm] = sorted(pq_uids(cwd / "runs" / "bvr-tiny" / "seed0" / arm / "run" / "balance"))
        assert kept["balanced"] != kept["random"]
    if "runs/on-cluster" in block:  # a cluster run must curate rows, not merely exit 0
        import pyarrow.parquet as pq

        run = cwd / "runs" / "on-cluster"
        for stage in ("match", "balance"):
            summary = json.loads((run / stage / "_summary.json").read_text())
            assert summary["out"] > 0 and pq.read_table(run / stage).num_rows == summary["out"], (stage, summary)


def _datasets(run: Path) -> list[tuple[str, int | None]]:
    """Every data folder (or file) of a finished run with the row count its stage's summary claims
    (None: no summary figure to compare with, the folder is only read)."""
    summ = {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/_summary.json")}
    out = [("match", summ["match"]["out"]), ("count", summ["count"]["entries_matched"]),
           ("balance", summ["balance"]["out"]), ("metadata/entries.parquet", summ["metadata"]["out"]),
           ("dedup/hashes", summ["dedup"]["in"]), ("dedup/overlap", summ["dedup"]["overlap_pairs"] + summ["dedup"]["unconfirmed_pairs"]),
           ("dedup/eval_hashes", None), ("shards/manifest.parquet", summ["shards"]["out"])]
    folders = {"shard": "shards"}
    for rej in sorted((run / "rejects").iterdir()):
        stage_summary = summ[folders.get(rej.name, rej.name)]
        out.append((f"rejects/{rej.name}", sum(stage_summary["rejected"].values())))
    return out


def test_every_data_folder_reads_with_standard_tools(quickstart, spark):
    """pandas, pyarrow, Spark and DuckDB read every data folder of a finished run with no options,
    and the rows they see are the rows the summaries claim."""
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    run = quickstart[0] / "runs" / "quickstart" / "run"
    datasets = _datasets(run)
    assert {name.split("/")[1] for name, _ in datasets if name.startswith("rejects/")} >= {
        "match", "balance", "download", "dedup", "shard"}
    for name, want in datasets:
        path = run / name
        glob_path = str(path / "*.parquet") if path.is_dir() else str(path)
        counts = {
            "pandas": len(pd.read_parquet(path)),
            "pyarrow": ds.dataset(str(path)).count_rows(),
            "spark": spark.read.parquet(str(path)).count(),
            "duckdb": duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob_path}')").fetchall()[0][0],
        }
        assert len(set(counts.values())) == 1, (name, counts)
        if want is not None:
            assert counts["pandas"] == want, (name, counts, want)


def test_headline_chance_levels():
    """The chance levels the quickstart prints beside its scores: 1/classes for zero-shot top-1,
    the mean recall of a random ranking for retrieval (worked out by hand for 4 images, 8 texts)."""
    from jobs.commands.quickstart import headline_chance

    results = {"zeroshot": {"digits": {"class_counts": {str(i): 5 for i in range(10)}}},
               "retrieval": {"heldout": {"n_images": 4, "n_texts": 8,
                                         "image_to_text": {"R@1": 0.5, "R@5": 0.9},
                                         "text_to_image": {"R@1": 0.5, "R@5": 1.0}},
                             "other": {"n_images": 4, "n_texts": 8, "image_to_text": {"R@1": 0.1}}}}
    # image->text: 2 right captions among 8; R@1 = 2/8, R@5 = 1 - (6*5*4*3*2)/(8*7*6*5*4)
    # text->image: 1 right image among 4; R@1 = 1/4, R@5 = 1 (every image is in the top 5)
    expected = (2 / 8 + (1 - 720 / 6720) + 1 / 4 + 1.0) / 4
    got = headline_chance(results)
    assert got == pytest.approx({"zeroshot/digits/top1": 0.1, "retrieval/heldout/mean_recall": expected})


def test_quickstart_web_keeps_its_port_and_falls_back_when_taken(tmp_path):
    """The miniature web is served on one port when it is free (the same URLs, so the same uids and
    curated set on every run) and on another free port, said on the console, when it is taken."""
    import socket
    import urllib.request

    from jobs.commands.quickstart import serve_web

    (tmp_path / "a.txt").write_text("hello")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port that was free a moment ago
    said: list[str] = []
    with serve_web(str(tmp_path), port=port, say=said.append) as (base, _stop):
        assert base == f"http://127.0.0.1:{port}" and not said
        assert urllib.request.urlopen(base + "/a.txt", timeout=5).read() == b"hello"
        # now the port is taken (by the first server): the second falls back and says so
        with serve_web(str(tmp_path), port=port, say=said.append) as (other, _stop2):
            assert other != base and other.startswith("http://127.0.0.1:")
            assert urllib.request.urlopen(other + "/a.txt", timeout=5).read() == b"hello"
    assert len(said) == 1 and f"port {port} is taken" in said[0]
