"""The driver service: keeps each connector's display message current.

Subscribes to SessionEvent, FaultRaised and FaultCleared; after each one it recomposes the
affected connectors (all of them for a fault: "use connector 2" depends on connector 2) and,
when a message changed, publishes a DriverMessage on the bus and shows it on every attached
display. Every `refresh_s` it recomposes anyway, so a time-of-day price change reaches an
idle display. Drivers' problem reports become tickets through `report_problem`.

Interfaces for the local API and the MQTT sync:
    service.current(1)                   -> DriverMessage (every language)
    service.screen(1, lang="de")         -> JSON-ready dict in one language
    await service.report_problem(req)    -> Ticket (stored, TicketCreated published)
    service.add_display(display)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from agent.billing.tariff import Tariff
from agent.bus import EventBus
from agent.config import StationConfig
from agent.diagnosis.store import FaultLog
from agent.driver.catalog import Catalog, default_catalog
from agent.driver.display import Display
from agent.driver.pricing_text import tariff_parts
from agent.driver.screen import Part
from agent.driver.select import ConnectorView, compose, text_in, to_message
from agent.events import DriverMessage, FaultCleared, FaultRaised, SessionEvent, utcnow
from agent.sessions.engine import SessionEngine
from agent.sessions.model import Status
from agent.tickets.create import TicketError, create_ticket
from agent.tickets.links import report_link
from agent.tickets.model import ReportRequest, Ticket
from agent.tickets.store import TicketStore

log = structlog.get_logger(__name__)


class DriverService:
    """See the module docstring. Needs the config's [driver] section."""

    def __init__(
        self,
        cfg: StationConfig,
        bus: EventBus,
        sessions: SessionEngine | None = None,
        *,
        catalog: Catalog | None = None,
        displays: list[Display] | None = None,
        tariff: Callable[[], Tariff | None] | None = None,
    ):
        if cfg.driver is None:
            raise ValueError("the driver service needs a [driver] section in the config")
        self.cfg = cfg
        self.dcfg = cfg.driver
        self.bus = bus
        self.sessions = sessions
        self.catalog = catalog or default_catalog()
        self.catalog.check_lang(self.dcfg.language)
        self.displays: list[Display] = list(displays or [])
        self._tariff = tariff or (lambda: None if sessions is None else sessions.tariff)
        self.views = {c.id: ConnectorView(c.id) for c in cfg.connector}
        self.messages: dict[int, DriverMessage] = {}
        self.tickets: TicketStore | None = None
        # Subscribe now: nothing published between construction and run() is missed.
        self._sub = bus.subscribe(SessionEvent, FaultRaised, FaultCleared)

    def add_display(self, display: Display) -> None:
        """Attach a display; it gets every connector's current message right away."""
        self.displays.append(display)
        for cid, msg in sorted(self.messages.items()):
            self._show(display, cid, msg)

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Seed from the session engine and the stored faults, then follow the bus."""
        try:
            self._seed_statuses()
            await asyncio.to_thread(self._seed_faults)
            self.refresh()
            log.info(
                "driver.start",
                connectors=sorted(self.views),
                language=self.dcfg.language,
                displays=len(self.displays),
            )
            while True:
                try:
                    # asyncio.timeout: Python 3.11's wait_for may lose stop()'s cancel.
                    async with asyncio.timeout(self.dcfg.refresh_s):
                        ev = await self._sub.get()
                except TimeoutError:
                    self.refresh()
                    continue
                self.refresh(self._apply(ev))
        finally:
            self._sub.close()
            if self.tickets is not None:
                await asyncio.to_thread(self.tickets.close)
                self.tickets = None

    def _seed_statuses(self) -> None:
        for cid, view in self.views.items():
            conn = None if self.sessions is None else self.sessions.connectors.get(cid)
            # A connector without a session engine cannot charge anyone.
            view.status = Status.UNAVAILABLE.value if conn is None else conn.status.value

    def _seed_faults(self) -> None:
        # Diagnosis does not raise a stored active fault again after a restart.
        with FaultLog(self.cfg.store.path) as faults:
            for rec in faults.active():
                for cid in rec.raised.connectors:
                    if cid in self.views:
                        self.views[cid].on_fault_raised(rec.raised)

    def _apply(self, ev: Any) -> list[int] | None:
        """Feed one event to the views; which connectors to recompose (None: all)."""
        if isinstance(ev, SessionEvent):
            view = self.views.get(ev.connector)
            if view is None:
                return []
            was_usable = view.usable
            view.on_session(ev)
            # Another connector's "use connector N" advice depends on this one.
            return None if view.usable != was_usable else [ev.connector]
        if isinstance(ev, FaultRaised):
            for cid in ev.connectors:
                if cid in self.views:
                    self.views[cid].on_fault_raised(ev)
        elif isinstance(ev, FaultCleared):
            for view in self.views.values():
                view.on_fault_cleared(ev.fault_id)
        return None

    # ------------------------------------------------------------------ composing

    def _prices(self) -> list[Part]:
        billing = self.cfg.billing
        if billing is None:
            return []
        try:
            return tariff_parts(
                self._tariff(), utcnow(), billing.timezone, free_vend=billing.free_vend
            )
        except ValueError as e:  # a tariff not in force now: show no price rather than crash
            log.warning("driver.no_price", error=str(e))
            return []

    def compose(self, connector: int) -> DriverMessage:
        """The message connector `connector` should show now."""
        view = self.views[connector]
        others = [c for c, v in sorted(self.views.items()) if c != connector and v.usable]
        screen = compose(view, self.catalog, self.dcfg, others=others, prices=self._prices())
        link = None
        if self.dcfg.report_url:
            link = report_link(self.dcfg.report_url, self.cfg.station.id, connector)
        return to_message(screen, view, self.catalog, self.dcfg, report_url=link)

    def refresh(self, connectors: list[int] | None = None) -> None:
        """Recompose (all) connectors; publish and show each message that changed."""
        for cid in sorted(self.views) if connectors is None else connectors:
            msg = self.compose(cid)
            old = self.messages.get(cid)
            if old is not None and old.model_dump(exclude={"ts"}) == msg.model_dump(exclude={"ts"}):
                continue
            self.messages[cid] = msg
            log.debug("driver.message", connector=cid, state=msg.state, level=msg.level)
            self.bus.publish(msg)
            for d in self.displays:
                self._show(d, cid, msg)

    @staticmethod
    def _show(display: Display, connector: int, msg: DriverMessage) -> None:
        try:
            display.show(connector, msg)
        except Exception:
            # A broken display must not stop the others or the service.
            log.exception("driver.display_failed", display=type(display).__name__)

    # ------------------------------------------------------------------ queries, reports

    def current(self, connector: int) -> DriverMessage:
        """The connector's current message (composed now if none was published yet)."""
        if connector not in self.views:
            raise KeyError(f"no connector {connector}; connectors: {sorted(self.views)}")
        return self.messages.get(connector) or self.compose(connector)

    def screen(self, connector: int, lang: str | None = None) -> dict[str, Any]:
        """The connector's message in one language (default: the station's), JSON-ready."""
        msg = self.current(connector)
        lang = lang or self.dcfg.language
        headline, lines = text_in(msg, lang)
        data = msg.model_dump(mode="json", exclude={"headline", "lines"})
        return {**data, "lang": lang, "headline": headline, "lines": lines}

    async def report_problem(self, req: ReportRequest) -> Ticket:
        """A driver's report (display, QR page via the cloud, API): store it as a ticket
        with its snapshot, publish TicketCreated, thank the driver on the display."""
        view = self.views.get(req.connector)
        if view is None:
            raise TicketError(f"no connector {req.connector}; connectors: {sorted(self.views)}")
        if self.tickets is None:
            self.tickets = await asyncio.to_thread(TicketStore, self.cfg.store.path)
        ticket = await asyncio.to_thread(
            create_ticket,
            self.tickets,
            self.cfg,
            req,
            status=view.status,
            live_faults=list(view.faults.values()),
        )
        self.bus.publish(ticket.created_event())
        view.ticket = ticket.id
        self.refresh([req.connector])
        return ticket
