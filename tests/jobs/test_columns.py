"""Pool column mapping: LAION's URL/TEXT, DataComp's uid, other columns passed through."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.balancing import uid_from_url
from curation.errors import InputError
from jobs.cli import main

ENTRIES = ["dog", "cat", "red"]
TEXTS = [f"a red dog {i}" if i % 3 else f"a cat {i}" for i in range(90)]
URLS = [f"http://img.example/{i}.jpg" for i in range(90)]


def _write(tmp_path, name: str, table: pa.Table) -> str:
    (tmp_path / name).mkdir()
    pq.write_table(table, tmp_path / name / "p.parquet")
    return str(tmp_path / name)


def _meta(tmp_path) -> str:
    (tmp_path / "m.json").write_text(json.dumps(ENTRIES))
    return str(tmp_path / "m.json")


def test_laion_style_url_and_text_columns(curate, tmp_path):
    laion = _write(tmp_path, "laion", pa.table({"SAMPLE_ID": list(range(90)), "URL": URLS, "TEXT": TEXTS,
                                                "WIDTH": [640] * 90}))
    plain = _write(tmp_path, "plain", pa.table({"url": URLS, "text": TEXTS}))
    a = curate(laion, _meta(tmp_path), str(tmp_path / "ra"),
               {"balance.t": 20, "pool.url_col": "URL", "pool.text_col": "TEXT"})
    b = curate(plain, _meta(tmp_path), str(tmp_path / "rb"), {"balance.t": 20})
    match = pq.read_table(tmp_path / "ra" / "match")
    assert match.column_names == ["uid", "url", "text", "entry_ids", "SAMPLE_ID", "WIDTH"]
    assert set(match.column("uid").to_pylist()) == {uid_from_url(u) for u in URLS}
    kept = [sorted(pq.read_table(tmp_path / r / "balance").column("uid").to_pylist()) for r in ("ra", "rb")]
    assert kept[0] == kept[1] and a["balance"]["kept"] == b["balance"]["kept"] > 0


def test_datacomp_style_uid_column_is_used(curate, tmp_path):
    uids = [f"{i:032x}" for i in range(90)]
    pool = _write(tmp_path, "dc", pa.table({"uid": uids, "url": URLS, "text": TEXTS, "original_width": [512] * 90}))
    curate(pool, _meta(tmp_path), str(tmp_path / "r"), {"balance.t": 1000})
    match = pq.read_table(tmp_path / "r" / "match")
    assert sorted(match.column("uid").to_pylist()) == sorted(uids)
    assert "original_width" in match.column_names


def test_a_named_id_column(curate, tmp_path):
    pool = _write(tmp_path, "k", pa.table({"key": [f"k{i}" for i in range(90)], "url": URLS, "text": TEXTS}))
    curate(pool, _meta(tmp_path), str(tmp_path / "r"), {"balance.t": 1000, "pool.uid_col": "key"})
    match = pq.read_table(tmp_path / "r" / "match")
    assert sorted(match.column("uid").to_pylist()) == sorted(f"k{i}" for i in range(90))
    assert "key" not in match.column_names


def test_cli_flags_and_errors(spark, tmp_path, capsys):
    laion = _write(tmp_path, "laion", pa.table({"URL": URLS, "TEXT": TEXTS}))
    args = ["curate", "--pool", laion, "--metadata", _meta(tmp_path), "--out", str(tmp_path / "r"), "--t", "20"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) ['url', 'text']" in err and "--url-col / --text-col" in err
    assert main(args + ["--url-col", "URL", "--caption-col", "TEXT"]) == 0
    both = _write(tmp_path, "both", pa.table({"URL": URLS, "url": URLS, "text": TEXTS}))
    assert main(["curate", "--pool", both, "--metadata", _meta(tmp_path), "--out", str(tmp_path / "r2"),
                 "--url-col", "URL"]) == 2
    assert "has a column `url` besides the one pool.url_col names (`URL`)" in capsys.readouterr().err


def test_the_three_columns_must_differ(tmp_path):
    from jobs.config import load_config

    with pytest.raises(InputError, match="must name three different columns"):
        load_config(None, values={"run_dir": str(tmp_path), "pool.url_col": "x", "pool.text_col": "x"})
