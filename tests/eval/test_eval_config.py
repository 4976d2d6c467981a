"""`metacurate eval` flags come from ``EvalConfig``; ``--overlap`` takes a run dir or the table itself."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.storage import Storage
from jobs.cli import build_parser, main
from jobs.commands.evaluate import overlap_source

FLAGS = ["--checkpoint", "--zeroshot", "--retrieval", "--linear-probe", "--out", "--templates", "--overlap",
         "--overlap-max-hamming", "--html", "--device", "--batch-size", "--max-samples", "--samples-seen", "--seed",
         "--config"]


def test_flags_and_repeatable_datasets():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["eval"]
    assert set(FLAGS) <= {name for action in sub._actions for name in action.option_strings}
    args = parser.parse_args(["eval", "--checkpoint", "c.pt", "--out", "r.json", "--zeroshot", "digits",
                              "--zeroshot", "digits:numerals", "--linear-probe", "digits", "--max-samples", "5"])
    assert args.zeroshot == ["digits", "digits:numerals"] and args.linear_probe == ["digits"]
    assert args.max_samples == 5 and not hasattr(args, "retrieval")  # not given: the config's default


def test_required_and_bad_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--zeroshot", "digits", "--out", str(tmp_path / "r.json")])
    assert caught.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    rc = main(["eval", "--checkpoint", "c.pt", "--out", str(tmp_path / "r.json"), "--zeroshot", "digits",
               "--batch-size", "0"])
    assert rc == 2 and "--batch-size must be >= 1" in capsys.readouterr().err


def test_overlap_source_run_dir_file_or_folder(tmp_path):
    storage = Storage()
    run = tmp_path / "run"
    (run / "dedup" / "overlap").mkdir(parents=True)
    assert overlap_source(str(run), storage) == str(run / "dedup" / "overlap")
    table = tmp_path / "overlap.parquet"
    pq.write_table(pa.table({"dataset": ["d"], "key": ["k"], "hamming": [0]}), table)
    assert overlap_source(str(table), storage) == str(table)
    parts = tmp_path / "parts"
    parts.mkdir()
    assert overlap_source(str(parts), storage) == str(parts)  # a folder of parts, as given
