"""The `metacurate` command line: the top-level help lists every command, and every command's own
`--help` works (argparse builds each subparser from its module, so a broken module shows here)."""
from __future__ import annotations

import pytest

from jobs.cli import all_commands, main

COMMANDS = all_commands()


def test_top_level_help_lists_every_command_once(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text, _) in COMMANDS.items():
        lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(lines) == 1, (name, lines)
        assert help_text.split()[0] in lines[0]


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_a_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: metacurate {name}")
    assert len(out.splitlines()) > 3  # a description and its options, not only the usage line


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
