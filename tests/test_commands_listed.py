"""Every console script of setup.cfg answers --help and has a row in the README's Commands table."""
from __future__ import annotations

import configparser
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def _commands_table() -> str:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in table.splitlines() if line.startswith("|"))


@pytest.mark.parametrize("name, target", sorted(_console_scripts().items()))
def test_console_script_has_help_and_a_readme_row(name, target, capsys):
    module, function = target.split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert name in capsys.readouterr().out  # the usage line names the command
    assert f"`{name}" in _commands_table() or f" {name}`" in _commands_table(), f"{name} has no row in README's Commands table"
