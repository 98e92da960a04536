"""`evedge` entry point: the service (`run`), the demo, the simulator and technician tools."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from agent.billing import tariff_cmd
from agent.cli import billing_cmd, keys_cmd, modbus_cmd, report_cmd, sessions_cmd, simctl_cmd
from agent.cli.bundle_cmd import bundle
from agent.cli.common import (
    DEFAULT_CONFIG,
    DEMO_CONFIG,
    Exit,
    config_error_json,
    console,
    emit_json,
    fail,
    load_or_exit,
)
from agent.cli.config_show import config_show
from agent.cli.control_cmd import limit, start, stop
from agent.cli.diagnose_cmd import diagnose
from agent.cli.faults_cmd import faults
from agent.cli.logs_cmd import logs
from agent.cli.mqtt_cmd import app as mqtt_app
from agent.cli.status_cmd import live, status
from agent.cli.tickets_cmd import app as tickets_app
from agent.config import ConfigError, load_config
from agent.logsetup import setup_logging
from hil.serial_pair import SerialPairError
from hil.server import ListenError
from hil.station import SimError

app = typer.Typer(
    help="evedge — edge agent for EV charging stations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and show station configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(modbus_cmd.app, name="modbus")
app.add_typer(tariff_cmd.app, name="tariff")
app.add_typer(sessions_cmd.app, name="sessions")
app.add_typer(billing_cmd.app, name="billing")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(mqtt_app, name="mqtt")
app.command("report")(report_cmd.report)
app.add_typer(simctl_cmd.app, name="simctl")
app.add_typer(tickets_app, name="tickets")
app.command("faults")(faults)
app.command("diagnose")(diagnose)
app.command("status")(status)
app.command("live")(live)
app.command("start")(start)
app.command("stop")(stop)
app.command("limit")(limit)
app.command("logs")(logs)
app.command("bundle")(bundle)
config_app.command("show")(config_show)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
SIM_ERRORS = (ListenError, SerialPairError, SimError)


@config_app.command("check")
def config_check(
    file: Annotated[
        Path | None, typer.Argument(help="station config to validate (or --config)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="same as FILE")] = None,
    json: JsonOpt = False,
) -> None:
    """Validate a station config: every problem with its field path, exit 2 if any."""
    if file is not None and config is not None and file != config:
        raise fail(f"two configs given: {file} and --config {config}; give one", Exit.USAGE)
    file = file or config or DEFAULT_CONFIG
    try:
        cfg = load_config(file)
    except ConfigError as e:
        if json:
            doc = config_error_json(e)
            emit_json({**doc, "file": str(file), "problems": doc["error"]["problems"]})
        else:
            for p, m in e.problems:
                console.print(Text.assemble((str(e.file), "red"), f": {p}: {m}"), highlight=False)
        raise typer.Exit(int(Exit.USAGE)) from None
    if json:
        emit_json(
            {
                "ok": True,
                "file": str(file),
                "station": cfg.station.id,
                "buses": len(cfg.bus),
                "devices": len(cfg.device),
                "connectors": len(cfg.connector),
            }
        )
        return
    table = Table(title=f"{file}: station {cfg.station.id} — config ok")
    for col in ("device", "profile", "bus", "address", "interval"):
        table.add_column(col)
    for d in cfg.device:
        b = cfg.bus_by_name(d.bus)
        addr = f"unit {d.unit}" + (f" @ {d.host}:{d.port}" if b.kind == "tcp" else f" @ {b.port}")
        table.add_row(d.name, d.profile, f"{b.name} ({b.kind})", addr, f"{d.interval_s:g} s")
    console.print(table)


@app.command("run")
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    json_logs: Annotated[
        bool, typer.Option("--json-logs/--console-logs", help="JSON lines (service default)")
    ] = True,
) -> None:
    """Run the agent: poll every device, publish readings, keep the store.

    Exits 75 after an OCPP hard reset (the unit's Restart=on-failure starts it again)."""
    from agent.api.server import ApiStartError
    from agent.mqtt.config import MqttConfigError
    from agent.ocpp.service import HardReset, OcppSetupError
    from agent.runtime import run_agent

    cfg = load_or_exit(config)
    setup_logging(cfg.log.level, json=json_logs)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_agent(cfg))
    except (OcppSetupError, MqttConfigError, ApiStartError) as e:
        raise fail(str(e), Exit.USAGE) from None
    except HardReset as e:
        raise typer.Exit(e.exit_code) from None


@app.command("demo")
def demo(
    config: ConfigOpt = DEMO_CONFIG,
    duration: Annotated[float | None, typer.Option(help="stop after SECONDS")] = None,
    json: JsonOpt = False,
) -> None:
    """Run the agent against the simulated station, charging cars back to back, live."""
    from agent.cli.demo import run_demo

    cfg = load_or_exit(config)
    setup_logging("warning", json=json)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(cfg, duration=duration, as_json=json))
    except SIM_ERRORS as e:
        raise fail(f"{e} — is another demo or simulator running?", Exit.UNREACHABLE) from None


@app.command("sim")
def sim(config: ConfigOpt = DEMO_CONFIG) -> None:
    """Run the simulated station alone (Modbus servers + control port), for tests and HIL."""
    from hil.control import run_sim

    cfg = load_or_exit(config)
    setup_logging(cfg.log.level, json=False)
    console.print(
        f"simulating station {cfg.station.id}: {len(cfg.device)} devices; "
        f"control on 127.0.0.1:{cfg.sim.control_port}; Ctrl-C to stop"
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_sim(cfg))
    except SIM_ERRORS as e:
        raise fail(f"{e} — is another demo or simulator running?", Exit.UNREACHABLE) from None


if __name__ == "__main__":
    app()
