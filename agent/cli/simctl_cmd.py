"""`evedge simctl`: drive a running simulator (`evedge sim`) — cars, faults, snapshots.

Talks to the simulator's control port (JSON lines on 127.0.0.1, `[sim] control_port` of
the config). Used by technicians rehearsing a scenario and by HIL scripts.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agent.cli.common import DEMO_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.config import StationConfig
from drivers.profile import load_profile
from hil.control import send_command
from hil.faults import EVSE_FAULT_CODES

app = typer.Typer(
    help="Control a running simulator: cars, faults, snapshots.", no_args_is_help=True
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the simulated station's config")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _send(config: Path, command: dict[str, Any]) -> Any:
    """Send a command; exit 3 if the simulator is not running, 1 if it refused the command."""
    port = load_or_exit(config).sim.control_port
    try:
        reply = asyncio.run(send_command(port, command))
    except (OSError, TimeoutError) as e:
        raise fail(
            f"no simulator on 127.0.0.1:{port} ({e}); start one with: evedge sim --config {config}",
            Exit.UNREACHABLE,
        ) from None
    if not reply.get("ok"):
        raise fail(f"simulator refused {command['cmd']}: {reply.get('error')}", Exit.CHECK_FAILED)
    return reply.get("result")


# EVSE fault kinds the agent can also see in a register of its own, besides the error code.
SEEN_IN = {
    "over_temperature": "temperature_c",
    "welded_contactor": "contactor_closed",
    "contactor_stuck_open": "contactor_closed",
    "cp_state_e": "cp_state",
    "cp_state_f": "cp_state",
}


def undetectable(cfg: StationConfig, kind: str, device: str | None, connector: int | None) -> str:
    """Why the configured EVSE could not report fault `kind` (its profile has neither the
    register nor an error code for it), naming what is missing; "" if it can, or if the
    kind is not an EVSE fault (the simulator checks the target itself)."""
    if kind not in EVSE_FAULT_CODES:
        return ""
    conn = next((c for c in cfg.connector if c.id == connector), None)
    name = device or (conn.evse if conn is not None else None)
    dev = next((d for d in cfg.device if d.name == name), None)
    if dev is None:
        return ""
    profile = load_profile(dev.profile)
    readable = {r.quantity for r in profile.readable()}
    code = EVSE_FAULT_CODES[kind]
    if "evse_error_code" in readable and code in {e.fault for e in profile.error_codes.values()}:
        return ""
    register = SEEN_IN.get(kind)
    if register in readable:
        return ""
    missing = f"no {register} register and " if register else ""
    return (
        f"{kind}: {dev.name} ({profile.name}) has {missing}no error code for {code}: "
        "the agent could not see this fault"
    )


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@app.command("plug")
def plug(
    connector: int,
    max_current: Annotated[float | None, typer.Option(help="the car's maximum current, A")] = None,
    phases: Annotated[int | None, typer.Option(help="1 or 3")] = None,
    config: ConfigOpt = DEMO_CONFIG,
) -> None:
    """A car plugs in at CONNECTOR.

    Example: `evedge simctl plug 1 --max-current 16 --phases 1`"""
    _send(
        config,
        {
            "cmd": "plug_in",
            "connector": connector,
            "ev_max_current_a": max_current,
            "phases": phases,
        },
    )
    console.print(f"connector {connector}: vehicle plugged in")


@app.command("unplug")
def unplug(connector: int, config: ConfigOpt = DEMO_CONFIG) -> None:
    """The car at CONNECTOR leaves.

    Example: `evedge simctl unplug 1`"""
    _send(config, {"cmd": "unplug", "connector": connector})
    console.print(f"connector {connector}: vehicle unplugged")


@app.command("suspend")
def suspend(
    connector: int,
    resume: Annotated[bool, typer.Option("--resume", help="resume instead")] = False,
    config: ConfigOpt = DEMO_CONFIG,
) -> None:
    """The car at CONNECTOR pauses charging (or resumes with --resume).

    Example: `evedge simctl suspend 1   (then: evedge simctl suspend 1 --resume)`"""
    _send(config, {"cmd": "suspend", "connector": connector, "suspended": not resume})
    console.print(f"connector {connector}: {'resumed' if resume else 'suspended'} by the vehicle")


@app.command("inject")
def inject(
    kind: Annotated[str, typer.Argument(help="fault kind; `evedge simctl faults` lists them")],
    device: Annotated[str | None, typer.Option(help="target device name")] = None,
    connector: Annotated[int | None, typer.Option(help="target connector id")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--set", help="fault parameter KEY=VALUE, repeatable")
    ] = None,
    anyway: Annotated[
        bool, typer.Option("--anyway", help="inject even a fault the device cannot report")
    ] = False,
    config: ConfigOpt = DEMO_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Inject a fault.

    Example: `evedge simctl inject voltage_sag --connector 1 --set volts=40`

    A fault the configured EVSE cannot report (no register, no error code for it) is
    refused with what is missing (exit 1); `--anyway` injects it nonetheless."""
    why = undetectable(load_or_exit(config), kind, device, connector)
    if why and not anyway:
        raise fail(f"{why}; --anyway injects it nonetheless", Exit.CHECK_FAILED)
    fault: dict[str, Any] = {"kind": kind}
    if device:
        fault["device"] = device
    if connector is not None:
        fault["connector"] = connector
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--set wants KEY=VALUE, got {item!r}", Exit.USAGE)
        fault[key] = _parse_value(value)
    fault_id = _send(config, {"cmd": "inject", "fault": fault})["id"]
    if json:
        emit_json({"id": fault_id, "fault": fault})
    else:
        console.print(f"injected {kind} as {fault_id}")


@app.command("clear")
def clear(
    fault_id: Annotated[str | None, typer.Argument(help="fault id (default: all)")] = None,
    config: ConfigOpt = DEMO_CONFIG,
) -> None:
    """Clear one injected fault, or all of them.

    Example: `evedge simctl clear f1`"""
    cleared = _send(config, {"cmd": "clear", "id": fault_id})["cleared"]
    console.print(f"cleared: {', '.join(cleared) if cleared else 'nothing'}")


@app.command("faults")
def faults(config: ConfigOpt = DEMO_CONFIG, json: JsonOpt = False) -> None:
    """The active injected faults and every kind that can be injected.

    Example: `evedge simctl faults --json`"""
    result = _send(config, {"cmd": "list_faults"})
    if json:
        emit_json(result)
        return
    console.print_json(jsonlib.dumps(result, default=str))


@app.command("snapshot")
def snapshot(config: ConfigOpt = DEMO_CONFIG, json: JsonOpt = False) -> None:
    """Every simulated device's values and every connector's state.

    Example: `evedge simctl snapshot`"""
    result = _send(config, {"cmd": "snapshot"})
    if json:
        emit_json(result)
        return
    for name, dev in result.get("devices", {}).items():
        table = Table(title=f"{name} ({dev.get('profile')}, unit {dev.get('unit')})")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for q, v in sorted(dev.get("values", {}).items()):
            table.add_row(q, str(v))
        console.print(table)
