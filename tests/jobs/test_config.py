"""Config loading: safe YAML, overrides, and errors that name the key."""
import pytest

from curation.errors import InputError
from jobs.config import config_reference, load_config
from jobs.cli import main

BASE = ["run_dir=/tmp/r", "pool.path=/p", "metadata.path=/m.json"]


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("run_dir: s3://bucket/run\npool: {path: pool/}\nmetadata: {path: m.json}\n"
                 "balance: {t: 170000, seed: 3}\nspark: {master: 'local[2]'}\n")
    cfg = load_config(str(f), ["balance.seed=9", "download.image_size=128"])
    assert cfg.run_dir == "s3://bucket/run" and cfg.balance.t == 170000.0
    assert cfg.balance.seed == 9 and cfg.download.image_size == 128 and cfg.spark.master == "local[2]"


def test_target_size_replaces_t():
    cfg = load_config(None, BASE + ["balance.target_size=1000"])
    assert cfg.balance.t is None and cfg.balance.target_size == 1000


@pytest.mark.parametrize("override, message", [
    ("balance.tt=3", r"unknown config key `balance.tt` \(did you mean `balance.t`\?\)"),
    ("balance.seed=abc", r"`balance.seed` must be int, got 'abc'"),
    ("pool.max_text_bytes=1.5", r"`pool.max_text_bytes` must be int"),
    ("download=3", r"`download` must be a mapping"),
    ("stages=[match, bogus]", r"unknown stage 'bogus'"),
    ("balance.sweep_points=-1", r"`balance.sweep_points` must be >= 1"),
    ("pool.rows_per_unit=0", r"`pool.rows_per_unit` must be >= 1"),
    ("balance.t=.inf", r"`balance.t` must be a finite number"),
    ("pool.on_bad_file=ignore", r"`pool.on_bad_file` must be one of 'fail', 'skip'"),
    ("dedup.phash_mode=slow", r"phash_mode"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(InputError, match=message):
        load_config(None, BASE + [override])


def test_required_keys_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="run_dir"):
        load_config(None, ["pool.path=/p", "metadata.path=/m"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping at the top level"):
        load_config(str(lst))
    # safe_load: python object tags are refused, not executed
    evil = tmp_path / "evil.yaml"
    evil.write_text("run_dir: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(str(evil))


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    rc = main(["balance", "--set", "run_dir=/x", "--set", "pool.path=/p", "--set", "metadata.path=/m",
               "--set", "balance.tt=1"])
    assert rc == 2
    assert "unknown config key `balance.tt`" in capsys.readouterr().err


def test_reference_lists_every_key():
    ref = config_reference()
    for key in ("run_dir", "balance.t", "balance.target_size", "dedup.k", "shard.samples_per_shard",
                "storage.endpoint_url", "spark.master"):
        assert f"`{key}`" in ref


def test_readme_config_reference_is_current(repo_root):
    text = (repo_root / "README.md").read_text()
    block = text.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert block == config_reference(), "run `python -m jobs.config --update-readme README.md`"


@pytest.mark.parametrize("missing", ["pool", "metadata"])
def test_missing_inputs_fail_before_a_spark_session_starts(tmp_path, monkeypatch, capsys, missing):
    import jobs.spark

    def no_spark(*args, **kwargs):
        raise AssertionError("a Spark session was started before the inputs were checked")

    monkeypatch.setattr(jobs.spark, "get_spark", no_spark)
    (tmp_path / "pool").mkdir()
    (tmp_path / "m.json").write_text('["a"]')
    paths = {"pool": tmp_path / "pool", "metadata": tmp_path / "m.json"}
    paths[missing] = tmp_path / f"no-{missing}"
    overrides = [f"run_dir={tmp_path / 'run'}", f"pool.path={paths['pool']}", f"metadata.path={paths['metadata']}"]
    args = ["run"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{missing} not found: {paths[missing]}" in err and f"`{missing}.path`" in err
    # the flags-only command checks the same before its session
    assert main(["curate", "--pool", str(paths["pool"]), "--metadata", str(paths["metadata"]),
                 "--out", str(tmp_path / "run2")]) == 2
    assert f"{missing} not found" in capsys.readouterr().err
