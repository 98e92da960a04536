"""Turn a driver's report into a stored ticket with its diagnostic snapshot.

    with TicketStore(cfg.store.path) as store:
        ticket = create_ticket(store, cfg, ReportRequest(connector=1, text="...", source="cli"))
    bus.publish(ticket.created_event())   # in the service (DriverService.report_problem)

Synchronous (store reads and one commit): the service calls it from a worker thread.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime

import structlog

from agent.config import StationConfig
from agent.events import FaultRaised, utcnow
from agent.tickets.links import ReportLinkError, parse_report_link
from agent.tickets.model import ReportRequest, Source, Ticket
from agent.tickets.snapshot import take_snapshot
from agent.tickets.store import DuplicateTicketId, TicketStore

log = structlog.get_logger(__name__)

ID_ATTEMPTS = 8


class TicketError(ValueError):
    """The report cannot become a ticket (unknown connector, bad link); says why."""


def new_ticket_id() -> str:
    """A short id a driver can read out on the phone: T- and 6 hex digits."""
    return f"T-{secrets.token_hex(3).upper()}"


def report_from_link(
    cfg: StationConfig, link: str, *, text: str, source: Source = "qr", **fields
) -> ReportRequest:
    """A report for the connector a QR link names (TicketError if the link is not valid
    for this station; pydantic's ValidationError for bad fields)."""
    base = cfg.driver.report_url if cfg.driver else None
    try:
        target = parse_report_link(
            link, base=base, station=cfg.station.id, connectors={c.id for c in cfg.connector}
        )
    except ReportLinkError as e:
        raise TicketError(f"report link: {e}") from None
    if target.lang is not None:
        fields.setdefault("lang", target.lang)
    return ReportRequest(connector=target.connector, text=text, source=source, **fields)


def create_ticket(
    store: TicketStore,
    cfg: StationConfig,
    req: ReportRequest,
    *,
    status: str | None = None,
    live_faults: Iterable[FaultRaised] = (),
    now: datetime | None = None,
) -> Ticket:
    """Snapshot the connector, store the ticket (committed before this returns), return it.
    `status`, `live_faults`: what the caller knows live (see take_snapshot)."""
    ids = sorted(c.id for c in cfg.connector)
    if req.connector not in ids:
        have = ", ".join(map(str, ids)) or "none"
        raise TicketError(f"no connector {req.connector}; station {cfg.station.id} has {have}")
    now = now or utcnow()
    snapshot = take_snapshot(cfg, req.connector, now, status=status, live_faults=live_faults)
    for _ in range(ID_ATTEMPTS):
        ticket = Ticket(
            id=new_ticket_id(),
            station=cfg.station.id,
            connector=req.connector,
            created=now,
            source=req.source,
            category=req.category,
            lang=req.lang,
            text=req.text,
            contact=req.contact,
            snapshot=snapshot,
        )
        try:
            store.insert(ticket)
        except DuplicateTicketId:
            continue
        # The driver's words and contact are personal data: not in the log.
        log.info(
            "ticket.created",
            ticket=ticket.id,
            connector=ticket.connector,
            source=ticket.source,
            category=ticket.category,
            faults=len(snapshot.faults),
            session=None if snapshot.session is None else snapshot.session.session_id[:8],
        )
        return ticket
    raise TicketError(f"no free ticket id after {ID_ATTEMPTS} attempts")  # 16M ids: never
