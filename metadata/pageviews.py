"""Wikipedia titles from pageview dumps (``pageviews-YYYYMMDD-HH0000[.gz]``).

Each line is ``project title views bytes`` (``en Main_Page 242332 0``). MetaCLIP keeps English
Wikipedia titles that are popular: per line we keep project ``en`` only (not ``en.m``,
``de``, …), lines with at least ``min_line_views`` views and no ``:`` in the title (that drops
``Special:``, ``File:``, ``Talk:`` … pages), sum the kept views per title over all files, and keep
titles whose total reaches ``min_total_views``. The entry is the title with ``_`` -> space.
Another language reads its own project (``de``, ``zh``) the same way; since every hourly file
holds every project, :func:`iter_project_lines` serves several languages in one read.

Percent-encoding: the dumps carry titles as they were requested, so one article can appear as
``Café`` and as ``Caf%C3%A9``. Titles containing ``%`` are percent-decoded as UTF-8 *before*
the ``:`` filter and the summing, so both spellings add up to one entry (and ``Special%3ASearch``
is dropped like ``Special:Search``). A ``%`` not followed by two hex digits stays as it is
(``100%_Pure``). A title whose ``%XX`` sequences do not decode as UTF-8 (e.g. Latin-1 ``Caf%E9``)
is kept raw, never guessed at, and counted as ``undecodable`` in the build report.

A file is the unit of work (hourly files are ~50 MB gzip'd); ``file_title_views`` aggregates one
file in memory bounded by the number of distinct kept titles in that hour.
"""
from __future__ import annotations

import gzip
import io
import logging
from collections import Counter
from typing import IO, Iterable, Iterator, Mapping
from urllib.parse import unquote

from curation.errors import InputError
from curation.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "en"
DEFAULT_MIN_LINE_VIEWS = 50
DEFAULT_MIN_TOTAL_VIEWS = 70


def _open_text(path: str, storage: Storage | None = None) -> IO[str]:
    try:
        fs, p = (storage or Storage.from_env()).fs(path)
        raw = fs.open(p, "rb")
    except FileNotFoundError as exc:
        raise InputError(f"pageview file not found: {path}") from exc
    stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="\n")


def parse_line(line: str, source: str, line_no: int) -> tuple[str, str, int] | None:
    """``(project, title, views)`` of one line; ``None`` for a blank line; error otherwise."""
    parts = line.rstrip("\n").split(" ")
    if len(parts) == 1 and not parts[0].strip():
        return None
    if len(parts) < 3:
        raise InputError(f"{source}:{line_no}: expected 'project title views bytes', got {line[:120]!r}")
    project, title, views = parts[0], parts[1], parts[2]
    try:
        n = int(views)
    except ValueError as exc:
        raise InputError(f"{source}:{line_no}: views {views!r} is not a number "
                         f"(line {line[:120]!r}); is this a pageviews dump?") from exc
    return project, title, n


def decode_title(title: str) -> tuple[str, bool]:
    """``(title percent-decoded as UTF-8, True)``, or ``(title unchanged, False)`` when its
    ``%XX`` sequences are not valid UTF-8. Titles without ``%`` come back as they are."""
    if "%" not in title:
        return title, True
    try:
        return unquote(title, encoding="utf-8", errors="strict"), True
    except UnicodeDecodeError:
        return title, False


def iter_kept_lines(path: str, project: str = DEFAULT_PROJECT, min_line_views: int = DEFAULT_MIN_LINE_VIEWS,
                    stats: Counter | None = None, storage: Storage | None = None) -> Iterator[tuple[str, int]]:
    """``(decoded title, views)`` for the lines of one file that pass the per-line filters.

    ``stats`` (optional) counts lines whose title had a ``%``: ``percent_decoded``,
    ``undecodable`` (kept raw) and ``percent_literal`` (a ``%`` that is not an escape).
    """
    for _, title, views in iter_project_lines(path, {project: min_line_views},
                                              None if stats is None else {project: stats}, storage):
        yield title, views


def iter_project_lines(path: str, projects: Mapping[str, int], stats: Mapping[str, Counter] | None = None,
                       storage: Storage | None = None) -> Iterator[tuple[str, str, int]]:
    """``(project, decoded title, views)`` for the lines of the given projects that pass that
    project's minimum views per line (``projects``: project -> min_line_views).

    One read of an hourly file serves every language: each file holds all projects. ``stats``
    (optional, per project) counts as in :func:`iter_kept_lines`.
    """
    try:
        with _open_text(path, storage) as f:
            for line_no, line in enumerate(f, 1):
                rec = parse_line(line, path, line_no)
                if rec is None:
                    continue
                proj, title, views = rec
                min_views = projects.get(proj)
                if min_views is None or views < min_views or not title:
                    continue
                if "%" in title:
                    decoded, ok = decode_title(title)
                    if stats is not None and proj in stats:
                        stats[proj]["percent_decoded" if ok and decoded != title else
                                    "undecodable" if not ok else "percent_literal"] += 1
                    title = decoded
                if ":" in title or not title:
                    continue
                yield proj, title, views
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InputError(f"pageview file not found: {path}") from exc
        raise InputError(f"{path}: cannot read this gzip file ({exc}); truncated download?") from exc


def file_title_views(path: str, project: str = DEFAULT_PROJECT, min_line_views: int = DEFAULT_MIN_LINE_VIEWS,
                     stats: Counter | None = None, storage: Storage | None = None) -> Counter:
    """Kept views per (decoded) title within one file."""
    totals: Counter = Counter()
    for title, views in iter_kept_lines(path, project, min_line_views, stats, storage):
        totals[title] += views
    return totals


def file_project_views(path: str, projects: Mapping[str, int], stats: Mapping[str, Counter] | None = None,
                       storage: Storage | None = None) -> dict[str, Counter]:
    """Kept views per (decoded) title within one file, per project."""
    totals: dict[str, Counter] = {p: Counter() for p in projects}
    for proj, title, views in iter_project_lines(path, projects, stats, storage):
        totals[proj][title] += views
    return totals


def title_entry(title: str) -> str:
    """A pageview title -> entry string (``_`` -> space, nothing else)."""
    return title.replace("_", " ")


def title_totals(paths: Iterable[str], project: str = DEFAULT_PROJECT,
                 min_line_views: int = DEFAULT_MIN_LINE_VIEWS,
                 min_total_views: int = DEFAULT_MIN_TOTAL_VIEWS, stats: Counter | None = None) -> dict[str, int]:
    """Spark-free reference: entry -> total views, for entries reaching ``min_total_views``."""
    totals: Counter = Counter()
    for path in paths:
        for title, views in file_title_views(path, project, min_line_views, stats).items():
            totals[title_entry(title)] += views
    return {t: v for t, v in totals.items() if v >= min_total_views}
