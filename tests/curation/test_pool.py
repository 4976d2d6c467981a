"""curation/pool.py without Spark: which files a pool folder holds, and how they become work units."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from curation.pool import PoolConfig, plan_units, pool_files
from curation.settings import SettingError
from curation.storage import Storage


def _write(path, rows: int, row_group: int, **cols) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"url": [f"http://h/{i}" for i in range(rows)], "text": [f"t {i}" for i in range(rows)], **cols}
    pq.write_table(pa.table(data), path, row_group_size=row_group)


def test_units_group_whole_row_groups_up_to_rows_per_unit(tmp_path):
    _write(tmp_path / "pool" / "a.parquet", 10, 3)  # row groups of 3, 3, 3, 1
    _write(tmp_path / "pool" / "b.parquet", 4, 4)
    units, bad = plan_units(PoolConfig(path=str(tmp_path / "pool"), rows_per_unit=5), Storage())
    assert bad == []
    got = [(u["path"].rsplit("/", 1)[-1], u["rg_start"], u["rg_end"], u["rows"]) for u in units]
    # a unit closes once it holds rows_per_unit rows (row groups are never split) or at a file's end
    assert got == [("a.parquet", 0, 2, 6), ("a.parquet", 2, 4, 4), ("b.parquet", 0, 1, 4)]
    assert [u["unit"] for u in units] == [0, 1, 2] and sum(u["rows"] for u in units) == 14


def test_partition_folders_are_read_and_other_subfolders_refused(tmp_path):
    _write(tmp_path / "pool" / "a.parquet", 2, 2)
    _write(tmp_path / "pool" / "lang=de" / "b.parquet", 2, 2)
    (tmp_path / "pool" / "_SUCCESS").write_text("")
    names = [f.rsplit("/", 1)[-1] for f in pool_files(str(tmp_path / "pool"), Storage())]
    assert names == ["a.parquet", "b.parquet"]
    _write(tmp_path / "pool" / "old" / "c.parquet", 2, 2)
    with pytest.raises(InputError, match=r"subfolder\(s\) \['old'\]"):
        pool_files(str(tmp_path / "pool"), Storage())


def test_an_unreadable_file_fails_or_is_listed_as_bad(tmp_path):
    _write(tmp_path / "pool" / "a.parquet", 3, 3)
    (tmp_path / "pool" / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"b.parquet is not readable parquet .*pool.on_bad_file: skip"):
        plan_units(PoolConfig(path=str(tmp_path / "pool")), Storage())
    units, bad = plan_units(PoolConfig(path=str(tmp_path / "pool"), on_bad_file="skip"), Storage())
    assert [u["rows"] for u in units] == [3]
    assert [b["path"].rsplit("/", 1)[-1] for b in bad] == ["b.parquet"] and bad[0]["error"]


def test_column_checks_name_what_to_change(tmp_path):
    storage = Storage()
    (tmp_path / "laion").mkdir()
    pq.write_table(pa.table({"URL": ["http://h/0"], "TEXT": ["a dog"]}), tmp_path / "laion" / "a.parquet")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['url', 'text'\].*--url-col"):
        plan_units(PoolConfig(path=str(tmp_path / "laion")), storage)
    units, _ = plan_units(PoolConfig(path=str(tmp_path / "laion"), url_col="URL", text_col="TEXT"), storage)
    assert [u["rows"] for u in units] == [1]

    _write(tmp_path / "ints" / "a.parquet", 2, 2, uid=[1, 2])
    with pytest.raises(InputError, match=r"column `uid` is int64; it must hold strings"):
        plan_units(PoolConfig(path=str(tmp_path / "ints")), storage)
    _write(tmp_path / "curated" / "a.parquet", 2, 2, entry_ids=[[1], [2]])
    with pytest.raises(InputError, match=r"column\(s\) \['entry_ids'\], which the match and balance stages add"):
        plan_units(PoolConfig(path=str(tmp_path / "curated")), storage)
    with pytest.raises(InputError, match="no .parquet files found"):
        (tmp_path / "empty").mkdir()
        plan_units(PoolConfig(path=str(tmp_path / "empty")), storage)
    with pytest.raises(SettingError, match="three different columns"):
        PoolConfig(path="x", url_col="text").validate()
