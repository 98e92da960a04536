"""`evedge start|stop|limit`: a technician's control of a connector through the service.

These change the station, so they need the running service (exit 3 without it) and
control rights on its API (root or the [api] group; exit 4 without them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.cli.service import control

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ConnectorArg = Annotated[int, typer.Argument(min=1, max=99, help="connector id")]
CLEAR = ("none", "off", "clear")


def _show(result: dict, json: bool) -> None:
    if json:
        emit_json(result)
        return
    st = result["state"]
    session = st["session_id"][:8] if st["session_id"] else "no session"
    console.print(
        f"connector {result['connector']}: {result['result']} — now {st['status']}, {session}",
        highlight=False,
    )


def start(
    connector: ConnectorArg,
    id_token: Annotated[
        str | None, typer.Option("--id-token", help="token to bill the session to")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Start a session on CONNECTOR (the vehicle must be plugged in, or plug it in next).

    Example: `evedge start 1 --id-token DE-ABC-123`"""
    cfg = load_or_exit(config)
    args = {"connector": connector} | ({} if id_token is None else {"id_token": id_token})
    _show(control(cfg, "start", **args), json)


def stop(
    connector: ConnectorArg, config: ConfigOpt = DEFAULT_CONFIG, json: JsonOpt = False
) -> None:
    """Stop the session on CONNECTOR (its charge record is written as usual).

    Example: `evedge stop 1`"""
    cfg = load_or_exit(config)
    _show(control(cfg, "stop", connector=connector), json)


def limit(
    connector: ConnectorArg,
    amps: Annotated[str, typer.Argument(help="current limit in A (0 pauses), or 'none' to clear")],
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Limit the current CONNECTOR offers to the vehicle; 'none' clears the local limit.

    Example: `evedge limit 1 16   (then: evedge limit 1 none)`"""
    cfg = load_or_exit(config)
    value: float | None
    if amps.lower() in CLEAR:
        value = None
    else:
        try:
            value = float(amps)
        except ValueError:
            raise fail(f"AMPS must be a number or 'none', got {amps!r}", Exit.USAGE) from None
        if not 0 <= value <= 80:
            raise fail(f"AMPS must be 0..80, got {amps}", Exit.USAGE)
    result = control(cfg, "limit", connector=connector, amps=value)
    if json:
        emit_json(result)
        return
    asked = "cleared" if value is None else f"{value:g} A"
    console.print(
        f"connector {connector}: local limit {asked}; the EVSE now offers "
        f"{result['offered_a']:g} A",
        highlight=False,
    )
