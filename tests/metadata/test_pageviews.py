"""Pageview dump parsing and title totals (no Spark)."""
from __future__ import annotations

import gzip
from collections import Counter

import pytest

from curation.errors import InputError
from metadata import pageviews as pv
from metadata.synthetic import write_pageviews


def write_hours(tmp_path) -> list[str]:
    hour1 = [("en", "New_York_City", 60), ("en", "New_York_City", 55),  # two lines, same hour
             ("en", "Hot_dog", 49),          # below the per-line 50
             ("en", "Dog", 80),
             ("en.m", "Dog", 5000),          # mobile project: not "en"
             ("de", "Hund", 900),
             ("en", "Special:Search", 9000), ("en", "File:Dog.jpg", 300),
             ("en", "Cat", 50)]
    hour2 = [("en", "Hot_dog", 75), ("en", "Dog", 50), ("en", "Cat", 19), ("en", "Mouse", 69),
             ("en", "Category:Dogs", 100)]
    paths = []
    for i, lines in enumerate((hour1, hour2)):
        p = str(tmp_path / f"pageviews-20240101-0{i}0000.gz")
        write_pageviews(p, lines)
        paths.append(p)
    return paths


def test_title_totals_by_hand(tmp_path):
    paths = write_hours(tmp_path)
    totals = pv.title_totals(paths)
    # New York City 60+55; Dog 80+50; Hot dog 75 (49 dropped per line); Cat 50 (<70 total);
    # Mouse 69 (<70); en.m / de / ':' titles never count
    assert totals == {"New York City": 115, "Dog": 130, "Hot dog": 75}
    assert pv.title_totals(paths, min_total_views=50) == {"New York City": 115, "Dog": 130, "Hot dog": 75, "Cat": 50,
                                                          "Mouse": 69}
    assert pv.title_totals(paths, min_line_views=1, min_total_views=1)["Cat"] == 69
    assert pv.title_totals(paths, project="de", min_total_views=1) == {"Hund": 900}


def test_non_numeric_views_names_file_and_line(tmp_path):
    p = str(tmp_path / "pageviews-bad.gz")
    write_pageviews(p, [("en", "Dog", 80), ("en", "Cat", "many")])
    with pytest.raises(InputError, match=r"pageviews-bad\.gz:2: views 'many' is not a number"):
        pv.title_totals([p])


def test_short_line_truncated_gzip_and_missing_file(tmp_path):
    p = tmp_path / "short.gz"
    with gzip.open(p, "wt") as f:
        f.write("en Dog 80 0\nen\n")
    with pytest.raises(InputError, match=r"short\.gz:2"):
        pv.file_title_views(str(p))
    t = tmp_path / "trunc.gz"
    write_pageviews(str(t), [("en", f"T{i}", 100 + i) for i in range(5000)])
    t.write_bytes(t.read_bytes()[:-200])
    with pytest.raises(InputError, match=r"trunc\.gz"):
        pv.file_title_views(str(t))
    with pytest.raises(InputError, match="not found.*nope.gz"):
        pv.file_title_views(str(tmp_path / "nope.gz"))


def test_percent_encoded_titles_are_decoded_and_summed(tmp_path):
    p = str(tmp_path / "pageviews-20240101-020000.gz")
    write_pageviews(p, [("en", "Café", 60), ("en", "Caf%C3%A9", 55),        # one article, two spellings
                        ("en", "AC%2FDC", 80), ("en", "AC/DC", 50),
                        ("en", "Special%3ASearch", 900),                    # ':' after decoding: dropped
                        ("en", "100%_Pure", 90),                            # '%' that is no escape: as is
                        ("en", "Caf%E9", 75), ("en", "Caf%E9", 70),          # Latin-1: not UTF-8, kept raw
                        ("en", "New%20York", 40), ("en", "New_York", 45)])  # each line < 50: dropped
    stats = Counter()
    totals = pv.title_totals([p], stats=stats)
    assert totals == {"Café": 115, "AC/DC": 130, "100% Pure": 90, "Caf%E9": 145}
    assert stats == {"percent_decoded": 3, "percent_literal": 1, "undecodable": 2}
    assert pv.decode_title("Caf%C3%A9") == ("Café", True)
    assert pv.decode_title("Caf%E9") == ("Caf%E9", False)
    assert pv.decode_title("%ZZ%2") == ("%ZZ%2", True)
