"""Real WordNet 3.0 through nltk's reader (Debian's wordnet-base)."""
from __future__ import annotations

import pytest

from curation.errors import InputError
from metadata.wordnet import prepare_reader_dir, synset_entry, wordnet_entries

#: Distinct synset names of WordNet 3.0 by nltk's rule, measured with nltk 3.x on wordnet-base.
DISTINCT_NAMES = 86_554
SYNSETS = 117_659


def test_wordnet_names(wordnet_dir, metadata_cache):
    names, stats = wordnet_entries(wordnet_dir)
    assert stats == {"synsets": SYNSETS, "distinct_names": DISTINCT_NAMES}
    by_name = dict(names)
    assert len(by_name) == DISTINCT_NAMES
    assert [e for e, _ in names] == sorted(by_name)
    # spot entries: dog has 2 synsets named dog (dog.n.01, dog.v.01); new york names 3 synsets
    assert by_name["dog"] == 2 and by_name["new york"] == 3 and by_name["hotdog"] == 2
    # nltk's rule names a synset by its FIRST lemma: "hot dog" is only ever a later lemma
    # (frank.n.02, hotdog.n.01/02), so WordNet alone does not give it (titles/bigrams do)
    assert "hot dog" not in by_name
    assert all(e == e.lower() and "_" not in e and e for e in by_name)
    # cached second call gives the same result
    assert wordnet_entries(wordnet_dir) == (names, stats)


def test_synset_entry_rule():
    assert synset_entry("hot_dog.n.01") == "hot dog"
    assert synset_entry("a.d..n.01") == "a"  # cut at the FIRST '.'
    assert synset_entry("New_York.n.01") == "new york"


def test_bad_wordnet_dirs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        prepare_reader_dir(tmp_path / "nope")
    (tmp_path / "data.noun").write_text("x")
    with pytest.raises(InputError, match="missing .*index.noun"):
        prepare_reader_dir(tmp_path)
