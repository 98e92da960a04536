"""`evedge tickets [list | show ID | create]`: drivers' problem reports, from the store.

`list` and `show` read the store named by the station config directly (WAL: works while
the service runs, and while it is down). `create` (technician, testing) goes through the
running service's API (`report_problem`), which announces the ticket at once (MQTT sends
it); with the service down it writes the store, and the MQTT sync sends it when it starts
(or within a minute, if the service runs without a reachable API).
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, get_args

import typer
from pydantic import ValidationError
from rich.table import Table

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.cli.fmt import station_tz, when
from agent.cli.service import read
from agent.cli.store_open import writable_store
from agent.config import StationConfig
from agent.logsetup import setup_logging
from agent.tickets.create import TicketError, create_ticket, report_from_link
from agent.tickets.model import Category, ReportRequest
from agent.tickets.store import StoredTicket, TicketStore

app = typer.Typer(help="Drivers' problem reports (tickets) with their diagnostic snapshot.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
CATEGORIES = get_args(Category)


def _open(cfg: StationConfig, config: Path) -> TicketStore:
    return writable_store(cfg, config, TicketStore)


def _queued(t: StoredTicket) -> str:
    return "queued" if t.delivered is None else f"sent {t.delivered:%Y-%m-%d %H:%M}"


@app.callback(invoke_without_command=True)
def tickets(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="newest N")] = 50,
    json: JsonOpt = False,
) -> None:
    """List tickets, newest first (the same as `tickets list`)."""
    if ctx.invoked_subcommand is None:
        list_cmd(config=config, limit=limit, json=json)


def _zone(tz) -> str:
    return getattr(tz, "key", None) or "local"


@app.command("list")
def list_cmd(config: ConfigOpt = DEFAULT_CONFIG, limit: int = 50, json: JsonOpt = False) -> None:
    """List tickets, newest first, with whether the cloud has them.

    Example: `evedge tickets list --json`"""
    cfg = load_or_exit(config)
    setup_logging("warning")
    with _open(cfg, config) as store:
        rows = store.list(limit)
    if json:
        emit_json({"station": cfg.station.id, "tickets": [t.as_json() for t in rows]})
        return
    if not rows:
        console.print("no tickets")
        return
    tz = station_tz(cfg)
    table = Table(
        title=f"tickets of station {cfg.station.id} (newest first; times {_zone(tz)})",
        box=None,
        header_style="bold underline",
    )
    for col in ("id", "created", "conn", "source", "category", "faults", "cloud", "text"):
        # An id or a date is never cut (`tickets show` needs the whole id); text wraps.
        table.add_column(col, no_wrap=col in ("id", "created"), overflow="fold")
    for st in rows:
        t = st.ticket
        text = t.text if len(t.text) <= 40 else t.text[:39] + "…"
        table.add_row(
            t.id,
            f"{t.created.astimezone(tz):%Y-%m-%d %H:%M}",
            str(t.connector),
            t.source,
            t.category,
            ", ".join(f.rule for f in t.snapshot.faults) or "—",
            _queued(st),
            text,
        )
    console.print(table)


@app.command("show")
def show(
    ticket_id: Annotated[str, typer.Argument(help="ticket id, e.g. T-3F9A2C")],
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """One ticket with its full snapshot.

    Example: `evedge tickets show T-3F9A2C`"""
    cfg = load_or_exit(config)
    setup_logging("warning")
    with _open(cfg, config) as store:
        st = store.get(ticket_id)
    if st is None:
        raise fail(f"no ticket {ticket_id!r} (see `evedge tickets list`)", Exit.CHECK_FAILED)
    if json:
        emit_json(st.as_json())
        return
    t, s = st.ticket, st.ticket.snapshot
    console.print(f"[bold]{t.id}[/] · station {t.station} · connector {t.connector}")
    tz = station_tz(cfg)
    console.print(f"created {when(t.created, tz)} via {t.source}, "
                  f"category {t.category}, language {t.lang}, cloud: {_queued(st)}")  # fmt: skip
    console.print(f"text: {t.text or '—'}", highlight=False, markup=False)
    if t.contact:
        console.print(f"driver contact: {t.contact}", highlight=False, markup=False)
    console.print(f"status then: {s.status or 'unknown'}")
    for f in s.faults:
        console.print(f"fault: {f.rule} ({f.severity}, {f.scope}) — {f.title.get('en', '')}")
    if s.session is not None:
        ss = s.session
        total = ss.total_incl_vat or ss.total_excl_vat
        console.print(
            f"session {ss.session_id[:8]} ({ss.state}, {ss.status}): {ss.energy_wh:,} Wh"
            + (f", {total} {ss.currency}" if total else "")
            + (f", stopped: {ss.stop_reason}" if ss.stop_reason else "")
        )
    if s.readings:
        table = Table(title="last readings")
        for col in ("device", "quantity", "value", "at"):
            table.add_column(col)
        for r in s.readings:
            table.add_row(
                r.device, r.quantity, f"{r.value} {r.unit}".strip(), when(r.ts, tz, date=False)
            )
        console.print(table)
    for h in s.health:
        console.print(f"health {h.device}: {h.state.value} (failures {h.consecutive_failures})")


@app.command("create")
def create(
    connector: Annotated[int | None, typer.Option(help="connector the report is about")] = None,
    text: Annotated[str, typer.Option(help="what the driver said")] = "",
    category: Annotated[str, typer.Option(help=f"one of {', '.join(CATEGORIES)}")] = "other",
    link: Annotated[
        str | None, typer.Option(help="a QR report link (names station and connector)")
    ] = None,
    lang: Annotated[str, typer.Option(help="language of the report: en or de")] = "",
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Create a ticket (technician, testing): by --connector, or by a QR --link.

    Example: `evedge tickets create --connector 1 --text "cable stuck"`"""
    cfg = load_or_exit(config)
    setup_logging("warning")
    if (connector is None) == (link is None):
        raise fail("give exactly one of --connector N or --link URL", Exit.USAGE)
    lang = lang or (cfg.driver.language if cfg.driver else "en")
    try:
        if link is not None:
            req = report_from_link(cfg, link, text=text, category=category, lang=lang)
        else:
            req = ReportRequest(
                connector=connector, text=text, category=category, source="cli", lang=lang
            )
    except TicketError as e:
        raise fail(str(e), Exit.USAGE) from None
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'report'}: "
            + err["msg"].removeprefix("Value error, ")
            for err in e.errors()
        )
        raise fail(problems, Exit.USAGE) from None
    # Through the service: it announces the ticket (MQTT sends it at once).
    sent = read(cfg, "report_problem", **req.model_dump())
    with _open(cfg, config) as store:
        try:
            if sent is not None:
                via, note = "service", "queued for the cloud"
                ticket = store.get(sent["ticket_id"]).ticket
            else:
                via, note = "store", "written to the store; the MQTT sync sends it when it runs"
                ticket = create_ticket(store, cfg, req)
        except TicketError as e:
            raise fail(str(e), Exit.USAGE) from None
    if json:
        emit_json({**jsonlib.loads(ticket.model_dump_json()), "via": via, "note": note})
        return
    console.print(
        f"ticket [bold]{ticket.id}[/] created for connector {ticket.connector} "
        f"({len(ticket.snapshot.faults)} active faults in the snapshot); {note}"
    )
