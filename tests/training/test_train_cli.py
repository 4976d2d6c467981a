"""`metacurate train` flags come from ``TrainConfig``'s settings: names as documented, required
ones enforced, errors naming the flag, and ``--help`` without importing torch."""
import dataclasses
import subprocess
import sys

import pytest

from curation.settings import build
from jobs.cli import build_parser, main
from training.configs import TrainConfig

FLAGS = ["--shards", "--out", "--model", "--steps", "--batch-size", "--lr", "--weight-decay", "--warmup-steps",
         "--grad-clip", "--mask-ratio", "--unmasked-steps", "--save-every", "--log-every", "--seed", "--workers",
         "--shuffle-buffer", "--online-balance", "--tokenizer", "--vocab-size", "--resume", "--stop-after",
         "--threads", "--precision", "--no-progress", "--config"]


def _help_imports(command: str) -> list[str]:
    """Modules a fresh interpreter has imported after printing ``metacurate COMMAND --help``."""
    code = ("import sys\nfrom jobs.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', ' '.join(sorted(sys.modules)))" % command)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "--help" in done.stdout or "usage" in done.stdout
    return done.stdout.rsplit("MODULES ", 1)[1].split()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_does_not_import_torch(command):
    modules = _help_imports(command)
    assert "torch" not in modules and "training.loop" not in modules


def test_flags_and_defaults_come_from_the_config():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    names = {name for action in train._actions for name in action.option_strings}
    assert set(FLAGS) <= names
    defaults = build(TrainConfig, {"shards": "s.tar", "out": "o"})
    args = parser.parse_args(["train", "--shards", "s.tar", "--out", "o"])
    assert {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)
            if hasattr(args, f.name)} == {"shards": "s.tar", "out": "o"}  # only what was typed
    assert defaults == TrainConfig(shards="s.tar", out="o")
    args = parser.parse_args(["train", "--shards", "s.tar", "--out", "o", "--no-progress", "--online-balance",
                              "--warmup-steps", "none", "--stop-after", "4", "--precision", "bf16"])
    assert (args.progress, args.online_balance, args.warmup_steps, args.stop_after) == (False, True, None, 4)


def test_required_flags_and_bad_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--out", str(tmp_path / "o")])
    assert caught.value.code == 2 and "--shards" in capsys.readouterr().err
    for argv, message in ((["--steps", "0"], "--steps must be >= 1"),
                          (["--mask-ratio", "1.5"], "--mask-ratio must be in [0, 1)"),
                          (["--steps", "5", "--unmasked-steps", "9"], "--unmasked-steps must be between 0 and")):
        rc = main(["train", "--shards", "x.tar", "--out", str(tmp_path / "o"), *argv])
        assert rc == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_file_must_exist(tmp_path, capsys):
    rc = main(["train", "--config", str(tmp_path / "none.yaml"), "--shards", "x.tar", "--out", str(tmp_path / "o")])
    assert rc == 2 and "config file not found" in capsys.readouterr().err
