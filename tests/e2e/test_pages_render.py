"""Every HTML page the project writes, rendered in headless Chromium.

Why a browser: a page can be valid HTML and still show nothing useful (a broken image, a blank
canvas, a table wider than the window). Each page is written from a small run (the distribution
report from a real Spark curation and from a simulated run with every later stage, the overlap
audit with and without overlaps, the eval summary), then Chromium loads it twice: once with a probe
script that records, after the load event, whether every ``<img>`` decoded and whether the page
fits the window; once to take a screenshot, which must not be blank. Independently of the browser,
every local PNG and inline image must decode with PIL at a sane size.

Chromium comes from the install (``infra/bootstrap.sh --test`` installs Debian's ``chromium``);
without it the test is skipped with the reason. Set ``METACURATE_SCREENSHOTS=DIR`` to keep the
screenshots (CI keeps them as artifacts); otherwise they stay in pytest's temporary folder.
"""
from __future__ import annotations

import base64
import html
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 2400)
# Flags for a closed machine: no sandbox (root in a container), no GPU, and none of the background
# connections (component updates, sync, QUIC) that a network without egress refuses.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}")
# After the load event: every image's decoded size, and whether the page is wider than the window.
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-probe', JSON.stringify("
         "{images: [...document.images].map(i => [i.getAttribute('src').slice(0, 60), i.complete, i.naturalWidth, "
         "i.naturalHeight]), scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth})));"
         "</script>")


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _browser()
    if path is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; infra/bootstrap.sh --test "
                    "installs it as root)")
    return path


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


def _chromium(browser: str, profile: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _check_images_on_disk(page: Path) -> list[str]:
    """Every ``<img>`` source decodes with PIL at a sane size; returns the sources."""
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    for src in parser.srcs:
        assert src, f"{page}: an <img> without a source"
        if src.startswith("data:"):
            data = base64.b64decode(src.split(",", 1)[1])
        else:
            path = page.parent / src
            assert path.is_file(), f"{page}: {src} is missing"
            data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
        if src.startswith("data:"):
            assert 16 <= w <= 512 and 16 <= h <= 512, (page, src[:40], im.size)
        else:
            assert 300 <= w <= 3000 and 150 <= h <= 6000, (page, src, im.size)  # a plot, not a sliver
    return parser.srcs


def _render(browser: str, page: Path, shots: Path, name: str, work: Path) -> Path:
    """Probe and screenshot ``page``; returns the screenshot's path."""
    srcs = _check_images_on_disk(page)
    probe_page = page.parent / f"_probe_{name}.html"  # beside the page: relative sources resolve
    probe_page.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        dom = _chromium(browser, work / f"profile-{name}-dom", "--virtual-time-budget=10000", "--dump-dom",
                        probe_page.as_uri())
    finally:
        probe_page.unlink()
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, f"{name}: chromium did not run the probe (rc {dom.returncode}): {dom.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert len(probe["images"]) == len(srcs), (name, probe["images"], srcs)
    for src, complete, width, height in probe["images"]:
        assert complete and width > 0 and height > 0, f"{name}: chromium could not show {src!r}"
    assert probe["scrollWidth"] <= probe["innerWidth"], f"{name}: the page is wider than the window: {probe}"
    shot = shots / f"{name}.png"
    done = _chromium(browser, work / f"profile-{name}-shot", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), f"{name}: no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == WINDOW, im.size
        grey = np.asarray(im.convert("L"), dtype=np.int16)
    background = np.bincount(grey.ravel()).argmax()
    top = grey[:900]  # every page opens with its title, key figures and a table: a short page ends early
    assert (np.abs(top - background) > 24).mean() > 0.02, f"{name}: the screenshot is (nearly) blank"
    assert (grey < 90).sum() > 2000, f"{name}: no dark text on the screenshot"
    return shot


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    keep = os.environ.get("METACURATE_SCREENSHOTS")
    d = Path(keep) if keep else tmp_path_factory.mktemp("screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _simulate_run():
    """``simulate_run`` of tests/report/conftest.py (a conftest is not importable by name)."""
    spec = importlib.util.spec_from_file_location("report_fixture_runs", REPO / "tests" / "report" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.simulate_run


def _pictures(n: int, size: int = 96) -> list[bytes]:
    """``n`` clearly different PNG pictures (a shape on a coloured ground each)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        x0, y0 = (int(v) for v in rng.integers(5, size // 2, 2))
        shape = draw.ellipse if i % 2 else draw.rectangle
        fill = tuple(int(c) for c in rng.integers(0, 255, 3))
        shape([x0, y0, x0 + size // 3 + (10 * i) % 30, y0 + size // 3], fill=fill)
        for _ in range(3 + i):
            ends = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
            draw.line(ends, fill=(255, 255, 255), width=3)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _write_audits(root: Path) -> tuple[Path, Path]:
    """An audit that finds two copies and one that finds nothing; returns both pages."""
    from curation.phash import hamming, phash_bytes
    from curation.storage import Storage
    from eval.audit import write_audit

    storage = Storage.from_env()
    pics = _pictures(6)
    tar_path = root / "pool.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, data in enumerate(pics[:4]):
            info = tarfile.TarInfo(f"{i:03d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pool = pa.table({"uid": [f"uid{i}" for i in range(4)],
                     "phash": pa.array([phash_bytes(p) for p in pics[:4]], pa.uint64()),
                     "tar": [str(tar_path)] * 4, "key": [f"{i:03d}" for i in range(4)]})
    evals_dir = root / "evalimages"
    evals_dir.mkdir()

    def evals(indices: list[int]) -> pa.Table:
        for i in indices:
            (evals_dir / f"e{i}.png").write_bytes(pics[i])
        return pa.table({"dataset": ["toy-eval"] * len(indices), "key": [f"e{i}" for i in indices],
                         "phash": pa.array([phash_bytes(pics[i]) for i in indices], pa.uint64()),
                         "source": [f"file:{evals_dir / f'e{i}.png'}" for i in indices]})

    found = write_audit(str(root / "audit-found"), pool, evals([0, 2, 5]), storage, k=8)
    assert found["overlapping_pool_images"] == 2
    far = np.array([phash_bytes(p) for p in pics[:4]], np.uint64)
    assert int(hamming(far, np.uint64(phash_bytes(pics[4]))).min()) > 8  # the "nothing found" case is real
    none = write_audit(str(root / "audit-none"), pool, evals([4]), storage, k=8)
    assert none["overlapping_pool_images"] == 0 and none["phash_pairs"] == 0
    return root / "audit-found" / "index.html", root / "audit-none" / "index.html"


def _write_eval(root: Path) -> Path:
    """A results document of every kind (12 classes, some with long names) and its summary page."""
    from eval.report import SCHEMA, write_results, write_summary

    classes = ["airplane", "automobile", "bird", "cat", "a rather long class name", "dog", "frog", "horse",
               "ship", "truck", "tabby cat with stripes", "snowy owl"]
    per_class = {c: round(0.05 * (i % 7) + 0.02, 3) for i, c in enumerate(classes)}
    results = {
        "schema": SCHEMA, "created_utc": "2025-01-01T00:00:00+00:00", "checkpoint": "runs/my-train",
        "model": {"class": "EvalCLIP", "image_size": 64, "gmacs_per_sample": 0.083264512, "embed_dim": 128},
        "samples_seen": 1920, "compute_gmacs": 159.8679,
        "zeroshot": {"toy": {"n": 1200, "top1": 0.1675, "top5": 0.52, "per_class": per_class,
                             "class_counts": {c: 100 for c in classes}, "mean_per_class": 0.1675, "num_templates": 6,
                             "overlap": {"n_overlapping": 2, "all": {"n": 1200, "top1": 0.1675},
                                         "clean": {"n": 1198, "top1": 0.1669}}}},
        "retrieval": {"heldout": {"n_images": 100, "n_texts": 200,
                                  "image_to_text": {"R@1": 0.05, "R@5": 0.14, "R@10": 0.24},
                                  "text_to_image": {"R@1": 0.005, "R@5": 0.125, "R@10": 0.31}, "mean_recall": 0.1475}},
        "linear_probe": {"toy": {"top1": 0.41, "best_C": 0.316, "sweep": [], "n_train": 700, "n_val": 100,
                                 "n_test": 400}},
    }
    write_results(results, root / "eval" / "results.json")
    return Path(write_summary(json.loads((root / "eval" / "results.json").read_text()), root / "eval"))


def test_every_page_renders(chromium, curate, tmp_path, shots):
    from jobs.demo import make_demo_pool
    from jobs.report import write_report

    pages: dict[str, Path] = {}
    demo = make_demo_pool(str(tmp_path / "demo"), n_rows=3000, seed=1, n_files=2)
    curated = tmp_path / "curated"
    curate(demo["pool"], demo["metadata"], str(curated), {"balance.t": 40, "balance.seed": 0})
    pages["report-curated"] = Path(write_report(str(curated)))
    full = tmp_path / "full"
    _simulate_run()(full, n_entries=1500, n_texts=12000, t=20, later_stages=True)
    pages["report-full"] = Path(write_report(str(full)))
    pages["audit-found"], pages["audit-none"] = _write_audits(tmp_path)
    pages["eval"] = _write_eval(tmp_path)

    text = {name: p.read_text(encoding="utf-8") for name, p in pages.items()}
    assert "No overlaps found" in text["audit-none"] and "No overlaps found" not in text["audit-found"]
    assert "chance" in text["eval"] and "zeroshot/toy/top1" in text["eval"]
    for name, page in text.items():  # one style: every page is made by curation.pages
        assert "<main>" in page and ".card .v" in page, name
    for name, page in pages.items():
        _render(chromium, page, shots, name, tmp_path / "chromium")
    assert {f"{n}.png" for n in pages} <= {p.name for p in shots.glob("*.png")}
