"""The second check of pHash pairs: a copy keeps its colours cell by cell, an image that merely
shares a layout does not."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from curation.phash import colour_distance, colour_signatures_bytes, phash, hamming


def _ring(colour: tuple[int, int, int], bg: tuple[int, int, int] = (240, 240, 240), size: int = 128) -> Image.Image:
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    d.ellipse([20, 20, size - 20, size - 20], outline=colour, width=14)
    return img


def _jpeg(img: Image.Image, q: int = 70) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=q)
    return b.getvalue()


def test_same_layout_other_colour_collides_in_phash_but_not_in_colour():
    red, blue = _ring((200, 30, 30)), _ring((30, 40, 200))
    assert hamming(phash(red), phash(blue)) <= 8  # the collision the check exists for
    sigs, errors = colour_signatures_bytes([_jpeg(red), _jpeg(blue)])
    assert errors == [None, None]
    assert colour_distance(sigs[0], sigs[1])[0] > 6.0


def test_a_resized_reencoded_copy_keeps_its_colours():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((160, 160), Image.BILINEAR)
    copy = noise.resize((200, 200)).convert("RGB")
    sigs, _ = colour_signatures_bytes([_jpeg(noise, 95), _jpeg(copy, 60)])
    assert colour_distance(sigs[0], sigs[1])[0] < 3.0
    assert hamming(phash(noise), phash(copy)) <= 8


def test_bad_bytes_are_errors_not_exceptions():
    sigs, errors = colour_signatures_bytes([b"", b"not an image"])
    assert [e.reason for e in errors] == ["corrupt_image", "corrupt_image"] and not sigs.any()


def test_dedup_and_audit_reject_copies_but_not_same_layout_images(spark, http_server, tmp_path):
    """Through the stages: a re-encoded copy of an eval image is rejected, a ring of another colour
    (a pHash collision) is not; the overlap table keeps both pairs with their verdict, and the
    audit against the known copies says pHash alone would have been wrong once."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.balancing import uid_from_url
    from curation.evalsets import hash_evalset
    from curation.storage import Storage
    from jobs.cli import main
    from jobs.config import load_config
    from jobs.stages import run_stages

    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((160, 160), Image.BILINEAR)
    evals = tmp_path / "evals"
    evals.mkdir()
    _ring((30, 40, 200)).save(evals / "blue-ring.png")
    noise.save(evals / "noise.png")
    http_server.routes["/cc-red-ring.jpg"] = (200, _jpeg(_ring((200, 30, 30))), 0.0)
    http_server.routes["/cc-copy.jpg"] = (200, _jpeg(noise.resize((200, 200)), 60), 0.0)
    urls = [http_server.url("/cc-red-ring.jpg"), http_server.url("/cc-copy.jpg")]
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"url": urls, "text": ["a red ring", "a noise photo"]}), pool / "p.parquet")
    (tmp_path / "m.json").write_text(json.dumps(["ring", "photo"]))
    run = tmp_path / "run"
    hash_evalset("toy", str(evals), str(run / "evalsets"), Storage())
    cfg = load_config(None, values={"run_dir": str(run), "pool.path": str(pool), "metadata.path": str(tmp_path / "m.json"),
                                    "balance.t": 100, "download.allow_loopback": True, "download.image_size": 128,
                                    "download.resize_mode": "no", "download.processes": 1})
    s = run_stages(cfg, spark=spark)
    assert s["dedup"]["rejected"] == {"eval_overlap": 1} and s["dedup"]["unconfirmed_pairs"] >= 1
    overlap = pq.read_table(run / "dedup" / "overlap").to_pydict()
    verdict = {(u, k): c for u, k, c in zip(overlap["uid"], overlap["key"], overlap["confirmed"])}
    assert verdict[(uid_from_url(urls[1]), "noise.png")] is True
    assert verdict[(uid_from_url(urls[0]), "blue-ring.png")] is False
    assert s["shard"]["out"] == 1  # the red ring stays in the training set
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps([uid_from_url(urls[1])]))
    assert main(["audit", str(run), "--truth", str(truth)]) == 0
    audit = json.loads((run / "audit" / "audit.json").read_text())
    assert audit["truth"]["confirmed"]["precision"] == 1.0 and audit["truth"]["confirmed"]["recall"] == 1.0
    assert audit["truth"]["phash"]["precision"] == 0.5
    page = (run / "audit" / "index.html").read_text()
    assert "not a copy (colours differ)" in page and "Against the known copies" in page
