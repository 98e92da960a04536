"""Live terminal view of a station: active faults, device health, per-connector charging
state, cloud sync links, events — in that order, so on an 80×24 terminal what a technician
needs first is on screen (the rest is cut at the bottom). Columns adapt to the width.
Fed by bus events (`evedge demo`) or status polls (`evedge live`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli.faults_panel import faults_panel, track
from agent.cli.fmt import duration, station_tz, when
from agent.cli.meaning import profile_of, with_meaning
from agent.config import StationConfig
from agent.diagnosis.store import FaultRecord
from agent.events import (
    READINGS,
    DeviceHealth,
    DriverMessage,
    FaultCleared,
    FaultLatch,
    FaultRaised,
    HealthState,
    Reading,
    SessionEvent,
    utcnow,
)

CP_MEANING = {
    "A": "no vehicle",
    "B": "vehicle connected",
    "C": "charging",
    "D": "charging, ventilation",
    "E": "pilot short / no supply",
    "F": "EVSE fault",
}
HEALTH_STYLE = {
    HealthState.OK: "green",
    HealthState.DEGRADED: "yellow",
    HealthState.OFFLINE: "bold red",
    HealthState.UNKNOWN: "dim",
}


@dataclass
class LiveState:
    """What the live view shows, fed by bus events."""

    cfg: StationConfig
    readings: dict[tuple[str, str], Reading] = field(default_factory=dict)
    health: dict[str, DeviceHealth] = field(default_factory=dict)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    # when the agent shown started (None: not known to the viewer)
    started: datetime | None = field(default_factory=utcnow)
    # fault id -> the active fault (raised, latched)
    faults: dict[str, FaultRecord] = field(default_factory=dict)
    utc: bool = False  # times in UTC, not the station's zone
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    # connector id -> its latest SessionEvent (status, session energy, running cost)
    sessions: dict[int, SessionEvent] = field(default_factory=dict)
    # connector id -> when its running session started
    since: dict[int, datetime] = field(default_factory=dict)
    # connector id -> what its driver display shows (agent/driver)
    driver: dict[int, DriverMessage] = field(default_factory=dict)
    # sync channel ("ocpp", "mqtt") -> its service's state() (as in `evedge status --json`)
    sync: dict[str, dict[str, Any]] = field(default_factory=dict)
    # sync channel -> why it does not run (e.g. no broker installed)
    sync_skipped: dict[str, str] = field(default_factory=dict)
    # connector id -> the OCPP transaction id the CSMS acknowledged for its current session
    transactions: dict[int, int] = field(default_factory=dict)
    # every acknowledged OCPP transaction id, in order
    acknowledged: list[int] = field(default_factory=list)
    # connector id -> the central system's view of it (a line; the demo's own CSMS)
    csms: dict[int, str] = field(default_factory=dict)

    def feed(self, event: object) -> None:
        """Take one bus event."""
        if isinstance(event, READINGS):
            for r in event.samples():
                self.readings[(r.device, r.quantity)] = r
        elif isinstance(event, DeviceHealth):
            self.health[event.device] = event
        elif isinstance(event, DriverMessage):
            self.driver[event.connector] = event
        elif isinstance(event, FaultRaised | FaultLatch | FaultCleared):
            track(self.faults, event)
        elif isinstance(event, SessionEvent):
            self.sessions[event.connector] = event
            if event.kind == "started":
                self.since[event.connector] = event.ts
            elif event.session_id is None or event.kind == "stopped":
                self.since.pop(event.connector, None)

    def note(self, text: str) -> None:
        """Add a line to the event log shown under the view."""
        self.log.append(f"{utcnow().astimezone(station_tz(self.cfg, self.utc)):%H:%M:%S}  {text}")
        for listener in self.listeners:
            listener(text)

    def value(self, device: str | None, quantity: str):
        if device is None:
            return None
        r = self.readings.get((device, quantity))
        return None if r is None else r.value


def _fmt(v, spec: str = "", unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:{spec}}{unit}" if spec else f"{v}{unit}"


def session_line(ev: SessionEvent, power_w: float | None = None) -> str:
    """`Charging · 21.2 kW · 1.23 kWh · 0.49 EUR`: a session at a glance."""
    parts = [ev.status]
    power = power_w if power_w is not None else ev.power_w
    if power is not None:
        parts.append(f"{power / 1000:.1f} kW")
    if ev.energy_wh is not None:
        parts.append(f"{ev.energy_wh / 1000:.2f} kWh")
    cost = ev.cost_incl_vat if ev.cost_incl_vat is not None else ev.cost_excl_vat
    if cost is not None:
        parts.append(f"{cost} {ev.currency}")
    return " · ".join(parts)


def _connector_panel(state: LiveState, c, now: datetime) -> Panel:
    meter = c.meter or c.evse
    cp = state.value(c.evse, "cp_state")
    cp_text = Text(
        f"{cp or '—'}  {CP_MEANING.get(cp, '')}", style="bold green" if cp in ("C", "D") else "bold"
    )
    top = Table.grid(padding=(0, 2))
    ev = state.sessions.get(c.id)
    if ev is not None:
        top.add_row("status", Text(ev.status, style="bold"))
    shown = state.driver.get(c.id)
    if shown is not None:
        top.add_row("display", Text(shown.headline[shown.lang], style="bold cyan"))
    tx = state.transactions.get(c.id)
    if tx is not None:
        top.add_row("OCPP tx", f"{tx} (acknowledged by the CSMS)")
    if c.id in state.csms:
        top.add_row("CSMS sees", state.csms[c.id])
    top.add_row("CP state", cp_text)
    contactor = state.value(c.evse, "contactor_closed")
    if contactor is not None:  # not every controller reports it
        top.add_row("contactor", _fmt(contactor))
    top.add_row("offered", _fmt(state.value(c.evse, "offered_current_a"), ".0f", " A"))
    top.add_row("enabled", _fmt(state.value(c.evse, "charging_enabled")))
    err = state.value(c.evse, "evse_error_code")
    profile = profile_of(next((d.profile for d in state.cfg.device if d.name == c.evse), None))
    err_text = "—" if err is None else with_meaning(profile, "evse_error_code", err)
    top.add_row("EVSE error", Text(err_text, style="red" if err else ""))
    phases = Table(box=None, pad_edge=False)
    phases.add_column("")
    for ph in ("L1", "L2", "L3"):
        phases.add_column(ph, justify="right")
    for label, fmt, spec, unit in (
        ("voltage", "voltage_l{}", ".1f", " V"),
        ("current", "current_l{}", ".2f", " A"),
        ("power", "power_l{}_w", ".0f", " W"),
    ):
        row = [state.value(meter, fmt.format(i)) for i in (1, 2, 3)]
        if any(v is not None for v in row):
            phases.add_row(label, *[_fmt(v, spec, unit) for v in row])
    power = state.value(meter, "power_w")
    energy = state.value(meter, "energy_import_wh")
    totals = Table.grid(padding=(0, 2))
    totals.add_row(
        "power", Text(_fmt(None if power is None else power / 1000, ".2f", " kW"), style="bold")
    )
    totals.add_row("energy register", _fmt(energy, ",", " Wh"))
    totals.add_row("frequency", _fmt(state.value(meter, "frequency_hz"), ".2f", " Hz"))
    ev = state.sessions.get(c.id)
    if ev is not None and c.id in state.since:
        running = duration((now - state.since[c.id]).total_seconds())
        totals.add_row(
            "session",
            Text(
                f"{session_line(ev, power)} · {running}",
                style="bold green" if ev.status == "Charging" else "bold",
            ),
        )
    title = (
        f"connector {c.id} — EVSE {c.evse or '—'}, meter {c.meter or '(EVSE)'}"
        f" — max {c.max_current_a:g} A"
    )
    return Panel(Group(top, Text(""), phases, Text(""), totals), title=title, border_style="cyan")


def _mark(up: bool | None) -> Text:
    if up is None:
        return Text("○ unknown", style="dim")
    return Text("● connected", style="bold green") if up else Text("● offline", style="bold red")


def ocpp_lines(st: dict[str, Any], acknowledged: list[int]) -> list[Text | str]:
    """The OCPP link in words: connected, boot, outbox, transactions, last error."""
    head = Text.assemble(_mark(st.get("connected")), f"  boot {st.get('boot_status') or '—'}")
    head.append(f"  {st.get('url', '')}", style="dim")
    lines: list[Text | str] = [head]
    box = st.get("outbox")
    if isinstance(box, dict) and "pending" in box:
        waiting = ", ".join(f"{a} {n}" for a, n in sorted(box.get("by_action", {}).items()))
        lines.append(
            f"outbox {box['pending']} waiting{f' ({waiting})' if waiting else ''}"
            f" · {box.get('sent_since_start', 0)} delivered"
            f" · {box.get('transactions_without_id', 0)} transactions await an id"
        )
        if box.get("exhausted"):  # out of attempts: kept, retried after the next reconnect
            lines.append(
                Text(
                    f"{box['exhausted']} exhausted their attempts (kept; retried on reconnect)",
                    style="yellow",
                )
            )
    if acknowledged:
        shown = ", ".join(map(str, acknowledged[-6:]))
        lines.append(f"transactions acknowledged: {len(acknowledged)} (ids {shown})")
    if st.get("last_error") and not st.get("connected"):
        lines.append(Text(f"last error: {st['last_error']}", style="red"))
    return lines


def mqtt_lines(st: dict[str, Any]) -> list[Text | str]:
    """The MQTT link in words: connected, broker, published/acknowledged, backlog."""
    head = Text.assemble(_mark(st.get("connected")), f"  broker {st.get('broker', '—')}")
    lines: list[Text | str] = [head]
    lines.append(
        f"published {st.get('published', 0)} · acknowledged {st.get('acked', 0)}"
        f" · backlog {st.get('backlog', 0)}"
        + (
            f" (oldest {st['oldest_undelivered_age_s']} s)"
            if st.get("oldest_undelivered_age_s")
            else ""
        )
    )
    if st.get("last_error") and not st.get("connected"):
        lines.append(Text(f"last error: {st['last_error']}", style="red"))
    return lines


def _sync_panel(state: LiveState) -> Panel | None:
    """OCPP and MQTT: link, boot, outbox backlog; a channel that does not run says why."""
    grid = Table.grid(padding=(0, 2))
    for name, label in (("ocpp", "OCPP"), ("mqtt", "MQTT")):
        st = state.sync.get(name)
        if st is not None:
            lines = ocpp_lines(st, state.acknowledged) if name == "ocpp" else mqtt_lines(st)
            for i, line in enumerate(lines):
                grid.add_row(Text(label if i == 0 else "", style="bold"), line)
        elif name in state.sync_skipped:
            grid.add_row(
                Text(label, style="bold"), Text(f"skipped: {state.sync_skipped[name]}", style="dim")
            )
    if not grid.rows:
        return None
    return Panel(grid, title="cloud sync", border_style="cyan")


WIDE = 100  # from this width the health table shows every counter


def _health_table(state: LiveState, width: int, now: datetime) -> Table:
    wide = width >= WIDE
    t = Table(title="device health", expand=True)
    cols = ["device", "bus", "state", "latency", "polls", "timeouts"]
    cols += ["bad frames", "exceptions", "last good"] if wide else ["last good"]
    for col in cols:
        t.add_column(col, justify="right" if col not in ("device", "bus", "state") else "left")
    for d in state.cfg.device:
        h = state.health.get(d.name)
        if h is None:
            t.add_row(d.name, d.bus, Text("unknown", style="dim"), *["—"] * (len(cols) - 3))
            continue
        age = "—" if h.last_good is None else f"{duration((now - h.last_good).total_seconds())} ago"
        row = [
            d.name,
            d.bus,
            Text(h.state.value, style=HEALTH_STYLE[h.state]),
            _fmt(h.latency_ms, ".0f", " ms"),
            str(h.polls),
            str(h.timeouts),
        ]
        if wide:
            exc = ", ".join(f"{c:02d}×{n}" for c, n in sorted(h.exceptions.items())) or "0"
            row += [str(h.crc_errors), exc]
        t.add_row(*row, age)
    return t


class View:
    """The whole view; laid out for the width it is rendered at."""

    def __init__(self, state: LiveState, now: datetime | None = None):
        self.state = state
        self.now = now  # fixed for snapshots; None: the time of each refresh

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        state = self.state
        now = self.now or utcnow()
        head = Text.assemble(
            (f"station {state.cfg.station.id}", "bold"),
            f" · {when(now, station_tz(state.cfg, state.utc))}",
        )
        if state.started is not None:
            head.append(f" · up {duration((now - state.started).total_seconds())}")
        head.append(" · Ctrl-C stops", style="dim")
        yield head
        yield faults_panel(state.faults, state.cfg.diagnosis.language)
        yield _health_table(state, options.max_width, now)
        for c in state.cfg.connector:
            yield _connector_panel(state, c, now)
        sync = _sync_panel(state)
        if sync is not None:
            yield sync
        if state.log:
            yield Panel("\n".join(state.log), title="events", border_style="dim")


def render(state: LiveState, now: datetime | None = None) -> View:
    """The whole view as one renderable (`now`: a fixed time, for snapshots)."""
    return View(state, now)
