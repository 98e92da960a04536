"""`evedge status`: the station at a glance — connectors and sessions, device health, sync
state and backlog, active faults. From the running service, else from the store (and says so).

`evedge live`: the same, refreshed, in the rich live view of agent/cli/live.py (needs the
running service).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agent.cli.paths import DEFAULT_CONFIG

# `status --json` against the running service answers first (agent/cli/fastpath.py); the
# report model, the store and the views are imported by the paths that need them.
if TYPE_CHECKING:
    from agent.cli.live import LiveState
    from agent.config import StationConfig
    from agent.ops import StatusReport

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def fetch_status(cfg: StationConfig, result: dict | None = None) -> tuple[StatusReport, str | None]:
    """The status from the service (its answer `result`, if already asked), or from the
    store with a note why; exit 3 if neither."""
    from agent.cli.common import Exit, fail
    from agent.cli.service import read, store_note
    from agent.ops import StatusReport, store_status
    from agent.store.db import StoreError

    result = result if result is not None else read(cfg, "status")
    if result is not None:
        return StatusReport.model_validate(result), None
    if not cfg.store.path.exists():
        raise fail(
            f"the service is down and there is no store at {cfg.store.path} yet", Exit.UNREACHABLE
        )
    try:
        report = store_status(cfg)
    except StoreError as e:
        raise fail(str(e), Exit.UNREACHABLE) from None
    return report, store_note(cfg)


def status(config: ConfigOpt = DEFAULT_CONFIG, json: JsonOpt = False) -> None:
    """Station, connectors, sessions, device health, sync and backlog, active faults.

    Example: `evedge status -c /etc/evedge/station.toml --json`"""
    if json:
        from agent.cli.fastpath import print_answer, service_answer

        result = service_answer(config, "status")
        if result is not None:  # the service's answer is the report, as JSON
            print_answer({**result, "note": None})
            return
    from agent.cli.common import emit_json, load_or_exit
    from agent.cli.service import read

    cfg = load_or_exit(config)
    result = read(cfg, "status")
    report, note = fetch_status(cfg, result)
    if json:
        emit_json({**report.model_dump(mode="json"), "note": note})
        return
    _print(report, cfg.diagnosis.language)


def _words(fields: dict) -> str:
    """`connections 2, refused 0` — a service's counters as words, not a dict."""
    return ", ".join(f"{k.replace('_', ' ')} {'—' if v is None else v}" for k, v in fields.items())


def _dash(v: object, unit: str = "") -> str:
    return "—" if v is None else f"{v}{unit}"


def _print(r: StatusReport, lang: str) -> None:
    from rich.table import Table
    from rich.text import Text

    from agent.cli.common import console
    from agent.cli.live import HEALTH_STYLE, mqtt_lines, ocpp_lines
    from agent.cli.paths import version
    from agent.events import HealthState

    source = "live from the service" if r.source == "service" else "from the store (service down)"
    console.print(
        Text.assemble(
            (f"station {r.station}", "bold"), f" {r.name}  ", (source, "dim"),
            (f"  evedge {version()}", "dim"),
        ),
    )  # fmt: skip
    conns = Table(title="connectors")
    for col in ("connector", "status", "CP", "session", "energy", "cost", "power", "offered"):
        conns.add_column(col)
    for c in r.connectors:
        conns.add_row(
            str(c.connector),
            Text(_dash(c.status), style="bold green" if c.status == "Charging" else "bold"),
            _dash(c.cp_state),
            _dash(c.session_id and c.session_id[:8]),
            "—" if c.energy_wh is None else f"{c.energy_wh / 1000:.3f} kWh",
            "—" if c.cost is None else f"{c.cost} {c.currency or ''}".strip(),
            "—" if c.power_w is None else f"{c.power_w / 1000:.2f} kW",
            "—" if c.offered_current_a is None else f"{c.offered_current_a:g} A",
        )
    console.print(conns)
    devs = Table(title="device health")
    for col in ("device", "bus", "state", "latency", "polls", "timeouts", "last error"):
        devs.add_column(col)
    for h in r.devices:
        devs.add_row(
            h.device,
            h.bus,
            Text(h.state.value, style=HEALTH_STYLE.get(h.state, "")),
            _dash(h.latency_ms, " ms"),
            str(h.polls),
            str(h.timeouts),
            Text(_dash(h.last_error), style="red" if h.state != HealthState.OK else "dim"),
        )
    console.print(devs)
    sync = Table.grid(padding=(0, 2))
    for name, st in r.sync.items():
        if name in ("ocpp", "mqtt"):
            lines = ocpp_lines(st, []) if name == "ocpp" else mqtt_lines(st)
        else:
            lines = [_words(st)]
        for i, line in enumerate(lines):
            sync.add_row(Text(name.upper() if i == 0 else "", style="bold"), line)
    backlog = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r.backlog.items())
    if r.sync:
        console.print(Text("cloud sync", style="bold"))
        console.print(sync)
    console.print(f"backlog (not yet confirmed by the cloud): {backlog or '—'}")
    if r.api is not None:  # connections and what the limits and the wall caught
        console.print(f"local API: {_words(r.api)}", highlight=False)
    if not r.faults:
        console.print("[green]no active faults[/]")
        return
    faults = Table(title="active faults (details: evedge faults)")
    for col in ("raised", "fault", "where", "severity", "Faulted"):
        faults.add_column(col)
    for f in r.faults:
        faults.add_row(
            f"{f.ts.astimezone():%Y-%m-%d %H:%M:%S}",
            f.title.get(lang, f.rule),
            f.scope,
            f.severity,
            "yes" if f.faulted else "no",
        )
    console.print(faults)


def feed(state: LiveState, report: StatusReport, readings: list[dict], seen: set[str]) -> None:
    """Feed the live view with one status poll: readings, health, sessions, and a log line
    for each fault not `seen` before."""
    from agent.diagnosis.store import FaultRecord
    from agent.events import Reading, SessionEvent

    for r in readings:
        state.feed(Reading.model_validate(r))
    for h in report.devices:
        state.feed(h)
    state.sync = dict(report.sync)
    for c in report.connectors:
        if c.status is None:
            continue
        new = c.session_id is not None and c.connector not in state.since
        state.feed(
            SessionEvent(
                ts=c.session_started if new and c.session_started else report.at,
                connector=c.connector,
                status=c.status,
                kind="started" if new else "progress",
                session_id=c.session_id,
                energy_wh=c.energy_wh,
                power_w=c.power_w,
                cost_incl_vat=None if c.cost is None else Decimal(c.cost),
                currency=c.currency,
            )
        )
    state.faults = {f.fault_id: FaultRecord(f) for f in report.faults}
    for f in report.faults:
        if f.fault_id not in seen:
            seen.add(f.fault_id)
            state.note(f"{f.fault_id} fault: {f.title.get('en', f.rule)} ({f.scope})")


def live(
    config: ConfigOpt = DEFAULT_CONFIG,
    interval: Annotated[float, typer.Option(min=0.2, max=60, help="seconds between polls")] = 1.0,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="stop after N polls (default: Ctrl-C)")
    ] = None,
    utc: Annotated[
        bool, typer.Option("--utc", help="times in UTC, not the station's zone")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="one status JSON per poll")] = False,
) -> None:
    """Live view of the running station (Ctrl-C to stop); exit 3 when the service is down.

    Example: `evedge live -c config/demo.toml --interval 2`"""
    from rich.live import Live

    from agent.cli.common import console, emit_json, load_or_exit
    from agent.cli.live import LiveState, render
    from agent.cli.service import control
    from agent.ops import StatusReport

    cfg = load_or_exit(config)
    state = LiveState(cfg, started=None, utc=utc)  # the viewer's start is not the service's
    seen: set[str] = set()
    polls = itertools.count(1) if count is None else range(1, count + 1)
    with contextlib.suppress(KeyboardInterrupt):
        if json:
            for n in polls:
                emit_json(control(cfg, "status"))
                if n != count:
                    time.sleep(interval)
            return
        # The terminal's alternate screen: each refresh replaces the whole view (no stale
        # lines when it shrinks or is taller than the window); the shell is back on exit.
        screen = console.is_terminal
        with Live(render(state), console=console, refresh_per_second=4, screen=screen) as view:
            for n in polls:
                report = StatusReport.model_validate(control(cfg, "status"))
                feed(state, report, control(cfg, "readings")["readings"], seen)
                view.update(render(state))
                if n != count:
                    time.sleep(interval)
