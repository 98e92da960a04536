"""Shared CLI plumbing: exit codes, JSON output, config loading with clear errors."""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from agent.config import ConfigError, StationConfig, load_config

DEFAULT_CONFIG = Path("/etc/evedge/station.toml")
# The simulated station of `evedge demo`, `evedge sim` and `evedge simctl`.
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"

console = Console()
err_console = Console(stderr=True)


class Exit(IntEnum):
    """Documented exit codes of every evedge command."""

    OK = 0
    CHECK_FAILED = 1  # a check found a problem, or a device did not answer
    USAGE = 2  # bad arguments or an invalid config / profile file
    UNREACHABLE = 3  # the service (or the device link) could not be reached
    DENIED = 4  # not allowed: no permission on the API socket, or not in the [api] group


def emit_json(obj: Any) -> None:
    """Print one JSON document (datetimes and other objects as strings)."""
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: Exit) -> typer.Exit:
    """Print an error for a person and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(int(code))


def load_or_exit(path: Path) -> StationConfig:
    """Load a station config, or print every problem and exit 2."""
    try:
        return load_config(path)
    except ConfigError as e:
        for file_path, msg in e.problems:
            err_console.print(f"[red]{e.file}[/]: {file_path}: {msg}", highlight=False)
        raise typer.Exit(int(Exit.USAGE)) from None
