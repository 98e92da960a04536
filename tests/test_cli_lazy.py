"""The CLI imports a subcommand's module only when that subcommand runs (agent/cli/main.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from agent.cli.main import LazyGroup, _Config, _Main, app, load

GROUPS: list[type[LazyGroup]] = [_Main, _Config]


@pytest.mark.parametrize(
    ("group", "name"), [(g, n) for g in GROUPS for n in g.lazy], ids=lambda x: str(x)
)
def test_listed_help_is_the_commands_own(group: type[LazyGroup], name: str):
    """`--help` shows the table's line without importing: it must be the command's."""
    entry = group.lazy[name]
    cmd = load(name, entry)
    assert cmd.name == name
    assert cmd.get_short_help_str(limit=200) == entry.help
    assert entry.group == isinstance(cmd, typer.core.TyperGroup)
    # Built like a subcommand, not like an app of its own (no --install-completion).
    assert "install_completion" not in {p.name for p in cmd.params}


def test_help_lists_every_command_and_loads_none():
    code = (
        "import sys, json\n"
        "from typer.main import get_command\n"
        "from agent.cli.main import app\n"
        "cmd = get_command(app)\n"
        "try:\n"
        "    cmd.main(['--help'], prog_name='evedge')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    *help_lines, mods_line = p.stdout.strip().splitlines()
    text = "\n".join(help_lines)
    for name in [*_Main.lazy, "run", "demo", "sim", "config"]:
        assert f" {name} " in text, name
    modules = set(json.loads(mods_line))
    heavy = {"agent.config", "agent.runtime", "hil.station", "agent.ocpp.client", "pymodbus"}
    assert not heavy & modules, heavy & modules


def test_lazy_command_runs_with_its_options():
    """A lazily loaded group resolves its own subcommands and options as before."""
    runner = CliRunner()
    result = runner.invoke(app, ["mqtt", "--help"])
    assert result.exit_code == 0, result.output
    assert "schema" in result.output
    result = runner.invoke(app, ["tariff", "no-such-subcommand"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["statuss"])
    assert result.exit_code == 2
    assert "status" in result.output  # the suggestion
