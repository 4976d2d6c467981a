"""The curate job in local Spark: outputs, reconciliation, bad input, partition invariance, resume."""
import glob
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.balancing import uid_from_url
from curation.errors import InputError
from curation.matching import Matcher
from curation.rundir import RunDir
from jobs.commands.inspect import format_inspect
from jobs.demo import make_demo_pool
from jobs.stages import match as match_stage


def _read_dir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.startswith("part-"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _rejects(run, stage):
    d = os.path.join(run, "rejects", stage)
    return pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in sorted(os.listdir(d))])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_pool(str(root), n_rows=3000, seed=1, n_files=3)


def test_outputs_formats_and_reconciliation(curate, demo, tmp_path):
    run = str(tmp_path / "run")
    s = curate(demo["pool"], demo["metadata"], run, {"balance.t": 50, "balance.seed": 0})
    entries = json.load(open(demo["metadata"]))
    matcher = Matcher(entries)
    match = _read_dir(os.path.join(run, "match"))
    assert match.schema.field("entry_ids").type == pa.list_(pa.int32())
    # Every matched row's ids are exactly the reference matcher's ids.
    for text, ids in zip(match.column("text").to_pylist()[:500], match.column("entry_ids").to_pylist()[:500]):
        assert ids == matcher.match(text)
    rej = _rejects(run, "match")
    pool = pa.concat_tables([pq.read_table(os.path.join(demo["pool"], f)) for f in sorted(os.listdir(demo["pool"]))])
    all_uids = {uid_from_url(u) for u in pool.column("url").to_pylist()}
    seen = set(match.column("uid").to_pylist()) | set(rej.column("uid").to_pylist())
    assert seen == all_uids and match.num_rows + rej.num_rows == pool.num_rows
    assert s["match"]["in"] == pool.num_rows == s["match"]["out"] + sum(s["match"]["rejected"].values())
    # counts: equal to a direct count over the match output
    counts = pq.read_table(os.path.join(run, "count", "entry_counts.parquet"))
    direct = np.bincount(np.concatenate([np.array(x) for x in match.column("entry_ids").to_pylist()]),
                         minlength=len(entries))
    assert dict(zip(counts.column("entry_id").to_pylist(), counts.column("count").to_pylist())) == {
        i: int(c) for i, c in enumerate(direct) if c}
    # balance: kept rows carry p_keep; kept + balanced_out = matched
    kept = _read_dir(os.path.join(run, "balance"))
    out = _rejects(run, "balance")
    assert kept.num_rows + out.num_rows == match.num_rows
    assert set(out.column("reason").to_pylist()) <= {"balanced_out"}
    summary = json.load(open(os.path.join(run, "balance", "_summary.json")))
    assert summary["kept"] == kept.num_rows and summary["t"] == 50
    sigma = np.sqrt((kept.column("p_keep").to_numpy() * 0 + 0.25).sum() + 1)
    assert abs(summary["kept"] - summary["expected_kept"]) < 5 * max(sigma, 1) + 50
    for name in ("metadata", "match", "count", "balance"):
        assert json.load(open(os.path.join(run, name, "_SUCCESS")))["fingerprint"]
    sweep = json.load(open(os.path.join(run, "balance", "_stats", "t_sweep.json")))
    assert sweep["chosen_t"] == 50 and sweep["expected_kept"] == sorted(sweep["expected_kept"])
    kept_counts = pq.read_table(os.path.join(run, "balance", "_stats", "kept_counts.parquet"))
    assert kept_counts.column("kept").to_numpy().sum() == sum(len(x) for x in kept.column("entry_ids").to_pylist())
    # Where the time went: every unit times its phases; the stage sums them; inspect shows both.
    for name, phases in (("match", {"read", "uid", "validate", "match", "assemble", "write"}),
                         ("balance", {"read", "draw", "assemble", "write", "t_sweep"})):
        stage = json.load(open(os.path.join(run, name, "_summary.json")))
        markers = [json.load(open(f)) for f in glob.glob(os.path.join(run, name, "_units", "*.json"))]
        assert markers and all(phases <= set(m["phases"]) <= phases | {"worker_start"} for m in markers)
        total: dict = {}
        for m in markers:
            for k, v in m["phases"].items():
                total[k] = total.get(k, 0.0) + v
        assert stage["task_seconds"] == pytest.approx(total, abs=1e-3 * len(markers))
        assert stage["seconds"]["units"] > 0 and all(v >= 0 for v in total.values())
    text = format_inspect(RunDir(run))
    assert re.search(r"^  match\s+wall: .*units \d+\.\ds", text, re.M)
    assert re.search(r"^  balance\s+wall: units \d+\.\ds", text, re.M)
    assert re.search(r"^\s+task time \d+\.\ds, [\d.,]+ us/row:", text, re.M) and re.search(r"\bwrite \d+%", text)


def test_same_seed_same_subset_whatever_the_partitioning(curate, demo, tmp_path):
    """Files, row groups and work units all differ; the kept uids and the entry counts do not."""
    pool = pa.concat_tables([pq.read_table(os.path.join(demo["pool"], f)) for f in sorted(os.listdir(demo["pool"]))])
    kept_sets, counts, units = [], [], []
    for n_files, row_group, rows_per_unit in ((1, 300, 400), (7, 50, 120)):
        d = tmp_path / f"pool{n_files}"
        d.mkdir()
        per = -(-pool.num_rows // n_files)
        for i in range(n_files):
            pq.write_table(pool.slice(i * per, per), d / f"p{i}.parquet", row_group_size=row_group)
        run = str(tmp_path / f"run{n_files}")
        s = curate(str(d), demo["metadata"], run, {"balance.t": 40, "balance.seed": 5,
                                                   "pool.rows_per_unit": rows_per_unit})
        units.append(s["match"]["units"])
        kept_sets.append(sorted(_read_dir(os.path.join(run, "balance")).column("uid").to_pylist()))
        counts.append(pq.read_table(os.path.join(run, "count", "entry_counts.parquet")).sort_by("entry_id").to_pydict())
    assert units[0] < units[1]  # the work really was cut differently
    assert kept_sets[0] == kept_sets[1] and len(kept_sets[0]) > 100
    assert counts[0] == counts[1]


def test_url_uids_are_metaclip_sha224_for_every_kind_of_url():
    """The batch uid path (built-in SHA-224, numpy hex) equals hashlib's ``sha224(url)[:24]``,
    including an empty URL, non-ASCII, and URLs longer than one 64-byte SHA block."""
    urls = ["http://x/y.jpg", "", "http://例え.jp/ü?q=1", "http://h/" + "a" * 55, "http://h/" + "b" * 300]
    want = [uid_from_url(u) for u in urls]
    assert match_stage.sha224_uids(pa.array(urls, pa.string())).to_pylist() == want
    assert match_stage.sha224_uids(pa.array([u.encode() for u in urls], pa.binary())).to_pylist() == want
    many = [f"http://h/{i}.jpg" for i in range(20_000)]  # crosses the hashing's slice boundary
    assert match_stage.sha224_uids(pa.array(many)).to_pylist() == [uid_from_url(u) for u in many]


def test_bad_captions_become_reject_rows(curate, tmp_path):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["dog", "cat", "hot dog"]))
    texts = [None, "", "   \t\n", "a hot dog", "x" * 1_100_000 + " dog", "Dog", "the cat.", None]
    urls = [f"http://h/{i}.jpg" for i in range(len(texts))]
    good = pa.array(texts, pa.string())
    # Row 7: invalid UTF-8 bytes inside a string column (as a broken writer would produce).
    bad_bytes = [b"" if t is None else t.encode() for t in texts]
    bad_bytes[7] = b"dog \xff\xfe cat"
    data = b"".join(bad_bytes)
    offsets = np.cumsum([0] + [len(b) for b in bad_bytes]).astype(np.int32)
    validity = pa.array([t is not None for t in texts[:7]] + [True]).buffers()[1]
    broken = pa.Array.from_buffers(pa.string(), len(texts), [validity, pa.py_buffer(offsets.tobytes()),
                                                                pa.py_buffer(data)])
    assert good.null_count == 2
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"url": urls, "text": broken}), pool / "p.parquet")
    run = str(tmp_path / "run")
    s = curate(str(pool), str(meta), run, {"balance.t": 1, "balance.seed": 0})
    rej = _rejects(run, "match").to_pydict()
    reasons = {uid: r for uid, r in zip(rej["uid"], rej["reason"])}
    uid = [uid_from_url(u) for u in urls]
    assert reasons[uid[0]] == "null_text"
    assert reasons[uid[1]] == "empty_text" and reasons[uid[2]] == "empty_text"
    assert reasons[uid[4]] == "text_too_long"
    assert reasons[uid[5]] == "no_match"  # no case folding
    assert reasons[uid[7]] == "invalid_utf8"
    match = _read_dir(os.path.join(run, "match")).to_pydict()
    assert dict(zip(match["uid"], match["entry_ids"])) == {uid[3]: [0, 2], uid[6]: [1]}
    assert s["match"]["in"] == 8 and s["match"]["out"] == 2


def test_missing_text_column_and_empty_metadata_are_clear_errors(curate, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"url": ["http://a"], "caption": ["dog"]}), pool / "p.parquet")
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(["dog"]))
    with pytest.raises(InputError, match=r"lacks column\(s\) \['text'\]"):
        curate(str(pool), str(meta), str(tmp_path / "r"), {"balance.t": 1})
    meta.write_text("[]")
    with pytest.raises(InputError, match="empty"):
        curate(str(pool), str(meta), str(tmp_path / "r2"), {"balance.t": 1})


def test_non_string_columns_are_a_clear_error(curate, tmp_path):
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(["dog"]))
    for col, table in (("text", pa.table({"url": ["http://a"], "text": [1]})),
                       ("uid", pa.table({"url": ["http://a"], "text": ["dog"], "uid": [7.5]}))):
        pool = tmp_path / f"pool-{col}"
        pool.mkdir()
        pq.write_table(table, pool / "p.parquet")
        with pytest.raises(InputError, match=rf"p.parquet: column `{col}` is (int64|double); it must hold strings"):
            curate(str(pool), str(meta), str(tmp_path / f"r-{col}"), {"balance.t": 1})


def test_dictionary_encoded_columns_match_like_plain_ones(curate, demo, tmp_path):
    """Categorical url/text/uid columns (pandas categoricals, some writers' dictionary pages read back
    as Arrow dictionaries) give the same output as plain strings."""
    plain = pa.concat_tables([pq.read_table(os.path.join(demo["pool"], f)) for f in sorted(os.listdir(demo["pool"]))])
    plain = plain.append_column("uid", pa.array([f"u{i}" for i in range(plain.num_rows)]))
    coded = pa.table({c: plain.column(c).dictionary_encode() if c in ("url", "text", "uid") else plain.column(c)
                      for c in plain.column_names})
    kept = []
    for name, table in (("plain", plain), ("coded", coded)):
        pool = tmp_path / name
        pool.mkdir()
        pq.write_table(table, pool / "p.parquet")
        if name == "coded":
            assert pa.types.is_dictionary(pq.read_table(pool / "p.parquet").schema.field("text").type)
        run = str(tmp_path / f"run-{name}")
        s = curate(str(pool), demo["metadata"], run, {"balance.t": 40, "balance.seed": 5})
        match = _read_dir(os.path.join(run, "match"))
        assert match.schema.field("text").type == pa.string() and match.schema.field("uid").type == pa.string()
        kept.append((s["match"]["out"], s["match"]["rejected"],
                     sorted(_read_dir(os.path.join(run, "balance")).column("uid").to_pylist())))
    assert kept[0] == kept[1] and len(kept[0][2]) > 100


def test_target_size_solves_smallest_t(curate, demo, tmp_path):
    from curation import balancing as B

    run = str(tmp_path / "run")
    s = curate(demo["pool"], demo["metadata"], run, {"balance.target_size": 1000, "balance.seed": 0})
    t = s["balance"]["t"]
    # Recompute E(t) and E(t-1) from the match output with the plain functions.
    lists = _read_dir(os.path.join(run, "match")).column("entry_ids").to_pylist()
    offsets, flat = B.csr_from_lists(lists)
    counts = B.entry_counts(flat, len(json.load(open(demo["metadata"]))))
    at_t, below = B.expected_kept_for_ts(offsets, flat, counts, [t, t - 1])
    assert at_t >= 1000 > below
    assert s["balance"]["expected_kept"] == pytest.approx(at_t)


def test_rerun_skips_and_interrupted_stage_resumes(curate, demo, tmp_path):
    run = str(tmp_path / "run")
    params = {"balance.t": 30, "balance.seed": 2, "pool.rows_per_unit": 500}
    curate(demo["pool"], demo["metadata"], run, params)
    before = sorted(_read_dir(os.path.join(run, "balance")).column("uid").to_pylist())
    mtime = os.path.getmtime(os.path.join(run, "match", "_SUCCESS"))
    curate(demo["pool"], demo["metadata"], run, params)  # everything complete: skipped
    assert os.path.getmtime(os.path.join(run, "match", "_SUCCESS")) == mtime
    # Simulate a crash in the middle of balance: success marker gone, some units lost.
    fp = json.load(open(os.path.join(run, "balance", "_SUCCESS")))["fingerprint"]
    os.remove(os.path.join(run, "balance", "_SUCCESS"))
    with open(os.path.join(run, "balance", "_STARTED"), "w") as f:
        json.dump({"fingerprint": fp}, f)
    units = sorted(os.listdir(os.path.join(run, "balance", "_units")))
    for u in units[::2]:
        os.remove(os.path.join(run, "balance", "_units", u))
        os.remove(os.path.join(run, "balance", "part-" + u.replace(".json", ".parquet")))
    curate(demo["pool"], demo["metadata"], run, params)
    after = sorted(_read_dir(os.path.join(run, "balance")).column("uid").to_pylist())
    assert after == before and len(after) == len(set(after))



def test_random_mode_keeps_a_uniform_subset_of_the_target_size(curate, demo, tmp_path):
    run = str(tmp_path / "run")
    s = curate(demo["pool"], demo["metadata"], run, {"balance.target_size": 800, "balance.seed": 4,
                                                      "balance.mode": "random"})
    kept = _read_dir(os.path.join(run, "balance"))
    matched = s["match"]["out"]
    assert np.allclose(kept.column("p_keep").to_numpy(), 800 / matched)
    assert abs(kept.num_rows - 800) < 5 * np.sqrt(800)
    assert s["balance"]["mode"] == "random" and s["balance"]["expected_kept"] == pytest.approx(800)


def test_duplicate_uids_keep_the_first_in_pool_order_and_reconcile(curate, tmp_path, monkeypatch):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["dog", "cat"]))
    pool = tmp_path / "pool"
    pool.mkdir()
    # a: 0..9; b: 5..14 (5..9 repeat a's URLs, with other captions); c: explicit uids, "X" twice.
    pq.write_table(pa.table({"url": [f"http://h/{i}.jpg" for i in range(10)],
                             "text": [f"a dog {i}" for i in range(10)]}), pool / "a.parquet", row_group_size=4)
    pq.write_table(pa.table({"url": [f"http://h/{i}.jpg" for i in range(5, 15)],
                             "text": [f"a cat {i}" for i in range(5, 15)]}), pool / "b.parquet", row_group_size=4)
    pq.write_table(pa.table({"url": ["http://h/x1.jpg", "http://h/x2.jpg", "http://h/x3.jpg"],
                             "text": ["dog x1", "dog x2", "no match here"], "uid": ["X", "X", "X"]}),
                   pool / "c.parquet")
    run = str(tmp_path / "run")
    params = {"balance.t": 1000, "balance.seed": 0, "pool.rows_per_unit": 4}
    s = curate(str(pool), str(meta), run, params)
    assert s["match"]["in"] == 23
    assert s["match"]["rejected"] == {"duplicate_uid": 6, "no_match": 1}
    assert s["match"]["out"] == 16 and s["match"]["in"] == s["match"]["out"] + 7
    match = _read_dir(os.path.join(run, "match")).to_pydict()
    assert len(match["uid"]) == len(set(match["uid"])) == 16
    by_uid = dict(zip(match["uid"], match["text"]))
    for i in range(5, 10):  # the first occurrence (file a) is the one kept
        assert by_uid[uid_from_url(f"http://h/{i}.jpg")] == f"a dog {i}"
    assert by_uid["X"] == "dog x1"
    rej = _rejects(run, "match").to_pydict()
    dup = [(u, d) for u, r, d in zip(rej["uid"], rej["reason"], rej["detail"]) if r == "duplicate_uid"]
    assert sorted(u for u, _ in dup) == sorted([uid_from_url(f"http://h/{i}.jpg") for i in range(5, 10)] + ["X"])
    assert all(d.startswith("repeat of a uid kept in match/part-") for _, d in dup)
    # counts are over unique rows only: "cat" matched by b's 5 new rows (10..14), "dog" by a + x1
    counts = pq.read_table(os.path.join(run, "count", "entry_counts.parquet")).to_pydict()
    assert dict(zip(counts["entry"], counts["count"])) == {"dog": 11, "cat": 5}
    assert s["balance"]["kept"] == 16  # t=1000 keeps all
    # A resumed match stage (crash after its units and the dedup pass) reports the same numbers.
    fp = json.load(open(os.path.join(run, "match", "_SUCCESS")))["fingerprint"]
    os.remove(os.path.join(run, "match", "_SUCCESS"))
    with open(os.path.join(run, "match", "_STARTED"), "w") as f:
        json.dump({"fingerprint": fp}, f)
    s2 = curate(str(pool), str(meta), run, params, stages=["match"])
    assert s2["match"]["rejected"] == s["match"]["rejected"] and s2["match"]["out"] == 16
    # The check can be turned off: repeats then pass through.
    s3 = curate(str(pool), str(meta), str(tmp_path / "r3"), {"pool.check_duplicate_uids": False},
                stages=["match"])
    assert s3["match"]["out"] == 22 and "duplicate_uid" not in s3["match"]["rejected"]
    # Too many candidate hashes to broadcast: the exact pass compares every row; same result.
    monkeypatch.setattr(match_stage, "MAX_BROADCAST_CANDIDATES", 0)
    r4 = str(tmp_path / "r4")
    s4 = curate(str(pool), str(meta), r4, {"pool.rows_per_unit": 4}, stages=["match"])
    assert s4["match"]["rejected"] == s["match"]["rejected"]
    assert sorted(_read_dir(os.path.join(r4, "match")).column("uid").to_pylist()) == sorted(match["uid"])


def test_duplicate_check_reads_uid_hash_side_files_or_falls_back(spark, curate, tmp_path):
    """Match tasks leave each part's sorted uid hashes for pass 1; without them (a run from before
    they existed) pass 1 hashes the parts' uid columns with the same function: same rejects."""
    from curation.hashing import string_hash64
    from jobs.stages.base import StageContext

    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["dog"]))
    pool = tmp_path / "pool"
    pool.mkdir()
    urls = [f"http://h/{i % 30}.jpg" for i in range(60)]  # every URL twice, the repeat in a later unit
    pq.write_table(pa.table({"url": urls, "text": [f"dog {i}" for i in range(60)]}), pool / "a.parquet",
                   row_group_size=10)
    run = str(tmp_path / "run")
    params = {"balance.t": 1000, "pool.rows_per_unit": 10}
    s = curate(str(pool), str(meta), run, params, stages=["match"])
    assert s["match"]["rejected"] == {"duplicate_uid": 30} and s["match"]["out"] == 30
    sides = sorted(glob.glob(os.path.join(run, "match", "_uidhash", "part-*.npy")))
    assert len(sides) == 6
    for side in sides:
        h = np.load(side)
        first = 10 * int(os.path.basename(side)[5:11])
        expected = string_hash64(pa.array([uid_from_url(u) for u in urls[first:first + 10]]))
        assert h.tolist() == sorted(expected.tolist())  # written before pass 2 dropped the repeats
    # A match stage without the check writes no side files; the check run afterwards on its parts
    # falls back to hashing their uid columns and drops the same rows.
    r2 = str(tmp_path / "r2")
    curate(str(pool), str(meta), r2, {**params, "pool.check_duplicate_uids": False}, stages=["match"])
    assert not os.path.exists(os.path.join(r2, "match", "_uidhash"))
    ctx = StageContext(cfg=None, run=RunDir(r2), spark_factory=lambda: spark)
    assert match_stage.remove_duplicate_uids(ctx, ctx.dir(match_stage.STAGE), 60) == 30
    kept = lambda r: sorted(_read_dir(os.path.join(r, "match")).column("text").to_pylist())  # noqa: E731
    assert kept(run) == kept(r2) == sorted(f"dog {i}" for i in range(30))


def test_pass_one_buckets_are_sorted_runs_of_hash_ranges(tmp_path):
    """Pass 1 splits a part's sorted uid hashes into ranges of the hash space: every hash lands in
    bucket floor(h * n / 2**64), runs stay sorted, nothing is lost or repeated, and equal hashes
    (a repeated uid) share a bucket."""
    import io

    from curation.rundir import StageDir
    from curation.storage import Storage

    rng = np.random.default_rng(3)
    h = np.sort(np.concatenate([rng.integers(0, 2**64, 5000, dtype=np.uint64, endpoint=False),
                                np.array([0, 0, 2**63, 2**63, 2**64 - 1], dtype=np.uint64)]))
    part = tmp_path / "match" / "part-000007.parquet"
    out = StageDir(str(tmp_path / "match"), Storage())
    side = match_stage._uid_hash_url(out, part.name)
    os.makedirs(os.path.dirname(side))
    buf = io.BytesIO()
    np.save(buf, h, allow_pickle=False)
    open(side, "wb").write(buf.getvalue())
    for n in (1, 3, 4, 64):
        buckets = match_stage.hash_buckets(out, str(part), n)
        assert [b for b, _ in buckets] == sorted({b for b, _ in buckets})
        assert np.concatenate([run for _, run in buckets]).tolist() == h.tolist()
        for b, run in buckets:
            assert run.size and all((int(x) * n) >> 64 == b for x in run.tolist())
            assert np.all(run[1:] >= run[:-1])


def test_a_repeated_metadata_entry_is_counted_once(curate, tmp_path):
    """An entry listed twice would split its texts between two ids (halving its count, so
    over-keeping it); the metadata stage keeps it once and the counts are whole."""
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["dog", "cat", "dog"]))
    pool = tmp_path / "pool"
    pool.mkdir()
    texts = [f"a dog {i}" for i in range(30)] + [f"a cat {i}" for i in range(30)]
    pq.write_table(pa.table({"url": [f"http://h/{i}.jpg" for i in range(60)], "text": texts}), pool / "p.parquet")
    s = curate(str(pool), str(meta), str(tmp_path / "run"), {"balance.t": 10})
    assert s["metadata"]["rejected"] == {"duplicate_entry": 1} and s["metadata"]["out"] == 2
    counts = pq.read_table(tmp_path / "run" / "count" / "entry_counts.parquet").to_pydict()
    assert dict(zip(counts["entry"], counts["count"])) == {"dog": 30, "cat": 30}
    kept = pq.read_table(tmp_path / "run" / "balance").column("p_keep").to_pylist()
    assert kept and all(p == pytest.approx(10 / 30) for p in kept)


def test_counts_beyond_float32_keep_exact_probabilities(curate, tmp_path):
    """Head counts of a billion-row pool pass 2**24, where float32 stops counting exactly: the
    balance stage keeps int64 counts and float64 probabilities, so p_keep is MetaCLIP's
    1 - prod(1 - min(1, t/count)) to 1e-12 (float32 made 2**24 + 1 into 2**24: p = 1 exactly)."""
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["dog", "cat", "red"]))
    pool = tmp_path / "pool"
    pool.mkdir()
    texts = ["a dog", "a cat", "a red dog", "a red cat", "dog cat"] * 20
    pq.write_table(pa.table({"url": [f"http://h/{i}" for i in range(100)], "text": texts}), pool / "p.parquet")
    run = tmp_path / "run"
    curate(str(pool), str(meta), str(run), {"balance.t": 1}, stages=["count"])
    big = {0: 2**24 + 1, 1: 300_000_001, 2: 3}  # what a 2.5B-row pool's counts look like
    counts_file = run / "count" / "entry_counts.parquet"
    table = pq.read_table(counts_file)
    pq.write_table(table.set_column(3, "count", pa.array([big[i] for i in table.column("entry_id").to_pylist()],
                                                         pa.int64())), counts_file)
    t = float(2**24)
    s = curate(str(pool), str(meta), str(run), {"balance.t": t, "balance.seed": 1}, stages=["balance"])
    assert s["balance"]["head_entries"] == 2
    # every row's p_keep from the exact formula, in Python floats
    match = pq.read_table(run / "match").to_pydict()
    want = {}
    for uid, ids in zip(match["uid"], match["entry_ids"]):
        q = 1.0
        for e in ids:
            q *= 1.0 - min(1.0, t / big[e])
        want[uid] = 1.0 - q
    rows = pq.read_table(run / "balance").to_pydict()
    reject = pq.read_table(run / "rejects" / "balance").to_pydict()
    got = dict(zip(rows["uid"], rows["p_keep"]))
    got.update({u: float(d.split()[0].split("=")[1]) for u, d in zip(reject["uid"], reject["detail"])})
    assert got.keys() == want.keys()
    assert max(abs(got[u] - want[u]) for u in want) <= 1e-12
    dog_only = [u for u, ids in zip(match["uid"], match["entry_ids"]) if ids == [0]]
    assert dog_only and all(0 < got[u] < 1 for u in dog_only)  # float32 counts made these exactly 1


def test_the_metaclip2_rule_through_the_stages_and_the_dataframe_api(spark, curate, tmp_path):
    """`match.rule: metaclip2` reaches the compiled matcher: CJK and edge-punctuation entries match
    without spaces around them; the DataFrame API with rule="metaclip2" gives the same ids."""
    from curation.matching import Matcher, never_matches
    from jobs.dataframe import match as df_match

    entries = ["北京", "c++", "(dog)", "dog", "天安门", "a.b"]  # "a.b": "." is spaced apart in every text
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(entries, ensure_ascii=False))
    texts = ["我爱北京天安门", "learn c++ today", "a photo (dog)", "a dog", "\u3000北京\u3000", "nothing here"]
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"url": [f"http://h/{i}" for i in range(6)], "text": texts}), pool / "p.parquet")
    got = {}
    for rule in ("metaclip1", "metaclip2"):
        curate(str(pool), str(meta), str(tmp_path / rule), {"balance.t": 100, "match.rule": rule}, stages=["match"])
        m = pq.read_table(tmp_path / rule / "match").to_pydict()
        got[rule] = dict(zip(m["text"], m["entry_ids"]))
        ref = Matcher(entries, rule=rule)
        assert got[rule] == {t: ref.match(t) for t in texts if ref.match(t)}
        summary = json.loads((tmp_path / rule / "match" / "_summary.json").read_text())
        assert summary["rule"] == rule
        assert summary["entries_never_match"] == sum(never_matches(e, rule) for e in entries) == 1
    assert "我爱北京天安门" in got["metaclip2"] and "我爱北京天安门" not in got["metaclip1"]
    assert got["metaclip2"]["我爱北京天安门"] == [0, 4]
    df = df_match(spark.read.parquet(str(pool)), entries, rule="metaclip2")
    assert {r["text"]: list(r["entry_ids"]) for r in df.collect()} == got["metaclip2"]
