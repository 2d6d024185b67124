"""The command table in loraship/cli.py and the README stay in sync."""

import re
from pathlib import Path

from loraship.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_every_command_is_in_the_readme_table_and_nothing_else():
    table = set(re.findall(r"^\| `loraship (\w+)", README.read_text(), flags=re.M))
    assert table == _commands()


def test_every_command_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert all(helps.get(name) for name in _commands())


def test_no_command_prints_help_and_exits_2(capsys):
    from loraship.cli import main

    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
