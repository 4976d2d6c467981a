"""Open Multilingual Wordnet tab files (wn-data-<code>.tab) -> WordNet names per language (no Spark)."""
from __future__ import annotations

from pathlib import Path

import pytest

from curation.errors import InputError
from metadata.omw import find_tab_files, language_of, lemma_entry, omw_entries, read_tab

HEADER = "# Test Wordnet\t{code}\thttp://example.org/wn\tCC BY 4.0\n"


def write_tab(path: Path, code: str, rows: list[str], header: bool = True, newline: str = "\n") -> Path:
    """A tab file in OMW's layout: the header line, then the given lines as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (HEADER.format(code=code) if header else "") + "".join(r + "\n" for r in rows)
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def test_lemma_lines_become_names_as_metaclip2_makes_them(tmp_path):
    f = write_tab(tmp_path / "wn-data-fra.tab", "fra", [
        "# a comment line",
        "",
        "02084071-n\tfra:lemma\tchien",
        "02084071-n\tfra:lemma\tChien_de_garde",          # _ -> space, case kept
        "02084071-n\tfra:def\t0\tun animal domestique",  # definitions name nothing
        "02084071-n\tfra:exe\t0\tle chien aboie",
        "02084071-n\tfra:lemma\t  Tour Eiffel  ",         # spaces kept inside, stripped outside
        "02084442-n\tfra:lemma\tchien",                    # a second synset named chien
        "02084442-n\tfra:lemma\t\"guillemets\"",           # OMW's converter strips these quotes
        "02084442-n\tfra:lemma\tGAP!",                     # a lexical gap marker, not a word
        "02084442-n\tfra:lemma\t+",                        # punctuation only after '+' is removed
        "02084442-n\tfra:lemma\t...",                      # punctuation only
        "00001740-s\tfra:lemma\tentier",                   # satellite adjective
        "00001740-a\tfra:lemma\tentier",                   # the same synset as 00001740-s
        "00001740-a\tfra:lemma:root\tent",                 # not a lemma
        "00001740-a\tita:lemma\tintero",                   # another language's line
        "00001740-a\tlemma\tcomplet",                      # no prefix: the file's language
        "00001740-a\tfra:lemma",                           # missing the lemma column
        "notasynset\tfra:lemma\tmot",                      # bad synset id
        "02131777-v\tfra:lemma\t50周年+的",                  # COW-style morpheme mark
    ], newline="\r\n")
    pairs, stats = read_tab(str(f))
    names, agg = omw_entries([str(f)])
    assert dict(names) == {"chien": 2, "Chien de garde": 1, "Tour Eiffel": 1, "guillemets": 1, "entier": 1,
                           "complet": 1, "50周年的": 1}
    assert [e for e, _ in names] == sorted(dict(names))
    assert agg["synsets"] == 4 and agg["distinct_names"] == 7
    assert stats["malformed"] == 2 and stats["other_language"] == 1 and stats["other_type"] == 3
    assert stats["gap_or_empty"] == 3
    assert [e["line"] for e in stats["malformed_examples"]] == [19, 20]


def test_lemma_entry_rules():
    assert lemma_entry("hot_dog") == "hot dog"
    assert lemma_entry("  a b ") == "a b"
    assert lemma_entry("PSEUDOGAP!") == "" and lemma_entry("，。") == ""
    assert lemma_entry("Hund") == "Hund"


def test_non_utf8_line_names_the_file_and_line(tmp_path):
    f = tmp_path / "wn-data-deu.tab"
    f.write_bytes(HEADER.format(code="deu").encode() + "02084071-n\tdeu:lemma\tHund\n".encode()
                  + b"02121620-n\tdeu:lemma\tK\xe4tzchen\n")
    with pytest.raises(InputError, match=r"wn-data-deu\.tab:3: not UTF-8.*iconv"):
        read_tab(str(f))


def test_a_file_without_tabs_is_an_error(tmp_path):
    f = write_tab(tmp_path / "wn-data-deu.tab", "deu", ["02084071-n deu:lemma Hund", "02121620-n deu:lemma Katze"])
    with pytest.raises(InputError, match="TAB-separated"):
        read_tab(str(f))


def test_bom_and_no_header(tmp_path):
    f = tmp_path / "wn-data-cmn.tab"
    f.write_bytes("\ufeff02084071-n\tcmn:lemma\t狗\n02084071-n\tcmn:lemma\t犬\n".encode("utf-8"))
    assert read_tab(str(f))[0] == [("02084071-n", "狗"), ("02084071-n", "犬")]


def test_find_tab_files_maps_codes_to_languages(tmp_path):
    write_tab(tmp_path / "omw" / "cow" / "wn-data-cmn.tab", "cmn", ["02084071-n\tcmn:lemma\t狗"])
    write_tab(tmp_path / "omw" / "cwn" / "wn-data-qcn.tab", "qcn", ["02084071-n\tqcn:lemma\t狗"])
    write_tab(tmp_path / "omw" / "deu" / "wn-data-deu.tab", "deu", ["02084071-n\tdeu:lemma\tHund"])
    write_tab(tmp_path / "omw" / "x" / "wn-data-de.tab", "de", ["02084071-n\tde:lemma\tHündchen"])
    (tmp_path / "omw" / "deu" / "README").write_text("not a tab file")
    found = find_tab_files(str(tmp_path / "omw"))
    assert {k: [Path(p).name for p in v] for k, v in found.items()} == {
        "zh": ["wn-data-cmn.tab", "wn-data-qcn.tab"], "de": ["wn-data-deu.tab", "wn-data-de.tab"]}
    # a file named with the 2-letter code accepts the 3-letter prefix of the same language
    names, _ = omw_entries(found["de"])
    assert dict(names) == {"Hund": 1, "Hündchen": 1}
    assert language_of("nob") == "no" and language_of("jpn") == "ja" and language_of("xyz") == "xyz"
    assert list(find_tab_files(str(tmp_path / "omw" / "*" / "wn-data-cmn.tab"))) == ["zh"]
    with pytest.raises(InputError, match="must be named wn-data-<code>.tab"):
        find_tab_files(str(tmp_path / "omw" / "deu" / "*"))
    with pytest.raises(InputError, match="Open Multilingual Wordnet files not found"):
        find_tab_files(str(tmp_path / "nowhere"))
