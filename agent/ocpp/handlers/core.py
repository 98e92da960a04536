"""OCPP 1.6 Core profile: boot, heartbeat, status, availability, configuration, reset, unlock.

Transaction messages (Authorize, Start/Stop, MeterValues, remote start/stop) are in
transactions.py. StatusNotification errorCode / info / vendorId / vendorErrorCode come from
the diagnosis' active faults (`FaultRaised.codes`), MREC codes with vendorId
`https://chargex.inl.gov`; an error with a status other than Faulted is a warning.
UnlockConnector stops the connector's transaction, then writes the EVSE profile's
`connector_unlock` command; a profile without one (no shipped vendor profile has it yet)
answers NotSupported and leaves the session running.
"""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Any

import structlog
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import (
    Action,
    AvailabilityStatus,
    AvailabilityType,
    ChargePointErrorCode,
    ChargePointStatus,
    ClearCacheStatus,
    ConfigurationStatus,
    DataTransferStatus,
    ResetStatus,
    UnlockStatus,
)

from agent.diagnosis.codes import MREC_VENDOR_ID
from agent.events import FaultCleared, FaultRaised, utcnow
from agent.ocpp.context import OcppContext
from agent.ocpp.handlers.base import OcppMixin
from agent.sessions.model import StopReason

log = structlog.get_logger(__name__)

UNLOCK_QUANTITY = "connector_unlock"  # a writable EVSE profile quantity, where one exists
_SEVERITY = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def ocpp_time() -> str:
    """Now, UTC with an explicit offset (strict central systems reject naive times)."""
    return utcnow().isoformat(timespec="seconds").replace("+00:00", "Z")


class ActiveFaults:
    """The diagnosis faults active now, by connector (0: the station), for StatusNotification.

    Long-lived (one per service): loaded from the store's `faults` table at startup, then fed
    from the bus by the service's status watcher.
    """

    def __init__(self) -> None:
        self._faults: dict[str, FaultRaised] = {}

    def load(self, ctx: OcppContext) -> None:
        """Faults still active in the store (blocking; at startup)."""
        with ctx.store.reading() as c:
            try:
                rows = c.execute("SELECT payload FROM faults WHERE cleared_ts IS NULL").fetchall()
            except Exception:  # a store without the faults table (older schema)
                rows = []
        for (payload,) in rows:
            try:
                f = FaultRaised.model_validate_json(payload)
            except ValueError:
                continue
            self._faults[f.fault_id] = f

    def apply(self, ev: FaultRaised | FaultCleared) -> list[int]:
        """Record a raise/clear; return the connectors (0 = station) whose report changes."""
        if isinstance(ev, FaultRaised):
            self._faults[ev.fault_id] = ev
        else:
            self._faults.pop(ev.fault_id, None)
        return list(ev.connectors) or [0]

    def worst(self, connector: int) -> FaultRaised | None:
        """The fault to report for `connector`: Faulted ones first, then by severity."""
        mine = [f for f in self._faults.values() if (list(f.connectors) or [0]).count(connector)]
        if not mine:
            return None
        return min(mine, key=lambda f: (not f.faulted, _SEVERITY.get(f.severity, 9), f.fault_id))


def status_notification(ctx: OcppContext, connector: int) -> call.StatusNotification:
    """The StatusNotification.req describing `connector` (0: the charge point) now."""
    faults: ActiveFaults = ctx.parts["faults"]
    fault = faults.worst(connector)
    status = _status(ctx, connector, fault)
    kw: dict[str, Any] = {}
    error = ChargePointErrorCode.no_error.value
    if fault is not None:
        codes = fault.codes
        error = codes.error_code
        if error not in {e.value for e in ChargePointErrorCode}:
            error = ChargePointErrorCode.other_error.value
        kw["info"] = codes.info[:50] or None
        if codes.mrec:
            kw["vendor_id"], kw["vendor_error_code"] = MREC_VENDOR_ID, codes.mrec
        elif codes.vendor_id:
            kw["vendor_id"] = codes.vendor_id[:255]
            kw["vendor_error_code"] = codes.vendor_error_code[:50] or None
    return call.StatusNotification(
        connector_id=connector, error_code=error, status=status, timestamp=ocpp_time(), **kw
    )


def report_of(req: call.StatusNotification) -> tuple[str | None, ...]:
    """What a StatusNotification reports (all but its timestamp): a change of any part of
    it (status, errorCode, info, vendorId, vendorErrorCode) is worth a new one."""
    return (req.status, req.error_code, req.info, req.vendor_id, req.vendor_error_code)


def _status(ctx: OcppContext, connector: int, fault: FaultRaised | None) -> str:
    if fault is not None and fault.faulted:
        return ChargePointStatus.faulted.value
    eng = ctx.sessions
    if connector == 0:
        # The charge point is Unavailable once every connector is (a connector made
        # Inoperative while charging stays Charging until its session ends: Scheduled).
        unavailable = ChargePointStatus.unavailable.value
        if (
            eng is not None
            and eng.connectors
            and all(eng.status(c)["status"] == unavailable for c in eng.connectors)
        ):
            return unavailable
        return ChargePointStatus.available.value
    if eng is not None and connector in eng.connectors:
        return eng.status(connector)["status"]
    return ChargePointStatus.available.value


def connector_ids(ctx: OcppContext) -> list[int]:
    """Connector 0 (the charge point) and every configured connector."""
    return [0, *sorted(c.id for c in ctx.cfg.connector)]


class CoreMixin(OcppMixin):
    """Core profile handlers and senders."""

    # ------------------------------------------------------------------ senders

    async def send_boot_notification(self, *, triggered: bool = False) -> Any:
        """BootNotification.req; returns the conf (status, interval, currentTime)."""
        return await self.ctx.link.call(boot_request(self.ctx), triggered=triggered)

    async def send_heartbeat(self, *, triggered: bool = False) -> Any:
        """Heartbeat.req; returns the conf."""
        return await self.ctx.link.call(call.Heartbeat(), triggered=triggered)

    async def send_status(self, connector_id: int, *, triggered: bool = False) -> Any:
        """StatusNotification.req for one connector (0: the charge point)."""
        req = status_notification(self.ctx, connector_id)
        self.ctx.parts["status_sent"][connector_id] = report_of(req)
        return await self.ctx.link.call(req, triggered=triggered)

    async def on_online(self) -> None:
        """After every accepted boot: the status of the charge point and every connector."""
        await super().on_online()
        self.ctx.parts["status_sent"].clear()
        for cid in connector_ids(self.ctx):
            await self.send_status(cid)

    # ------------------------------------------------------------------ configuration

    @on(Action.change_configuration)
    async def _on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        status = await self.ctx.parts["config_keys"].change(key, value)
        return call_result.ChangeConfiguration(status=ConfigurationStatus(status.value))

    @on(Action.get_configuration)
    async def _on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        known, unknown = self.ctx.parts["config_keys"].configuration(key)
        return call_result.GetConfiguration(
            configuration_key=[
                {"key": k.key, "readonly": k.readonly, "value": k.value} for k in known
            ]
            or None,
            unknown_key=unknown or None,
        )

    # ------------------------------------------------------------------ availability

    @on(Action.change_availability)
    async def _on_change_availability(self, connector_id: int, type: str, **_: Any) -> Any:
        eng = self.ctx.sessions
        ids = sorted(eng.connectors) if eng is not None else []
        targets = ids if connector_id == 0 else [connector_id]
        if eng is None or not set(targets) <= set(ids):
            log.info("ocpp.change_availability", connector=connector_id, status="Rejected")
            return call_result.ChangeAvailability(status=AvailabilityStatus.rejected)
        available = type == AvailabilityType.operative.value
        busy = [c for c in targets if eng.status(c)["session_id"] is not None]
        for c in targets:
            await eng.set_available(c, available)
        if available:  # the CSMS's word that the connector may work again
            await self._clear_latched(connector_id or None, "ChangeAvailability Operative")
        # A running session finishes first (the engine starts no new one meanwhile).
        status = AvailabilityStatus.scheduled if busy and not available else None
        status = status or AvailabilityStatus.accepted
        log.info("ocpp.change_availability", connector=connector_id, type=type, status=status)
        return call_result.ChangeAvailability(status=status)

    @on(Action.clear_cache)
    async def _on_clear_cache(self, **_: Any) -> Any:
        eng = self.ctx.sessions
        if eng is None:
            return call_result.ClearCache(status=ClearCacheStatus.rejected)

        def clear() -> None:
            with eng.store.tx() as c:
                c.execute("DELETE FROM auth_cache")

        await asyncio.to_thread(clear)
        log.info("ocpp.clear_cache")
        return call_result.ClearCache(status=ClearCacheStatus.accepted)

    @on(Action.data_transfer)
    async def _on_data_transfer(self, vendor_id: str, **kw: Any) -> Any:
        # No vendor extensions yet: every vendorId is unknown to us.
        log.info("ocpp.data_transfer", vendor_id=vendor_id[:255], message_id=kw.get("message_id"))
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    # ------------------------------------------------------------------ reset, unlock

    @on(Action.reset)
    async def _on_reset(self, type: str, **_: Any) -> Any:
        self.ctx.parts["security_events"].record("ResetOrReboot", f"{type} Reset by the CSMS")
        await self._clear_latched(None, f"{type} Reset")
        return call_result.Reset(status=ResetStatus.accepted)

    async def _clear_latched(self, connector: int | None, why: str) -> None:
        """Clear the latched faults only a technician clears (diagnosis rules with
        clear = manual) on `connector` (None: all): the CSMS operator's reset counts."""
        clear = self.ctx.parts.get("clear_latched_faults")
        if clear is not None:
            await clear(connector, "ocpp", f"by the CSMS: {why}")

    @after(Action.reset)
    def _after_reset(self, type: str, **_: Any) -> None:
        # After Reset.conf went out: stop sessions, then reconnect (Soft) or exit (Hard).
        self.ctx.parts["service"].schedule_reset(type)

    @on(Action.unlock_connector)
    async def _on_unlock_connector(self, connector_id: int, **_: Any) -> Any:
        # OCPP 1.6 §5.17: a transaction on the connector is finished first, then the cable
        # lock released; the answer says whether it was. A station that cannot release the
        # lock says NotSupported and leaves a running session alone.
        eng = self.ctx.sessions
        if eng is None or connector_id not in eng.connectors:
            return call_result.UnlockConnector(status=UnlockStatus.not_supported)
        device = eng.connectors[connector_id].evse.device
        if not any(r.quantity == UNLOCK_QUANTITY and r.writable for r in device.profile.registers):
            log.info("ocpp.unlock", connector=connector_id, status="NotSupported",
                     hint=f"the EVSE profile has no writable {UNLOCK_QUANTITY}")  # fmt: skip
            return call_result.UnlockConnector(status=UnlockStatus.not_supported)
        if eng.status(connector_id)["session_id"] is not None:
            await eng.stop_for(connector_id, StopReason.UNLOCK_COMMAND)
        try:
            await device.write(UNLOCK_QUANTITY, True)
        except Exception as e:
            log.warning("ocpp.unlock", connector=connector_id, status="UnlockFailed", error=str(e))
            return call_result.UnlockConnector(status=UnlockStatus.unlock_failed)
        log.info("ocpp.unlock", connector=connector_id, status="Unlocked")
        return call_result.UnlockConnector(status=UnlockStatus.unlocked)


def boot_request(ctx: OcppContext) -> call.BootNotification:
    """BootNotification.req: vendor and model of the station, the agent's version."""
    station = ctx.cfg.station
    meter = next((c.meter for c in ctx.cfg.connector if c.meter), None)
    meter_profile = None
    if meter is not None:
        meter_profile = next((d.profile for d in ctx.cfg.device if d.name == meter), None)
    return call.BootNotification(
        charge_point_vendor="evedge",
        charge_point_model=(station.name or "evedge station")[:20],
        charge_point_serial_number=station.id[:25],
        firmware_version=f"evedge {agent_version()}"[:50],
        meter_type=meter_profile[:25] if meter_profile else None,
    )


def agent_version() -> str:
    """The installed evedge version."""
    try:
        return metadata.version("evedge")
    except metadata.PackageNotFoundError:
        return "0.0.0"
