"""OCPP 1.6 Reservation profile: ReserveNow and CancelReservation (§5.13, §5.2).

The reservation itself lives in the session engine (`SessionEngine.reserve`, persisted,
expired by the connector's own timer, used by the first session of its token); this mixin
maps the engine's verdict onto the 1.6 status. The StartTransaction of a session that used
a reservation carries its reservationId (agent/ocpp/txjournal.py).

ReserveNow answers by the connector's status: Faulted, Unavailable, Occupied (a session,
a plugged car, or another reservation), else Accepted once the engine holds it; Rejected
for an unknown connector, an expiry that is not a future UTC time, or connectorId 0 when
ReserveConnectorZeroSupported is false. With it true, connectorId 0 holds the first
Available connector for the token (the engine reserves connectors, not the station).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, CancelReservationStatus, ReservationStatus

from agent.ocpp.handlers.base import OcppMixin
from agent.sessions.connector import CommandRefused
from agent.sessions.model import IdToken, Status, mask

log = structlog.get_logger(__name__)

# A connector in one of these cannot be reserved; every other non-Available one is Occupied.
_REFUSED_AS = {
    Status.FAULTED: ReservationStatus.faulted,
    Status.UNAVAILABLE: ReservationStatus.unavailable,
}


def _expiry(text: str) -> datetime | None:
    """The expiryDate as an aware datetime (None: unreadable or without a UTC offset)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


class ReservationMixin(OcppMixin):
    """ReserveNow, CancelReservation."""

    def _reserve_target(self, connector_id: int) -> int | None:
        """The connector a ReserveNow holds (connectorId 0: the first Available one, when
        ReserveConnectorZeroSupported)."""
        engine = self.ctx.sessions
        if engine is None:
            return None
        if connector_id != 0:
            return connector_id if connector_id in engine.connectors else None
        if not self.ctx.parts["config_keys"].get_bool("ReserveConnectorZeroSupported"):
            return None
        free = [c for c in sorted(engine.connectors) if engine.status(c)["status"] == "Available"]
        return free[0] if free else None

    @on(Action.reserve_now)
    async def _on_reserve_now(
        self, connector_id: int, expiry_date: str, id_tag: str, reservation_id: int, **_: Any
    ) -> call_result.ReserveNow:
        status, why = await self._reserve(connector_id, expiry_date, id_tag, reservation_id)
        log.info(
            "ocpp.reserve_now",
            connector=connector_id,
            reservation_id=reservation_id,
            id_tag=mask(id_tag),
            expires=expiry_date[:40],
            status=status.value,
            why=why,
        )
        return call_result.ReserveNow(status=status)

    async def _reserve(
        self, connector_id: int, expiry_date: str, id_tag: str, reservation_id: int
    ) -> tuple[ReservationStatus, str | None]:
        engine = self.ctx.sessions
        target = self._reserve_target(connector_id)
        if engine is None or target is None:
            if connector_id == 0:
                return ReservationStatus.rejected, "connector 0: no free connector or not supported"
            return ReservationStatus.rejected, f"no connector {connector_id}"
        expires = _expiry(expiry_date)
        if expires is None:
            return ReservationStatus.rejected, "expiryDate is not a date-time with a UTC offset"
        try:
            await engine.reserve(target, IdToken(id_tag, "CENTRAL"), expires, reservation_id)
        except CommandRefused as e:
            now = Status(engine.status(target)["status"])
            if now == Status.AVAILABLE:  # refused for its content (expiry in the past)
                return ReservationStatus.rejected, str(e)
            return _REFUSED_AS.get(now, ReservationStatus.occupied), str(e)
        return ReservationStatus.accepted, None

    @on(Action.cancel_reservation)
    async def _on_cancel_reservation(
        self, reservation_id: int, **_: Any
    ) -> call_result.CancelReservation:
        engine = self.ctx.sessions
        held = engine is not None and await engine.cancel_reservation(reservation_id)
        status = CancelReservationStatus.accepted if held else CancelReservationStatus.rejected
        log.info("ocpp.cancel_reservation", reservation_id=reservation_id, status=status.value)
        return call_result.CancelReservation(status=status)
