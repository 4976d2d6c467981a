"""The DataFrame API gives the run-directory path's ids, counts and kept rows for the same pool,
metadata and seed; the example script runs end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from jobs.dataframe import balance, counts_array, entry_counts, match, parquet_options
from jobs.demo import make_demo_pool

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_demo_pool(str(tmp_path_factory.mktemp("dfpool")), n_rows=3000, seed=2, n_files=3)


def _cli(curate, pool, run, settings):
    curate(pool["pool"], pool["metadata"], str(run), settings)
    match_rows = pq.read_table(run / "match").to_pydict()
    ids = dict(zip(match_rows["uid"], match_rows["entry_ids"]))
    counts = pq.read_table(run / "count").to_pydict()
    kept = pq.read_table(run / "balance").to_pydict()
    summary = json.loads((run / "balance" / "_summary.json").read_text())
    return ids, dict(zip(counts["entry_id"], counts["count"])), dict(zip(kept["uid"], kept["p_keep"])), summary


def test_same_ids_counts_and_kept_rows_as_the_cli(spark, curate, pool, tmp_path):
    ids, counts, kept, _ = _cli(curate, pool, tmp_path / "run", {"balance.t": 40, "balance.seed": 7})
    df = spark.read.parquet(pool["pool"]).repartition(5)  # partitioning must not matter
    matched = match(df, pool["metadata"]).cache()
    got_ids = {r["uid"]: list(r["entry_ids"]) for r in matched.select("uid", "entry_ids").collect()}
    assert got_ids == ids
    got_counts = {r["entry_id"]: r["count"] for r in entry_counts(matched).collect()}
    assert got_counts == counts
    assert entry_counts(matched).schema.simpleString() == "struct<entry_id:int,count:bigint>"
    out = balance(matched, entry_counts(matched), t=40, seed=7)
    got_kept = {r["uid"]: r["p_keep"] for r in out.select("uid", "p_keep").collect()}
    assert got_kept.keys() == kept.keys() and len(kept) > 100
    assert max(abs(got_kept[u] - kept[u]) for u in kept) == 0.0
    every = balance(matched, counts_array(matched), t=40, seed=7, keep=False)
    assert every.count() == matched.count()  # keep=False: p_keep on every row


def test_target_size_solves_the_same_t(spark, curate, pool, tmp_path):
    _, _, kept, summary = _cli(curate, pool, tmp_path / "run", {"balance.target_size": 900, "balance.seed": 1})
    matched = match(spark.read.parquet(pool["pool"]), json.load(open(pool["metadata"])))
    out = balance(matched, entry_counts(matched), target_size=900, seed=1)
    assert {r["uid"] for r in out.select("uid").collect()} == set(kept)
    assert summary["t"] > 1


def test_column_mapping_and_clear_errors(spark, pool):
    df = spark.read.parquet(pool["pool"]).withColumnRenamed("url", "URL").withColumnRenamed("text", "TEXT")
    with pytest.raises(InputError, match="no column `text`"):
        match(df, pool["metadata"])
    matched = match(df, pool["metadata"], url_col="URL", text_col="TEXT", keep_unmatched=True)
    assert matched.count() == df.count() and set(matched.columns) == {"URL", "TEXT", "uid", "entry_ids"}
    with pytest.raises(InputError, match="exactly one of t"):
        balance(matched, {0: 1})
    with pytest.raises(InputError, match="already has a `p_keep`"):
        balance(matched.withColumn("p_keep", matched["entry_ids"]), {0: 1}, t=5)
    counts = counts_array(match(df, pool["metadata"], url_col="URL", text_col="TEXT"))
    assert counts.dtype == np.int64 and counts.sum() > 0


def _chunks(row_group) -> dict:
    """A parquet row group's column chunks by path (``entry_ids.list.element`` for the ids)."""
    return {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}


def test_parquet_options_reach_the_writer_and_every_reader_reads_the_same_rows(spark, pool, tmp_path):
    import duckdb
    import pandas as pd
    from pyspark.sql import functions as F

    df = (spark.read.parquet(pool["pool"]).withColumnRenamed("url", "URL").withColumnRenamed("text", "TEXT")
          .withColumn("source", F.lit("demo")))  # a pass-through column that keeps its dictionary
    matched = match(df, pool["metadata"], url_col="URL", text_col="TEXT").cache()
    plain, tuned = str(tmp_path / "default"), str(tmp_path / "tuned")
    matched.write.parquet(plain)
    matched.write.options(**parquet_options(url_col="URL", text_col="TEXT")).parquet(tuned)

    files = sorted(Path(tuned).glob("*.parquet"))
    assert files
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            enc = _chunks(meta.row_group(g))
            for col in ("URL", "TEXT", "uid"):
                assert enc[col].encodings == ("DELTA_BYTE_ARRAY",) and not enc[col].has_dictionary_page, col
            assert enc["entry_ids.list.element"].encodings == ("DELTA_BINARY_PACKED",)
            assert enc["source"].has_dictionary_page
    default = _chunks(pq.ParquetFile(next(Path(plain).glob("*.parquet"))).metadata.row_group(0))
    assert default["entry_ids.list.element"].has_dictionary_page  # what the options turn off

    def rows(table) -> list:
        return sorted(zip(table["uid"], table["URL"], table["TEXT"], map(tuple, table["entry_ids"])))

    expected = rows(pq.read_table(plain).to_pydict())
    assert len(expected) > 100
    assert rows(pq.read_table(tuned).to_pydict()) == expected
    assert rows(pd.read_parquet(tuned).to_dict("list")) == expected
    con = duckdb.connect()
    got = con.execute(f"SELECT uid, URL, TEXT, entry_ids FROM read_parquet('{tuned}/*.parquet')").fetchall()
    assert sorted((u, a, b, tuple(c)) for u, a, b, c in got) == expected
    back = spark.read.parquet(tuned).select("uid", "URL", "TEXT", "entry_ids").collect()
    assert sorted((r[0], r[1], r[2], tuple(r[3])) for r in back) == expected


@pytest.mark.slow
@pytest.mark.spark  # Spark in a subprocess: run on both Spark lines
def test_the_example_script_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "dataframe_api.py"), "--out",
                           str(tmp_path / "curated"), "--master", "local[2]"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-> kept" in proc.stdout and "most matched entries" in proc.stdout
    kept = pq.read_table(tmp_path / "curated")
    assert kept.num_rows > 0 and {"URL", "TEXT", "uid", "entry_ids", "p_keep"} <= set(kept.column_names)
    ids = _chunks(pq.ParquetFile(next((tmp_path / "curated").glob("*.parquet"))).metadata.row_group(0))
    assert ids["entry_ids.list.element"].encodings == ("DELTA_BINARY_PACKED",)  # written with parquet_options()


# --------------------------------------------------------------------------- the worker-side pieces
def test_read_ahead_keeps_order_and_passes_errors_and_stops_early():
    import threading
    import time

    from jobs.dataframe import _read_ahead

    assert list(_read_ahead(iter(range(100)), depth=3)) == list(range(100))
    assert list(_read_ahead(iter([]))) == []

    def broken():
        yield 1
        yield 2
        raise InputError("bad batch 3")

    got = []
    with pytest.raises(InputError, match="bad batch 3"):
        for x in _read_ahead(broken(), depth=1):
            got.append(x)
    assert got == [1, 2]  # everything before the error arrives first

    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    it = _read_ahead(endless(), depth=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()  # the consumer stops: the thread must not go on pulling
    deadline = time.monotonic() + 5
    while any(t.name == "metacurate-read-ahead" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "metacurate-read-ahead" for t in threading.enumerate())
    assert len(pulled) <= 5 + 2 + 2  # at most the queue and one batch in hand beyond what was taken


def test_match_function_gives_the_same_rows_whatever_the_batching(pool, monkeypatch):
    """The mapInArrow function run in this process over the pool cut into batches of 7 rows
    (joined to 50, read ahead) gives exactly the rows of one batch: order, uids, ids."""
    import pyarrow as pa

    from jobs import dataframe
    from jobs.stages.match import compile_matcher

    table = pq.read_table(pool["pool"])
    entries = json.loads(Path(pool["metadata"]).read_text())
    task = {**compile_matcher(entries, "metaclip1"), "text_col": "text", "url_col": "url", "uid_col": "uid",
            "max_text_bytes": 65_536, "keep_unmatched": False}
    whole = pa.Table.from_batches(list(dataframe._match_batches(task)(iter(table.combine_chunks().to_batches()))))
    monkeypatch.setattr(dataframe, "BATCH_ROWS", 50)
    small = table.to_batches(max_chunksize=7)
    assert len(small) > 100
    pieces = list(dataframe._match_batches(task)(iter(small)))
    assert len(pieces) > 10
    cut = pa.Table.from_batches(pieces)
    assert whole.num_rows > 0 and cut.to_pydict() == whole.to_pydict()
