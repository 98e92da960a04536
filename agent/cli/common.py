"""Shared CLI plumbing: exit codes, JSON output, errors and notes, config loading.

Messages are printed as plain text, never as rich markup: a message naming a config
section ("the config has no [api] section") must reach the technician intact. With
`--json`, an error is also one JSON object on stdout:

    {"ok": false, "error": {"code": "unreachable", "message": "..."}}

`code` is the exit code's name (check_failed, usage, unreachable, denied, store, disk_full), or the
more specific code of the service's API (refused, not_found, ...) or `invalid_config`.
"""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any

import typer

# Re-exported: every command takes its default config from here.
from agent.cli.paths import DEFAULT_CONFIG as DEFAULT_CONFIG
from agent.cli.paths import DEMO_CONFIG as DEMO_CONFIG
from agent.config import ConfigError, StationConfig, load_config
from agent.store.space import DiskFullError, StoreError

_consoles: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """`console` and `err_console`: rich Consoles made on first use, so a command that only
    reports errors (`evedge run`, the daemon) never imports rich."""
    if name not in ("console", "err_console"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _consoles:
        from rich.console import Console

        _consoles[name] = Console(stderr=name == "err_console")
    return _consoles[name]


def _say(*parts: str | tuple[str, str]) -> None:
    """One line on stderr with rich's styles (imported only now)."""
    from rich.text import Text

    __getattr__("err_console").print(Text.assemble(*parts), highlight=False)


class Exit(IntEnum):
    """Documented exit codes of every evedge command."""

    OK = 0
    CHECK_FAILED = 1  # a check found a problem, or a device did not answer
    USAGE = 2  # bad arguments or an invalid config / profile file
    UNREACHABLE = 3  # the service (or the device link) could not be reached
    DENIED = 4  # not allowed: no permission on the API socket, or not in the [api] group
    STORE = 5  # the store cannot be used: damaged, of another schema, or not an evedge store
    DISK_FULL = 6  # the store's disk is too full to create or migrate the store


def exit_for(e: Exception) -> int | None:
    """For an error that escaped a command: print it like `fail` and return its exit code;
    None for anything else (a bug: its traceback is shown)."""
    if isinstance(e, DiskFullError):
        return _exit(str(e), Exit.DISK_FULL)
    if isinstance(e, StoreError):
        return _exit(str(e), Exit.STORE)
    if isinstance(e, ConfigError):
        return _exit(str(e), Exit.USAGE, "invalid_config")
    if isinstance(e, PermissionError):
        where = f" on {e.filename}" if e.filename else ""
        return _exit(
            f"permission denied{where}: run this command as the service's user "
            "(sudo -u evedge evedge ...) or as root",
            Exit.DENIED,
        )
    return None


def _exit(message: str, code: Exit, error: str | None = None) -> int:
    """Print the error like `fail` and return the exit code (outside any Typer context)."""
    return fail(message, code, error).exit_code


def emit_json(obj: Any) -> None:
    """Print one JSON document (datetimes and other objects as strings)."""
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def json_requested() -> bool:
    """Was the command run with `--json`? (Read from the command line: errors can come
    before or outside a command's own parameters, e.g. from a shared helper.)"""
    return "--json" in sys.argv[1:]


def error_json(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON error object of every command."""
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


def fail(message: str, code: Exit, error: str | None = None) -> typer.Exit:
    """Print an error for a person (and with --json the JSON error object on stdout);
    return the Exit to raise. `error` names the error for machines (default: the exit
    code's name)."""
    _say(("error:", "bold red"), " ", message)
    if json_requested():
        emit_json(error_json(error or code.name.lower(), message))
    return typer.Exit(int(code))


def note(message: str, label: str = "note") -> None:
    """A note for a person on stderr (`label`: note, warning), printed as plain text."""
    _say((f"{label}:", "yellow"), " ", message)


def load_or_exit(path: Path) -> StationConfig:
    """Load a station config, or print every problem and exit 2."""
    try:
        return load_config(path)
    except ConfigError as e:
        for file_path, msg in e.problems:
            _say((str(e.file), "red"), f": {file_path}: {msg}")
        if json_requested():
            emit_json(config_error_json(e))
        raise typer.Exit(int(Exit.USAGE)) from None


def config_error_json(e: ConfigError) -> dict[str, Any]:
    """The JSON error object of an invalid config, every problem with its field path."""
    problems = [{"path": p, "message": m} for p, m in e.problems]
    message = f"{e.file}: " + "; ".join(f"{p}: {m}" for p, m in e.problems)
    return error_json("invalid_config", message, file=str(e.file), problems=problems)
