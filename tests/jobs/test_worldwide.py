"""MetaCLIP 2 worldwide curation through the real stages: language ID on every caption, each
caption matched against its own language's entries only (``match.rule: metaclip2``, so a Chinese
entry matches inside a caption without spaces), and a threshold per language derived from the
reference language's tail proportion (or ``balance.tail_p``)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import balancing
from curation.errors import InputError

ENTRIES = {"en": ["dog", "cat", "red", "garden"], "de": ["Hund", "Katze", "rot", "Garten"],
           "zh": ["狗", "猫", "红色", "花园"]}
# (caption template, language CLD2 gives it); the number makes rows distinct
CAPTIONS = [
    ("a red dog sleeping on the sofa at home {i}", "en", 30),
    ("the cat and the dog are playing in the garden {i}", "en", 12),
    ("ein roter Hund schläft auf dem Sofa zu Hause {i}", "de", 10),
    ("die Katze und der Hund spielen im Garten {i}", "de", 6),
    ("一只红色的狗在家里的沙发上睡觉 {i}", "zh", 8),
    ("猫和狗在花园里玩耍 {i}", "zh", 4),
    ("un chien rouge qui dort sur le canapé de la maison {i}", "other", 5),
]


def _metadata_stage(run) -> None:
    """A complete metadata stage whose entries carry a language (what a multilingual build or
    import writes: global entry ids, one list per language)."""
    from curation.rundir import RunDir

    ids, entries, langs = [], [], []
    for lang, words in ENTRIES.items():
        for w in words:
            ids.append(len(ids))
            entries.append(w)
            langs.append(lang)
    d = RunDir(str(run)).stage("metadata")
    d.storage.makedirs(d.url)
    pq.write_table(pa.table({"entry_id": pa.array(ids, pa.int32()), "entry": entries, "lang": langs,
                             "source": ["import"] * len(ids)}),
                   str(run / "metadata" / "entries.parquet"))
    (run / "metadata" / "metadata.json").write_text(json.dumps(entries, ensure_ascii=False))
    d.write_summary({"in": len(ids), "out": len(ids), "rejected": {}})
    d.write_success("test-metadata")


@pytest.fixture
def world(tmp_path):
    rows = [(f"http://h/{lang}/{n}/{i}.jpg", tpl.format(i=i), lang)
            for n, (tpl, lang, k) in enumerate(CAPTIONS) for i in range(k)]
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"url": [r[0] for r in rows], "text": [r[1] for r in rows]}), pool / "p.parquet",
                   row_group_size=20)
    run = tmp_path / "run"
    _metadata_stage(run)
    return {"pool": str(pool), "run": run, "rows": rows}


def _config(world, **values):
    from jobs.config import load_config

    return load_config(None, values={"run_dir": str(world["run"]), "pool.path": world["pool"],
                                     "pool.rows_per_unit": 20, "lid.enabled": True, "match.rule": "metaclip2",
                                     **values})


def _entry_names(ids):
    flat = [w for words in ENTRIES.values() for w in words]
    return sorted(flat[i] for i in ids)


def test_each_caption_matches_its_own_languages_entries(spark, world):
    from jobs.stages import run_stages

    s = run_stages(_config(world, **{"balance.t": 5}), ["lid", "match", "count", "balance"], spark=spark,
                   add_upstream=False)
    n = len(world["rows"])
    assert s["lid"]["in"] == s["lid"]["out"] == n
    assert s["lid"]["languages"] == {"en": 42, "de": 16, "zh": 12, "other": 5}
    assert s["match"]["rejected"] == {"no_language_metadata": 5} and s["match"]["out"] == n - 5
    m = pq.read_table(world["run"] / "match").to_pylist()
    by_text = {r["text"]: r for r in m}
    assert _entry_names(by_text["ein roter Hund schläft auf dem Sofa zu Hause 0"]["entry_ids"]) == ["Hund"]
    assert _entry_names(by_text["die Katze und der Hund spielen im Garten 0"]["entry_ids"]) == \
        ["Garten", "Hund", "Katze"]
    # no spaces in Chinese: the metaclip2 rule matches inside the run of characters
    assert _entry_names(by_text["一只红色的狗在家里的沙发上睡觉 0"]["entry_ids"]) == ["狗", "红色"]
    assert _entry_names(by_text["猫和狗在花园里玩耍 0"]["entry_ids"]) == ["狗", "猫", "花园"]
    # English captions never reach the German entries (and the other way round)
    assert _entry_names(by_text["a red dog sleeping on the sofa at home 0"]["entry_ids"]) == ["dog", "red"]
    assert {r["lang"] for r in m} == {"en", "de", "zh"}
    assert all(r["lang"] == r["url"].split("/")[3] for r in m)  # the language each caption was written in
    rej = pq.read_table(world["run"] / "rejects" / "match").to_pylist()
    assert {r["reason"] for r in rej} == {"no_language_metadata"} and len(rej) == 5


def test_per_language_thresholds_follow_the_reference_tail_proportion(spark, world):
    from jobs.stages import run_stages

    t_en = 12
    s = run_stages(_config(world, **{"balance.t": t_en, "balance.seed": 3}), ["lid", "match", "count", "balance"],
                   spark=spark, add_upstream=False)["balance"]
    counts = np.zeros(12, np.int64)
    counts_tab = pq.read_table(world["run"] / "count").to_pydict()
    counts[np.array(counts_tab["entry_id"])] = counts_tab["count"]
    langs = np.array(["en"] * 4 + ["de"] * 4 + ["zh"] * 4, dtype=object)
    expected = balancing.thresholds_per_language(counts, langs, t=t_en, reference="en")
    got = {lang: v["t"] for lang, v in s["per_language"].items()}
    assert got == expected and got["en"] == t_en
    p = balancing.t_to_p(counts[langs == "en"], t_en)
    for lang in ("de", "zh"):  # each language's t has the tail proportion nearest the English one
        assert got[lang] == balancing.p_to_t(counts[langs == lang], p)
    assert s["t"] == t_en
    per = s["per_language"]
    assert sum(v["rows_in"] for v in per.values()) == s["in"] and sum(v["rows_kept"] for v in per.values()) == s["out"]
    # every kept row's p_keep is MetaCLIP's formula with its entries' language thresholds
    prob = balancing.entry_probabilities_per_language(counts, langs, expected)
    kept = pq.read_table(world["run"] / "balance").to_pylist()
    assert kept
    for r in kept:
        want = 1.0 - np.prod([1.0 - prob[e] for e in r["entry_ids"]])
        assert r["p_keep"] == pytest.approx(want, abs=1e-12)


def test_tail_p_sets_every_languages_threshold(spark, world):
    from jobs.stages import run_stages

    s = run_stages(_config(world, **{"balance.tail_p": 0.5}), ["lid", "match", "count", "balance"], spark=spark,
                   add_upstream=False)["balance"]
    counts_tab = pq.read_table(world["run"] / "count").to_pydict()
    counts = np.zeros(12, np.int64)
    counts[np.array(counts_tab["entry_id"])] = counts_tab["count"]
    for k, lang in enumerate(("en", "de", "zh")):
        c = counts[4 * k:4 * k + 4]
        assert s["per_language"][lang]["t"] == balancing.p_to_t(c, 0.5)


def test_target_size_with_several_languages_is_a_clear_error(spark, world):
    from jobs.stages import run_stages

    with pytest.raises(InputError, match="languages: give `balance.t`"):
        run_stages(_config(world, **{"balance.target_size": 10}), ["lid", "match", "count", "balance"], spark=spark,
                   add_upstream=False)


def test_lid_is_left_out_unless_switched_on(spark, world):
    """Off (the default), `run` does not list the lid stage and match does not wait for it."""
    from jobs.stages import run_stages

    s = run_stages(_config(world, **{"lid.enabled": False, "balance.t": 5, "match.rule": "metaclip1"}),
                   ["match"], spark=spark)
    assert "lid" not in s and "lang" not in pq.read_table(world["run"] / "match").column_names
    assert json.loads((world["run"] / "match" / "_summary.json").read_text())["rejected"].get(
        "no_language_metadata") is None
