"""`evedge` entry point: the service (`run`), the demo, the simulator and technician tools.

Subcommands live in their own modules and are imported only when they run (`LAZY`):
`evedge --help` lists them from the table below, and `evedge status` does not load the
simulator, OCPP or MQTT. Each entry's help line is the command's own (tests/test_cli_lazy.py
checks them against the loaded commands).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
from pathlib import Path
from typing import Annotated, ClassVar, NamedTuple

import typer
import typer.main
from typer.core import DEFAULT_MARKUP_MODE, TyperCommand, TyperGroup
from typer.models import CommandInfo

from agent.cli.paths import DEFAULT_CONFIG, DEMO_CONFIG


class Lazy(NamedTuple):
    """A subcommand imported on use: `module:attribute`, a typer.Typer or a command."""

    target: str
    help: str  # the line `--help` shows for it

    @property
    def group(self) -> bool:
        return self.target.endswith(":app")


class LazyGroup(TyperGroup):
    """A command group whose `lazy` subcommands are imported when resolved, not listed."""

    lazy: ClassVar[dict[str, Lazy]] = {}

    def list_commands(self, ctx: typer.Context) -> list[str]:
        commands = [n for n, c in self.lazy.items() if not c.group]
        groups = [n for n, c in self.lazy.items() if c.group]
        return [*commands, *super().list_commands(ctx), *groups]

    def get_command(self, ctx: typer.Context, cmd_name: str):
        if cmd_name in self.lazy:  # help listings and completion: name and help line only
            line = self.lazy[cmd_name].help
            return TyperCommand(cmd_name, help=line, short_help=line, rich_markup_mode=None)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        if name in self.lazy:
            cmd = load(name, self.lazy[name], self.rich_markup_mode)
        if cmd is not None:
            plain_help(cmd)
        return name, cmd, rest


def load(name: str, entry: Lazy, markup=DEFAULT_MARKUP_MODE):
    """Import a lazy subcommand and build its click command, as add_typer/command would."""
    module, attr = entry.target.split(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_group(obj)
    else:
        info = CommandInfo(name=name, callback=obj)
        cmd = typer.main.get_command_from_info(
            info, pretty_exceptions_short=True, rich_markup_mode=markup
        )
    cmd.name = name
    return cmd


# What a value is called in help, by typer's type name (typer writes `--unit <int>`).
METAVARS = {
    "str": "TEXT",
    "int": "N",
    "int range": "N",
    "float": "NUMBER",
    "float range": "NUMBER",
    "path": "PATH",
    "list[str]": "TEXT",
}


def plain_help(cmd) -> None:
    """Plain help for a command and its subcommands: typer's rich help imports rich's
    markdown and traceback modules (~0.3 s of a 0.5 s `evedge --help`) and writes types as
    `--json <bool>`, `--set <list[str]>`; this writes `--json`, `--set TEXT`, `KIND`."""
    cmd.rich_markup_mode = None
    for param in cmd.params:
        if param.metavar is not None or getattr(param, "is_flag", False):
            continue
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
            continue
        with contextlib.suppress(Exception):  # a type typer cannot name: keep its own
            name = param.display_type(None).strip("<>")
            param.metavar = METAVARS.get(name, name.upper())
    for sub in getattr(cmd, "commands", {}).values():
        plain_help(sub)


class _Main(LazyGroup):
    lazy: ClassVar[dict[str, Lazy]] = {
        "report": Lazy(
            "agent.cli.report_cmd:report",
            "Usage report from the charge records (buckets in the station's timezone).",
        ),
        "faults": Lazy(
            "agent.cli.faults_cmd:app",
            "Show active faults with root cause and guidance (--history: all of them); "
            "`faults clear ID --note …` clears one.",
        ),
        "diagnose": Lazy(
            "agent.cli.diagnose_cmd:diagnose",
            "Self-test the station: bus scan, P ≈ Σ V·I, energy register, clock, disk, cloud.",
        ),
        "status": Lazy(
            "agent.cli.status_cmd:status",
            "Station, connectors, sessions, device health, sync and backlog, active faults.",
        ),
        "live": Lazy(
            "agent.cli.status_cmd:live",
            "Live view of the running station (Ctrl-C to stop); exit 3 when the service is down.",
        ),
        "start": Lazy(
            "agent.cli.control_cmd:start",
            "Start a session on CONNECTOR (the vehicle must be plugged in, or plug it in next).",
        ),
        "stop": Lazy(
            "agent.cli.control_cmd:stop",
            "Stop the session on CONNECTOR (its charge record is written as usual).",
        ),
        "limit": Lazy(
            "agent.cli.control_cmd:limit",
            "Limit the current CONNECTOR offers to the vehicle; 'none' clears the local limit.",
        ),
        "logs": Lazy(
            "agent.cli.logs_cmd:logs",
            "Show the service's log (journalctl -u evedge); exit 3 without a journal.",
        ),
        "bundle": Lazy(
            "agent.cli.bundle_cmd:bundle",
            "Write the diagnostics bundle: faults, device health, config without secrets, logs.",
        ),
        "modbus": Lazy(
            "agent.cli.modbus_cmd:app",
            "Read, write and scan Modbus devices, decoded by device profile.",
        ),
        "tariff": Lazy(
            "agent.billing.tariff_cmd:app", "Check OCPI 2.2.1 tariff files and quote sessions."
        ),
        "sessions": Lazy(
            "agent.cli.sessions_cmd:app", "Charging sessions and their charge records."
        ),
        "billing": Lazy(
            "agent.cli.billing_cmd:app", "Charge records: verify the chain and signatures."
        ),
        "keys": Lazy("agent.cli.keys_cmd:app", "The agent's OCMF signing key."),
        "mqtt": Lazy("agent.cli.mqtt_cmd:app", "MQTT cloud sync: payload schemas, broker check."),
        "simctl": Lazy(
            "agent.cli.simctl_cmd:app", "Control a running simulator: cars, faults, snapshots."
        ),
        "tickets": Lazy(
            "agent.cli.tickets_cmd:app",
            "Drivers' problem reports (tickets) with their diagnostic snapshot.",
        ),
        "update": Lazy(
            "agent.cli.update_cmd:app",
            "Signed updates of the agent: apply, status, rollback, boot-check.",
        ),
        "maintenance": Lazy(
            "agent.cli.maintenance_cmd:app",
            "Scheduled maintenance windows (excluded from the uptime KPI).",
        ),
    }


class _Config(LazyGroup):
    lazy: ClassVar[dict[str, Lazy]] = {
        "show": Lazy(
            "agent.cli.config_show:config_show",
            "Show the effective config, defaults included, with passwords, keys and tokens masked.",
        ),
    }


class _App(typer.Typer):
    """The evedge app: a config, store or file-permission error that escapes a command ends
    it with its message and exit code (agent/cli/common.py exit_for), never a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:
            from agent.cli.common import exit_for

            code = exit_for(e)
            if code is None:
                raise
            raise SystemExit(code) from None


app = _App(
    cls=_Main,
    help="evedge — edge agent for EV charging stations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # see plain_help
)


def _print_version(value: bool) -> None:
    if value:
        from agent.cli.paths import version

        print(f"evedge {version()}")
        raise typer.Exit()


@app.callback()
def main(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """evedge — edge agent for EV charging stations."""


config_app = typer.Typer(
    cls=_Config, help="Check and show station configs.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def sim_errors() -> tuple[type[Exception], ...]:
    """The simulator's start-up errors (a port or serial pair taken): exit 3, not a trace."""
    from hil.serial_pair import SerialPairError
    from hil.server import ListenError
    from hil.station import SimError

    return (ListenError, SerialPairError, SimError)


@config_app.command("check")
def config_check(
    file: Annotated[
        Path | None, typer.Argument(help="station config to validate (or --config)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="same as FILE")] = None,
    json: JsonOpt = False,
) -> None:
    """Validate a station config: every problem with its field path, exit 2 if any.

    Example: `evedge config check /etc/evedge/station.toml`"""
    from rich.table import Table
    from rich.text import Text

    from agent.cli.common import Exit, config_error_json, console, emit_json, fail
    from agent.config import ConfigError, load_config

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


@app.command(
    "run", short_help="Run the agent: poll every device, publish readings, keep the store."
)
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    json_logs: Annotated[
        bool | None,
        typer.Option(
            "--json-logs/--console-logs",
            help="log format (default: JSON under systemd or into a pipe, console on a terminal)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the agent: poll every device, publish readings, keep the store.

    Exits 75 after an OCPP hard reset (the unit's Restart=on-failure starts it again).

    Example: `evedge run -c /etc/evedge/station.toml --console-logs`"""
    # A SIGTERM before the event loop's handler exists (systemd stopping a unit that is still
    # starting, a test stopping a fresh agent) stops like Ctrl-C: a clean exit 0, no kill.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        _run(config, json_logs)


def _run(config: Path, json_logs: bool) -> None:
    import asyncio

    from agent.api.server import ApiStartError
    from agent.cli.common import Exit, fail, load_or_exit
    from agent.logsetup import json_logs_by_default, setup_logging
    from agent.mqtt.config import MqttConfigError
    from agent.ocpp.service import HardReset, OcppSetupError
    from agent.runtime import run_agent

    cfg = load_or_exit(config)
    setup_logging(cfg.log.level, json=json_logs_by_default() if json_logs is None else json_logs)
    try:
        asyncio.run(run_agent(cfg))
    except (OcppSetupError, MqttConfigError, ApiStartError) as e:
        raise fail(str(e), Exit.USAGE) from None
    except HardReset as e:
        raise typer.Exit(e.exit_code) from None


@app.command(
    "demo",
    short_help="Run the agent against the simulated station, charging cars back to back, live.",
)
def demo(
    config: ConfigOpt = DEMO_CONFIG,
    duration: Annotated[float | None, typer.Option(help="stop after SECONDS")] = None,
    json: JsonOpt = False,
    csms: Annotated[
        str | None, typer.Option(help="your CSMS instead of the demo's, e.g. ws://host:8180/ocpp")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="your MQTT broker instead of the demo's, HOST:PORT")
    ] = None,
) -> None:
    """Run the agent against the simulated station, charging cars back to back, live.

    Example: `evedge demo --csms ws://127.0.0.1:8180/steve/websocket/CentralSystemService`"""
    import asyncio

    from agent.cli.common import Exit, fail, load_or_exit
    from agent.cli.demo import DemoRunning, run_demo
    from agent.cli.demo_cloud import with_peers
    from agent.logsetup import setup_logging

    cfg = load_or_exit(config)
    try:
        cfg = with_peers(cfg, csms, broker)
    except ValueError as e:
        raise fail(str(e), Exit.USAGE) from None
    setup_logging("warning", json=json)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(cfg, duration=duration, as_json=json, config_path=config))
    except DemoRunning as e:
        raise fail(str(e), Exit.UNREACHABLE) from None
    except sim_errors() as e:
        raise fail(f"{e} — is another demo or simulator running?", Exit.UNREACHABLE) from None


@app.command(
    "sim",
    short_help="Run the simulated station alone (Modbus servers + control port).",
)
def sim(config: ConfigOpt = DEMO_CONFIG) -> None:
    """Run the simulated station alone (Modbus servers + control port), for tests and HIL.

    Example: `evedge sim -c config/demo.toml   (then: evedge simctl plug 1)`"""
    import asyncio

    from agent.cli.common import Exit, console, fail, load_or_exit
    from agent.logsetup import setup_logging
    from hil.control import run_sim

    cfg = load_or_exit(config)
    setup_logging(cfg.log.level, json=False)
    console.print(
        f"simulating station {cfg.station.id}: {len(cfg.device)} devices; "
        f"control on 127.0.0.1:{cfg.sim.control_port}; Ctrl-C to stop"
    )
    # SIGTERM (systemd, tests) stops like Ctrl-C: run_sim's clean-up stops its socat pairs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_sim(cfg))
    except sim_errors() as e:
        raise fail(f"{e} — is another demo or simulator running?", Exit.UNREACHABLE) from None


if __name__ == "__main__":
    app()
