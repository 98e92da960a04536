"""Operations on the running agent, shared by the local API (agent/api) and MQTT commands.

    ops = Ops(agent)
    report = await ops.status()          # a pydantic model: .model_dump(mode="json")
    await ops.start(1, "DEMO-0042")      # raises OpError(code, message) when refused

Every method is thin: it calls the session engine, the store or a sync service and shapes
the answer as a pydantic model. Refusals and bad input raise `OpError` with a stable
`code` (see `OpError`) that the API and MQTT turn into their replies.

`store_status(cfg)` builds the same `StatusReport` from the store alone, for the CLI when
the service is down (`source == "store"`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, Field, ValidationError

from agent.billing.tariff import TariffError, tariff_from_data
from agent.config import StationConfig
from agent.diagnosis.selftest import Finding, run_selftest
from agent.diagnosis.store import FaultLog
from agent.events import (
    DeviceHealth,
    DriverMessage,
    FaultCleared,
    FaultRaised,
    HealthState,
    Reading,
    TicketCreated,
    utcnow,
)
from agent.kpi.model import KpiReport
from agent.kpi.station import station_kpis
from agent.sessions.engine import CommandRefused
from agent.sessions.model import AuthStatus, IdToken, mask
from agent.sessions.report import ReportError, build_report, day_after, default_range
from agent.sessions.store import SessionStore
from agent.sessions.times import from_us, to_us
from agent.store.db import open_db, open_readonly
from agent.store.readings import select_health, select_latest
from agent.tickets.create import TicketError, create_ticket
from agent.tickets.model import ReportRequest, Ticket
from agent.tickets.store import TicketStore
from drivers.device import WriteVerifyError
from drivers.profile import ProfileError
from drivers.transport import ModbusFailure

if TYPE_CHECKING:
    from agent.runtime import Agent

log = structlog.get_logger(__name__)

SYNC_SERVICES = ("ocpp", "mqtt")  # Agent attributes whose state() goes into the status


class OpError(Exception):
    """An operation refused or failed. Codes (stable, for machines):

    bad_request (invalid arguments), not_found (no such connector/device/session),
    refused (the engine said no, e.g. a connector already charging), unsupported (the
    feature is not configured or not built in), device_error (the device did not answer or
    the read-back differs), internal (anything else; logged).
    """

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


# ---------------------------------------------------------------------- answers


class ConnectorState(BaseModel):
    """A connector at a glance."""

    connector: int
    evse: str | None = None
    meter: str | None = None
    status: str | None = None  # OCPP status (Available, Charging, …); None: unknown
    cp_state: str | None = None
    session_id: str | None = None
    session_started: datetime | None = None
    energy_wh: int | None = None
    cost: str | None = None  # running total (incl. VAT when the tariff gives it), Decimal text
    currency: str | None = None
    power_w: float | None = None
    offered_current_a: float | None = None
    limit_a: float | None = None


class StatusReport(BaseModel):
    """`evedge status`: station, connectors, device health, sync, backlog, active faults."""

    station: str
    name: str = ""
    source: Literal["service", "store"]  # store: the service is down, read from disk
    at: datetime = Field(default_factory=utcnow)
    connectors: list[ConnectorState]
    devices: list[DeviceHealth]
    sync: dict[str, dict[str, Any]] = Field(default_factory=dict)
    backlog: dict[str, int] = Field(default_factory=dict)
    faults: list[FaultRaised]
    tariff: dict[str, str | None] | None = Field(
        default=None, description="the tariff in force: id, source (config|remote), file, reason"
    )
    api: dict[str, Any] | None = Field(
        default=None, description="the local API: connections, refused by the limits, errors"
    )


class FaultList(BaseModel):
    faults: list[FaultRaised]


class DiagnoseReport(BaseModel):
    ok: bool
    findings: list[dict[str, Any]]


class CommandResult(BaseModel):
    """What a start/stop did: the engine's answer and the connector afterwards."""

    connector: int
    result: str
    state: ConnectorState


class LimitResult(BaseModel):
    connector: int
    requested_a: float | None  # None: the local limit was cleared
    offered_a: float  # what the EVSE now offers (all limits applied)


class TariffResult(BaseModel):
    tariff_id: str
    warnings: list[str] = Field(default_factory=list)


class LocalListEntry(BaseModel):
    """One SendLocalList-style entry; no status removes the token (differential update)."""

    id_token: str = Field(min_length=1, max_length=36)
    status: AuthStatus | None = AuthStatus.ACCEPTED
    group: str | None = None
    expiry: datetime | None = None


class LocalListResult(BaseModel):
    version: int
    entries: int
    full: bool


class ReportResult(BaseModel):
    period: str
    by: str | None
    timezone: str
    rows: list[dict[str, Any]]


class DiagnosticsBundle(BaseModel):
    filename: str
    size: int
    sha256: str
    data_b64: str


class DriverScreen(DriverMessage):
    """A connector's driver message in one language (`lang`)."""

    headline: str
    lines: list[str]


class ReadingsResult(BaseModel):
    readings: list[Reading]


class WriteResult(BaseModel):
    device: str
    quantity: str
    written: Any
    read_back: Any


# ---------------------------------------------------------------------- store side


class StoreReader:
    """Read-only queries on the store, on their own connection (the service's writers keep
    theirs). Synchronous and thread-safe: call it from a worker thread.

    `readonly` (the CLI while the service is down): the file is opened read-only, never
    created or migrated, and a store of an older schema is read as far as its tables go.
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._conn = open_readonly(path, need=1) if readonly else open_db(path)
        self._lock = threading.Lock()
        self.tables = {
            r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }

    def latest(self, device: str | None = None) -> list[Reading]:
        with self._lock:
            return select_latest(self._conn, device)

    def health(self) -> list[DeviceHealth]:
        with self._lock:
            return select_health(self._conn)

    def active_faults(self) -> list[FaultRaised]:
        if "faults" not in self.tables:
            return []
        with FaultLog(self.path, readonly=self.readonly) as flog:
            return [r.raised for r in flog.active()]

    def outbox_backlog(self) -> dict[str, dict[str, Any]]:
        """The OCPP and MQTT outboxes as the store holds them (the service may be down or
        crash-looping): undelivered OCPP messages with how many ran out of attempts or are
        parked, undelivered MQTT messages per stream. Only the outboxes the schema has."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            if "ocpp_outbox" in self.tables:
                pending, parked, exhausted = self._conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(parked), 0), COALESCE(SUM(exhausted > 0), 0) "
                    "FROM ocpp_outbox WHERE delivered_ts IS NULL"
                ).fetchone()
                out["ocpp"] = {
                    "backlog": pending,
                    "outbox": {"pending": pending, "parked": parked, "exhausted": exhausted},
                }
            if "mqtt_outbox" in self.tables:
                streams = dict(
                    self._conn.execute(
                        "SELECT stream, COUNT(*) FROM mqtt_outbox GROUP BY stream"
                    ).fetchall()
                )
                out["mqtt"] = {"backlog": sum(streams.values()), "backlog_by_stream": streams}
        return out

    def undelivered_records(self) -> int:
        if "charge_records" not in self.tables:
            return 0
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM charge_records WHERE delivered_ts IS NULL"
            ).fetchone()
        return int(row[0])

    def connector_status(self, connector: int) -> str | None:
        """The last status the session engine logged for the connector."""
        if "session_events" not in self.tables:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT status FROM session_events WHERE connector = ? ORDER BY ts DESC, id DESC "
                "LIMIT 1",
                (connector,),
            ).fetchone()
        return None if row is None else row[0]

    def active_sessions(self) -> dict[int, tuple[str, datetime, int]]:
        """connector -> (session id, start, billed Wh) of the sessions still open."""
        if "sessions" not in self.tables:
            return {}
        with self._lock:
            rows = self._conn.execute(
                "SELECT connector, id, started_ts, billed_wh FROM sessions WHERE state = 'active'"
            ).fetchall()
        return {c: (sid, from_us(ts), wh) for c, sid, ts, wh in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _values(readings: list[Reading]) -> dict[tuple[str, str], Any]:
    return {(r.device, r.quantity): r.value for r in readings}


def _from_readings(cfg: StationConfig, values: dict[tuple[str, str], Any]) -> list[ConnectorState]:
    out = []
    for c in cfg.connector:
        meter = c.meter or c.evse
        out.append(
            ConnectorState(
                connector=c.id,
                evse=c.evse,
                meter=c.meter,
                cp_state=values.get((c.evse or "", "cp_state")),
                power_w=values.get((meter or "", "power_w")),
                offered_current_a=values.get((c.evse or "", "offered_current_a")),
            )
        )
    return out


def store_status(cfg: StationConfig) -> StatusReport:
    """The status from the store alone (the service is down), opened read-only: last
    readings and health, last logged connector status, open sessions, active faults, records
    and OCPP/MQTT messages not delivered. StoreError (StoreMissingError, ...) if unreadable."""
    reader = StoreReader(cfg.store.path, readonly=True)
    try:
        sync = reader.outbox_backlog()
        conns = _from_readings(cfg, _values(reader.latest()))
        active = reader.active_sessions()
        for c in conns:
            c.status = reader.connector_status(c.connector)
            if c.connector in active:
                c.session_id, c.session_started, c.energy_wh = active[c.connector]
        return StatusReport(
            station=cfg.station.id,
            name=cfg.station.name,
            source="store",
            connectors=conns,
            devices=reader.health(),
            sync=sync,
            backlog={"charge_records": reader.undelivered_records()}
            | {name: st["backlog"] for name, st in sync.items()},
            faults=reader.active_faults(),
        )
    finally:
        reader.close()


# ---------------------------------------------------------------------- operations


class Ops:
    """The operations of a running agent; see the module docstring."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.cfg = agent.cfg
        self._reader: StoreReader | None = None

    def _store(self) -> StoreReader:
        # Opened on first use: the agent's store exists (and is migrated) by then.
        if self._reader is None:
            self._reader = StoreReader(self.cfg.store.path)
        return self._reader

    def close(self) -> None:
        """Close the read connection."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _engine(self):
        engine = self.agent.sessions
        if engine is None:
            raise OpError("unsupported", "no session engine: the config has no [billing] section")
        return engine

    def _check_connector(self, connector: int) -> None:
        known = sorted(self._engine().connectors)
        if connector not in known:
            have = ", ".join(map(str, known)) or "none"
            raise OpError("not_found", f"no connector {connector} with sessions; have: {have}")

    async def _connectors(self) -> list[ConnectorState]:
        store = self._store()
        conns = _from_readings(self.cfg, _values(await asyncio.to_thread(store.latest)))
        engine = self.agent.sessions
        if engine is None:
            return conns
        active = await asyncio.to_thread(store.active_sessions)
        for c in conns:
            if c.connector not in engine.connectors:
                continue
            st = engine.status(c.connector)
            c.status, c.cp_state = st["status"], st["cp_state"] or c.cp_state
            c.session_id, c.energy_wh, c.limit_a = (
                st["session_id"],
                st["energy_wh"],
                st.get("limit_a"),
            )
            if c.session_id is not None and c.connector in active:
                c.session_started = active[c.connector][1]
            cost = st["cost"]
            if cost is not None:
                total = cost.get("total_incl_vat") or cost.get("total_excl_vat")
                c.cost, c.currency = total, cost.get("currency")
        return conns

    def _sync(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in SYNC_SERVICES:
            svc = getattr(self.agent, name)
            if svc is None:
                continue
            try:
                out[name] = dict(svc.state())
            except Exception as e:  # a sync service's bug must not break `status`
                log.warning("ops.sync_state_failed", service=name, error=str(e))
                out[name] = {"error": str(e)}
        return out

    async def status(self) -> StatusReport:
        """Station, connectors with session state/energy/cost, device health, sync state
        and backlog, active faults."""
        store = self._store()
        engine = self.agent.sessions
        sync = self._sync()
        backlog = {"charge_records": await asyncio.to_thread(store.undelivered_records)}
        for name, st in sync.items():
            if isinstance(st.get("backlog"), int):
                backlog[name] = st["backlog"]
        return StatusReport(
            station=self.cfg.station.id,
            name=self.cfg.station.name,
            source="service",
            connectors=await self._connectors(),
            devices=[h.event() for h in self.agent.station.health.values()],
            sync=sync,
            backlog=backlog,
            faults=await asyncio.to_thread(store.active_faults),
            tariff=None if engine is None else engine.tariff_choice.as_json(),
            api=None if self.agent.api is None else self.agent.api.state(),
        )

    async def active_faults(self) -> FaultList:
        """Faults raised and not cleared, oldest first."""
        return FaultList(faults=await asyncio.to_thread(self._store().active_faults))

    async def clear_fault(
        self, fault_id: str, note: str, by: str = "", channel: str = "api"
    ) -> FaultCleared:
        """A technician clears an active fault (a latched hardware fault, typically): it is
        recorded with who (`channel`, plus `by` when given), when and the note."""
        diagnosis = self.agent.diagnosis
        if diagnosis is None:
            raise OpError("unsupported", "diagnosis is disabled ([diagnosis] enabled = false)")
        if not note.strip():
            raise OpError("bad_request", "a note is required: what was found or done")
        who = f"{channel}:{by}" if by else channel
        try:
            cleared = await diagnosis.clear_fault(fault_id, who, note.strip())
        except KeyError:
            raise OpError(
                "not_found", f"no active fault {fault_id!r}; `evedge faults` lists them"
            ) from None
        log.info("ops.clear_fault", fault_id=fault_id, rule=cleared.rule, by=who)
        return cleared

    async def diagnose(self, reads: int = 3, gap_s: float = 1.0) -> DiagnoseReport:
        """The self-test (agent/diagnosis/selftest.py) on the TCP devices; serial lines
        belong to the service's pollers (one master per line), so serial devices are
        judged by their live health instead."""
        if not 2 <= reads <= 20 or not 0 <= gap_s <= 30:
            raise OpError("bad_request", "reads must be 2..20 and gap_s 0..30")
        kinds = {b.name: b.kind for b in self.cfg.bus}
        tcp = [d for d in self.cfg.device if kinds[d.bus] == "tcp"]
        cfg = self.cfg.model_copy(update={"device": tcp})
        findings = await run_selftest(cfg, reads=reads, gap_s=gap_s)
        for d in self.cfg.device:
            if kinds[d.bus] != "tcp":
                h = self.agent.station.health[d.name].event()
                ok = h.state == HealthState.OK
                msg = f"polled by the service: {h.state.value}" + (
                    "" if ok or not h.last_error else f" ({h.last_error})"
                )
                findings.append(Finding("bus_scan", d.name, ok, msg))
        return DiagnoseReport(
            ok=all(f.ok for f in findings), findings=[f.as_json() for f in findings]
        )

    async def _state(self, connector: int) -> ConnectorState:
        return next(c for c in await self._connectors() if c.connector == connector)

    async def start(self, connector: int, id_token: str | None = None) -> CommandResult:
        """A technician's start (the engine's cli_start), with an optional id token."""
        self._check_connector(connector)
        token = None if id_token is None else IdToken(id_token, "LOCAL")
        try:
            result = await self._engine().cli_start(connector, token)
        except CommandRefused as e:
            raise OpError("refused", str(e)) from None
        log.info("ops.start", connector=connector, token=mask(id_token), result=result)
        return CommandResult(connector=connector, result=result, state=await self._state(connector))

    async def stop(self, connector: int) -> CommandResult:
        """Stop the connector's session as a technician (by="cli")."""
        self._check_connector(connector)
        try:
            result = await self._engine().stop(connector, by="cli")
        except CommandRefused as e:
            raise OpError("refused", str(e)) from None
        log.info("ops.stop", connector=connector, result=result)
        return CommandResult(connector=connector, result=result, state=await self._state(connector))

    async def limit(self, connector: int, amps: float | None) -> LimitResult:
        """Set (or with None clear) the local current limit of a connector."""
        self._check_connector(connector)
        engine = self._engine()
        if amps is not None and amps < 0:
            raise OpError("bad_request", f"a current limit cannot be negative, got {amps} A")
        try:
            offered = await engine.set_limit(connector, "local", amps)
        except CommandRefused as e:
            raise OpError("refused", str(e)) from None
        except ValueError as e:
            raise OpError("bad_request", str(e)) from None
        log.info("ops.limit", connector=connector, amps=amps, offered=offered)
        return LimitResult(connector=connector, requested_a=amps, offered_a=offered)

    async def set_tariff(self, document: dict[str, Any]) -> TariffResult:
        """Validate an OCPI tariff document and make it the engine's tariff."""
        engine = self._engine()
        try:
            tariff = tariff_from_data(document, "tariff")
        except TariffError as e:
            raise OpError("bad_request", str(e)) from None
        try:
            await engine.set_tariff(tariff)
        except (CommandRefused, ValueError) as e:
            raise OpError("refused", str(e)) from None
        log.info("ops.set_tariff", tariff=tariff.id)
        return TariffResult(
            tariff_id=tariff.id, warnings=[f"{p}: {m}" for p, m in tariff.warnings()]
        )

    async def update_local_list(
        self, entries: list[dict[str, Any]] | list[LocalListEntry], full: bool, version: int
    ) -> LocalListResult:
        """A full or differential update of the local authorization list, versioned."""
        engine = self._engine()
        try:
            parsed = [LocalListEntry.model_validate(e) for e in entries]
        except ValidationError as e:
            raise OpError("bad_request", f"local list entry: {e.errors()[0]['msg']}") from None
        if version < 1:
            raise OpError("bad_request", f"the list version must be positive, got {version}")
        items = [
            (e.id_token, e.status, e.group, None if e.expiry is None else to_us(e.expiry))
            for e in parsed
        ]
        await asyncio.to_thread(
            engine.authorizer.update_list, items, full, version, to_us(utcnow())
        )
        log.info("ops.local_list", entries=len(items), full=full, version=version)
        return LocalListResult(version=version, entries=len(items), full=full)

    async def report(
        self,
        period: str = "day",
        by: str | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> ReportResult:
        """A usage report (agent/sessions/report.py); `end` is inclusive."""
        if period not in ("day", "week", "month") or by not in (None, "connector", "token"):
            raise OpError("bad_request", "period must be day|week|month and by connector|token")
        tz = self.cfg.billing.timezone if self.cfg.billing else "UTC"
        now = datetime.now(ZoneInfo(tz))
        first, stop = default_range(period, now.date())  # type: ignore[arg-type]
        first = start or first
        engine = self.agent.sessions
        store = engine.store if engine is not None else SessionStore(self.cfg.store.path)
        try:
            stop = stop if end is None else day_after(end)
            rows = await asyncio.to_thread(
                build_report,
                store,
                period=period,  # type: ignore[arg-type]
                start=first,
                end=stop,
                tz=tz,
                connectors=[c.id for c in self.cfg.connector],
                by=by,  # type: ignore[arg-type]
                now=now,
            )
        except ReportError as e:
            raise OpError("bad_request", str(e)) from None
        finally:
            if engine is None:
                store.close()
        return ReportResult(period=period, by=by, timezone=tz, rows=[r.to_json() for r in rows])

    async def kpi(self, months: int | None = None) -> KpiReport:
        """Availability KPIs (agent/kpi) of the last `months` months ([kpi] months)."""
        if months is not None and not 1 <= months <= 36:
            raise OpError("bad_request", f"months must be 1..36, got {months}")
        return await asyncio.to_thread(
            station_kpis, self.cfg, self.agent.store.reading, months=months
        )

    async def diagnostics_bundle(self) -> DiagnosticsBundle:
        """The support bundle (agent/support/bundle.py), base64 in the answer."""
        # Imported here: the bundle builder brings the CLI's modules (typer, rich), which the
        # daemon needs only when a technician asks for a bundle.
        from agent.support.bundle import build_bundle

        data: bytes = await asyncio.to_thread(build_bundle, self.cfg, self.agent.store)
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        return DiagnosticsBundle(
            filename=f"evedge-{self.cfg.station.id}-{stamp}.tar.gz",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            data_b64=base64.b64encode(data).decode("ascii"),
        )

    async def report_problem(
        self,
        connector: int,
        text: str = "",
        category: str = "other",
        source: str = "api",
        lang: str | None = None,
        contact: str | None = None,
    ) -> TicketCreated:
        """A driver's problem report becomes a ticket with its diagnostic snapshot, stored
        and announced (TicketCreated: MQTT sends it at once). Through the driver service
        when [driver] is configured (the display thanks the driver), else directly."""
        driver = self.agent.driver
        if lang is None:
            lang = self.cfg.driver.language if self.cfg.driver else "en"
        try:
            req = ReportRequest(connector=connector, text=text, category=category,
                                source=source, lang=lang, contact=contact)  # fmt: skip
        except ValidationError as e:
            raise OpError("bad_request", f"report: {e.errors()[0]['msg']}") from None
        try:
            if driver is not None:
                ticket = await driver.report_problem(req)
            else:
                ticket = await asyncio.to_thread(self._store_ticket, req)
                self.agent.bus.publish(ticket.created_event())
        except TicketError as e:
            raise OpError("not_found", str(e)) from None
        return ticket.created_event()

    def _store_ticket(self, req: ReportRequest) -> Ticket:
        engine = self.agent.sessions
        status = None
        if engine is not None and req.connector in engine.connectors:
            status = engine.status(req.connector)["status"]
        with TicketStore(self.cfg.store.path) as store:
            return create_ticket(store, self.cfg, req, status=status)

    async def driver_screen(self, connector: int, lang: str | None = None) -> DriverScreen:
        """The connector's driver message in the driver's language (default: the
        station's), for a display controller that draws its own screen."""
        driver = self.agent.driver
        if driver is None:
            raise OpError("unsupported", "no driver display: the config has no [driver] section")
        try:
            return DriverScreen.model_validate(driver.screen(connector, lang))
        except KeyError as e:
            raise OpError("not_found", str(e.args[0])) from None
        except ValueError as e:
            raise OpError("bad_request", str(e)) from None

    async def readings(self, device: str | None = None) -> ReadingsResult:
        """The newest reading of every quantity (of one device, or all)."""
        if device is not None and device not in self.agent.station.devices:
            have = ", ".join(sorted(self.agent.station.devices)) or "none"
            raise OpError("not_found", f"no device {device!r}; have: {have}")
        return ReadingsResult(readings=await asyncio.to_thread(self._store().latest, device))

    async def write(self, device: str, quantity: str, value: Any) -> WriteResult:
        """Write a quantity to a polled device through its own link, read back and compared
        (the poller owns the link; writes go between its requests)."""
        dev = self.agent.station.devices.get(device)
        if dev is None:
            have = ", ".join(sorted(self.agent.station.devices)) or "none"
            raise OpError("not_found", f"no device {device!r}; have: {have}")
        try:
            dev.profile.writable(quantity)
        except ProfileError as e:
            raise OpError("bad_request", str(e)) from None
        try:
            got = await dev.write(quantity, value)
        except WriteVerifyError as e:
            raise OpError("device_error", str(e)) from None
        except ModbusFailure as e:
            raise OpError("device_error", f"{device}: {e}") from None
        except (ValueError, TypeError, OverflowError) as e:
            raise OpError("bad_request", f"{quantity}={value!r}: {e}") from None
        log.info("ops.write", device=device, quantity=quantity, value=value, read_back=got)
        return WriteResult(device=device, quantity=quantity, written=value, read_back=got)


__all__ = [
    "CommandResult",
    "ConnectorState",
    "DiagnoseReport",
    "DiagnosticsBundle",
    "DriverScreen",
    "FaultList",
    "LimitResult",
    "LocalListEntry",
    "LocalListResult",
    "OpError",
    "Ops",
    "ReadingsResult",
    "ReportResult",
    "StatusReport",
    "TariffResult",
    "WriteResult",
    "store_status",
]
