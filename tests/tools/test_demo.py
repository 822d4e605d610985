"""make demo's echoed command lines name the installed commands (setup.cfg console_scripts)."""

from __future__ import annotations

import configparser
from pathlib import Path

from pfcn.tools import demo

REPO = Path(__file__).resolve().parents[2]


def test_echoed_commands_are_installed_console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("="))
        scripts[target.split(":")[0]] = name
    assert demo.COMMANDS == {module: scripts[module] for module in demo.COMMANDS}
    assert "pfcn-evaluate" not in demo.COMMANDS.values()


def test_echo_uses_the_command_name(capsys):
    from pfcn.tools.evaluate import main as eval_main

    try:
        demo.run(eval_main, ["--help"])
    except SystemExit:
        pass
    assert capsys.readouterr().out.startswith("$ pfcn-eval --help")
