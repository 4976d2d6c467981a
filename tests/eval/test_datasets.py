"""Dataset loaders on tiny generated folders, shards and parquet; the built-in digits."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.errors import InputError
from eval.datasets import (DIGIT_NUMERALS, DIGIT_WORDS, expand_shards, load_dataset,
                           load_digits_dataset, write_image_folder)


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buf, format="JPEG")
    return buf.getvalue()


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_digits_builtin():
    ds = load_digits_dataset(image_size=24)
    assert len(ds) == 1797 and ds.classnames == DIGIT_WORDS
    assert ds.keys[:2] == ["0000", "0001"]
    img = ds.image(0)
    assert img.size == (24, 24) and img.mode == "RGB"
    assert set(np.unique(ds.labels)) == set(range(10))
    # ink dark on white: the corner is background
    assert np.asarray(img)[0, 0, 0] == 255 and np.asarray(img).min() < 80
    num = load_dataset("digits:numerals", image_size=8)
    assert num.classnames == DIGIT_NUMERALS and num.name == "digits:numerals"
    assert load_dataset("digits", image_size=8).name == "digits"


def test_webdataset_shards_brace_and_folder(tmp_path):
    d = tmp_path / "heldout"
    d.mkdir()
    _write_tar(d / "000000.tar", [
        ("a0", {"jpg": _jpeg("red"), "txt": b"a red square",
                "json": json.dumps({"uid": "u0"}).encode()}),
        ("a1", {"png": _png("blue"), "txt": b"ignored",
                "json": json.dumps({"captions": ["blue one", "a blue square"]}).encode()}),
    ])
    _write_tar(d / "000001.tar", [
        ("b0", {"jpg": _jpeg("green"), "txt": "grün".encode()}),
        ("b1", {"txt": b"no image here"}),
    ])
    pattern = str(d / "{000000..000001}.tar")
    assert expand_shards(pattern) == [str(d / "000000.tar"), str(d / "000001.tar")]
    ds = load_dataset(pattern)
    assert ds.keys == ["a0", "a1", "b0"]
    assert ds.captions == [["a red square"], ["blue one", "a blue square"], ["grün"]]
    assert ds.labels is None and ds.image(1).getpixel((0, 0)) == (0, 0, 255)
    # a folder of shards and heldout:RUN resolve to the same samples
    assert load_dataset(str(d)).keys == ds.keys
    assert ds.name == "heldout" and load_dataset(f"mine={pattern}").name == "mine"
    held = load_dataset(f"heldout:{tmp_path}")
    assert held.name == "heldout" and held.keys == ds.keys
    with pytest.raises(InputError, match="held-out"):
        load_dataset(f"heldout:{tmp_path / 'nothing'}")


def test_shards_with_labels(tmp_path):
    _write_tar(tmp_path / "s.tar", [("k0", {"jpg": _jpeg("red"), "cls": b"1"}),
                                     ("k1", {"jpg": _jpeg("red"), "cls": b"0"})])
    ds = load_dataset(str(tmp_path / "s.tar"), classnames=["no", "yes"])
    assert ds.labels.tolist() == [1, 0] and ds.is_classification


def test_image_folders(tmp_path):
    cls = tmp_path / "cls"
    for name, color in (("sea_lion", "gray"), ("cat", "orange")):
        (cls / name).mkdir(parents=True)
        for i in range(2):
            (cls / name / f"{i}.jpg").write_bytes(_jpeg(color))
    ds = load_dataset(str(cls))
    assert ds.classnames == ["cat", "sea lion"]
    assert ds.keys == ["cat/0", "cat/1", "sea_lion/0", "sea_lion/1"]
    assert ds.labels.tolist() == [0, 0, 1, 1]

    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_bytes(_png("white"))
    (flat / "x.txt").write_text("first caption\nsecond caption\n\n", encoding="utf-8")
    (flat / "y.jpg").write_bytes(_jpeg("black"))
    ds2 = load_dataset(str(flat))
    assert ds2.keys == ["x", "y"] and ds2.captions == [["first caption", "second caption"], []]
    assert not ds2.is_classification
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        load_dataset(str(empty))


def test_write_image_folder_round_trip(tmp_path):
    ds = load_digits_dataset(image_size=8).subset(range(12))
    write_image_folder(ds, str(tmp_path / "flat"), flat=True)
    back = load_dataset(str(tmp_path / "flat"))
    assert back.keys == ds.keys
    assert np.array_equal(np.asarray(back.image(3)), np.asarray(ds.image(3)))
    write_image_folder(ds, str(tmp_path / "nested"))
    nested = load_dataset(str(tmp_path / "nested"))
    assert len(nested) == 12 and set(nested.classnames) <= set(DIGIT_WORDS)


def test_parquet_binary_and_struct(tmp_path):
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("key", pa.string()),
                        ("caption", pa.string())],
                       metadata={b"classnames": json.dumps(["red", "blue"]).encode()})
    t = pa.table({"image": [_jpeg("red"), _png("blue")], "label": [0, 1], "key": ["r", "b"],
                  "caption": ["a red thing", "a blue thing"]}, schema=schema)
    pq.write_table(t, tmp_path / "a.parquet")
    ds = load_dataset(str(tmp_path / "a.parquet"))
    assert ds.keys == ["r", "b"] and ds.classnames == ["red", "blue"]
    assert ds.captions == [["a red thing"], ["a blue thing"]] and ds.labels.tolist() == [0, 1]

    part = tmp_path / "parts"
    part.mkdir()
    t2 = pa.table({"image": [{"bytes": _png("green"), "path": "g.png"}],
                   "captions": [["one", "two"]]})
    pq.write_table(t2, part / "part-0.parquet")
    ds2 = load_dataset(str(part))
    assert ds2.keys == ["0"] and ds2.captions == [["one", "two"]]
    assert ds2.image(0).getpixel((1, 1)) == (0, 128, 0)
    assert len(load_dataset(str(part / "*.parquet"))) == 1
    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="no image column"):
        load_dataset(str(tmp_path / "bad.parquet"))


def test_unknown_spec():
    with pytest.raises(InputError, match="not found"):
        load_dataset("/definitely/not/here")
