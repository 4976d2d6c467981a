"""The pool: its settings, its files and how it is cut into work units (the driver reads footers only).

Spark-free: the ``match`` and ``lid`` stages plan their tasks with :func:`plan_units`, and
``infra/measure_sizing.py`` and the benchmarks use it the same way.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from curation.errors import InputError
from curation.settings import SettingError, setting
from curation.storage import Storage


@dataclass
class PoolConfig:
    path: str = setting("", "pool parquet file or folder (columns url, text, optional uid; other columns pass "
                            "through)", flag="--pool")
    url_col: str = setting("url", "the pool's image-URL column (LAION's parquet: URL); written as `url`")
    text_col: str = setting("text", "the pool's caption column (LAION's parquet: TEXT); written as `text`",
                            aliases=("--caption-col",))
    uid_col: str = setting("uid", "the pool's id column, used where present (DataComp: uid); rows without one get "
                                  "sha224(url)[:24], MetaCLIP's id; written as `uid`")
    max_text_bytes: int = setting(65_536, "captions longer than this (UTF-8 bytes) are rejected as text_too_long",
                                  minimum=1)
    rows_per_unit: int = setting(250_000, "rows per work unit (a Spark task): row groups are grouped up to this "
                                          "many rows", minimum=1)
    on_bad_file: str = setting("fail", "an unreadable pool parquet file: 'fail' the job or 'skip' it with a "
                                       "reject", choices=("fail", "skip"))
    check_duplicate_uids: bool = setting(True, "reject later repeats of a uid among matched rows as "
                                               "duplicate_uid (pool order decides which is kept; costs one "
                                               "shuffle of the uids)")

    def columns(self) -> dict[str, str]:
        """The pool's column for each of ``url``, ``text`` and ``uid`` (what the stage calls them)."""
        return {"url": self.url_col, "text": self.text_col, "uid": self.uid_col}

    def validate(self) -> None:
        mapped = [c for c in self.columns().values()]
        if len(set(mapped)) < 3:
            raise SettingError("url_col", f"url_col, text_col and uid_col must name three different columns, got "
                                          f"{mapped}")


def is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or str(t) in ("string_view", "binary_view"))


#: Columns the stages add: a pool column of one of these names would collide with them.
RESERVED_COLUMNS = ("entry_ids", "p_keep")


def pool_files(path: str, storage: Storage) -> list[str]:
    """The pool's parquet files: the file given, or a folder's ``*.parquet`` and those of its
    Hive-style partition folders (``name=value/``), as Spark reads a folder. Parquet in any other
    subfolder is an error naming it: such a file is not silently read, nor silently left out."""
    files = storage.list_files(path, ".parquet")
    if not storage.isdir(path):
        return files
    root = storage.fs(path)[1].rstrip("/")
    kept, stray = [], set()
    for f in files:
        parts = storage.fs(f)[1][len(root) + 1:].split("/")
        if all("=" in d for d in parts[:-1]):
            kept.append(f)
        else:
            stray.add("/".join(parts[:-1]))
    if stray:
        raise InputError(f"pool folder {path} has parquet files in subfolder(s) {sorted(stray)[:5]}, which are "
                         "not partitions (name=value); point pool.path at the folder that holds the pool's files, "
                         "or move them up")
    return kept


def plan_units(s: PoolConfig, storage: Storage) -> tuple[list[dict], list[dict]]:
    """Work units from the pool's footers (the driver reads metadata only): ``(units, bad_files)``."""
    files = pool_files(s.path, storage)
    if not files:
        raise InputError(f"no .parquet files found under pool {s.path}")

    def footer(path: str):
        try:
            with storage.parquet_file(path) as pf:
                md = pf.metadata
                return path, md, md.schema.to_arrow_schema(), None
        except Exception as exc:  # malformed / truncated parquet
            return path, None, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(16) as ex:
        footers = list(ex.map(footer, files))
    units, bad = [], []
    for file_idx, (path, md, schema, err) in enumerate(footers):
        if err is not None:
            if s.on_bad_file == "fail":
                raise InputError(f"pool file {path} is not readable parquet ({err}); fix or remove it, "
                                 "or set pool.on_bad_file: skip to record it as a reject and continue")
            bad.append({"path": path, "error": err})
            continue
        cols = s.columns()
        missing = [cols[c] for c in ("url", "text") if cols[c] not in schema.names]
        if missing:
            raise InputError(f"pool file {path} lacks column(s) {missing}; it has {schema.names}. The pool needs "
                             "an image-URL and a caption column: name them with pool.url_col / pool.text_col "
                             "(--url-col / --text-col), e.g. URL and TEXT for LAION's parquet")
        shadowed = [c for c in ("url", "text", "uid") if cols[c] != c and c in schema.names]
        if shadowed:
            raise InputError(f"pool file {path} has a column `{shadowed[0]}` besides the one pool.{shadowed[0]}_col "
                             f"names (`{cols[shadowed[0]]}`), and the output names that one `{shadowed[0]}`: "
                             "rename or drop one of them")
        clash = [c for c in RESERVED_COLUMNS if c in schema.names]
        if clash:
            raise InputError(f"pool file {path} has column(s) {clash}, which the match and balance stages add to "
                             "every row; rename or drop them in the pool (e.g. a pool that is an earlier curated "
                             "output: select url, text and uid)")
        for role in ("url", "text", "uid"):
            col = cols[role]
            if col in schema.names and not is_text_type(schema.field(col).type):
                raise InputError(f"pool file {path}: column `{col}` is {schema.field(col).type}; it must hold "
                                 "strings (string or binary, plain or dictionary-encoded)")
        rg_start, rows = 0, 0
        for rg in range(md.num_row_groups):
            rows += md.row_group(rg).num_rows
            if rows >= s.rows_per_unit or rg == md.num_row_groups - 1:
                units.append({"unit": len(units), "path": path, "file": file_idx,
                              "rg_start": rg_start, "rg_end": rg + 1, "rows": rows})
                rg_start, rows = rg + 1, 0
    return units, bad
