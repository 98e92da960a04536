"""One connector's session engine: status, authorization, EVSE control, metering, closing.

Everything that happens to a connector runs in its own task, one input at a time (a CP
reading, a register reading, a command, a fault), so a stop can never race a start. Readings
are also kept as "latest" values by the dispatcher, outside the queue, so a stop waiting for
a fresh meter reading gets it while its queue is paused.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import ConnectorConfig
from agent.events import SessionEvent, utcnow
from agent.sessions.closing import RECORD_RETRY_S, ClosingMixin
from agent.sessions.evse import EvseControl, cp_from_vendor
from agent.sessions.model import AuthMethod, IdToken, Status, StopReason
from agent.sessions.payment import PaymentError, preauth_amount
from agent.sessions.recovery import RecoveryMixin
from agent.sessions.session import Live, MeteringMixin, Pending, Reservation
from agent.sessions.states import CHARGING_CP, FAULT_CP, MIN_CURRENT_A, PLUGGED, derive_status
from agent.sessions.times import US, to_us
from agent.store.space import STORE_FULL, disk_full_tolerated
from drivers.transport import ModbusFailure

if TYPE_CHECKING:
    from agent.sessions.engine import SessionEngine

log = structlog.get_logger(__name__)

TICK_S = 0.5
EVSE_RETRY_S = 2.0
WRITE_ATTEMPTS = 3
ANNOTATE_WINDOW_S = 60.0  # a second cause this soon after an emergency stop is the same incident
PERSISTED_LIMITS = frozenset({"local"})  # limit sources that survive a restart
_SOURCE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class CommandRefused(Exception):
    """A command the connector cannot carry out now; the message says why."""


class Connector(MeteringMixin, ClosingMixin, RecoveryMixin):
    """The session engine of one connector; see the module docstring."""

    def __init__(self, engine: SessionEngine, cfg: ConnectorConfig, evse: EvseControl):
        self.eng = engine
        self.cfg = cfg
        self.id = cfg.id
        self.evse = evse
        self.meter_device = cfg.meter or cfg.evse or ""
        self.log = log.bind(connector=cfg.id)
        self.status = Status.AVAILABLE
        self.session: Live | None = None
        self.pending: Pending | None = None
        self.reservation: Reservation | None = None
        self.limits: dict[str, float] = {}  # current limit per source (ocpp, local, derate)
        self.cable_a: float | None = None  # the plugged cable's capacity (PP), when known
        self.applied_a: float | None = None  # what the EVSE was last told to offer
        self.available = True
        self.finishing = False
        self.faults: dict[str, str] = {}  # diagnosis fault id -> what it is
        self.known_faults: dict[str, str] = {}  # the same, noted by the dispatcher at once
        self.last_stop: tuple[str, int] | None = None  # (session id, ended µs) of the last stop
        self.cp: str | None = None
        self.vendor: dict[str, str | None] = {"charger_state": None, "cable_state": None}
        self.energy: tuple[int, int] | None = None  # (register Wh, read at µs)
        self.energy_event = asyncio.Event()
        self.power_w: float | None = None
        self.measurands: dict[str, Any] = {}
        self.meter_serial: str | None = None
        self.needs_disable = True  # until the EVSE confirmed it is off (also after a restart)
        self._next_disable = 0.0
        # A stopped session's charge record a full disk refused, and what finishes the stop
        # once it is written (closing.py retry_record); no new session meanwhile.
        self.unwritten: tuple[Any, Callable[[Any], Awaitable[None]]] | None = None
        self._next_record_try = 0.0
        self.queue: asyncio.Queue[tuple] = asyncio.Queue()
        self.max_power_w = (
            cfg.max_current_a * cfg.phases * engine.cfg.sessions.nominal_voltage_v * 1.1
        )

    # ------------------------------------------------------------------ inputs

    def on_reading(self, device: str, quantity: str, value: Any, at: datetime) -> None:
        """Dispatcher side: keep the latest values; queue what the state machine needs."""
        if device == self.evse.name:
            if quantity == "cable_max_current_a" and isinstance(value, int | float):
                self.cable_a = float(value) if value > 0 else None
            if quantity == "cp_state" and isinstance(value, str):
                self._set_cp(value, at)
            elif quantity in self.vendor and not self.evse.reads_cp:
                self.vendor[quantity] = value if isinstance(value, str) else None
                cp = cp_from_vendor(self.vendor["charger_state"], self.vendor["cable_state"])
                if cp is not None:
                    self._set_cp(cp, at)
        if device != self.meter_device:
            return
        if quantity == "energy_import_wh":
            if type(value) is int:
                self.energy = (value, to_us(at))
                self.energy_event.set()
                self.queue.put_nowait(("energy", value, to_us(at)))
        elif quantity == "serial_number" and value is not None:
            self.meter_serial = str(value)
        elif quantity == "power_w" and isinstance(value, int | float):
            self.power_w = float(value)
        if quantity in self.eng.measurands and value is not None:
            self.measurands[quantity] = value

    def _set_cp(self, cp: str, at: datetime) -> None:
        if cp != self.cp:
            self.cp = cp
            self.queue.put_nowait(("cp", cp, to_us(at)))

    def on_meter_offline(self, at: datetime) -> None:
        """The meter's poller gave up on it: a metering gap starts (if a session runs)."""
        self.queue.put_nowait(("meter_offline", to_us(at)))

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run a command inside this connector's task and return its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(("cmd", fn, fut))
        return await fut

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Recover what a previous run left, then handle inputs until cancelled."""
        await self.recover()
        getter: asyncio.Future | None = None
        try:
            while True:
                # asyncio.wait, not wait_for: a timeout leaves the getter waiting (no input
                # is lost) and a cancel is never swallowed (wait_for on 3.11 can hang here).
                if getter is None:
                    getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=TICK_S)
                item = getter.result() if done else None
                if done:
                    getter = None
                try:
                    # A full disk is logged once a minute by the store, not per sample.
                    with disk_full_tolerated(f"sessions connector {self.id}"):
                        if item is not None:
                            await self.handle(item)
                        await self.tick()
                except Exception:
                    # One bad input must not stop metering on this connector.
                    self.log.exception("session.engine_error", item=str(item)[:200])
        finally:
            if getter is not None:
                getter.cancel()

    async def handle(self, item: tuple) -> None:
        """Act on one queued input."""
        kind = item[0]
        if kind == "cmd":
            _, fn, fut = item
            try:
                result = await fn()
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
            else:
                if not fut.done():
                    fut.set_result(result)
        elif kind == "cp":
            await self.on_cp(item[1])
        elif kind == "energy":
            await self.on_energy(item[1], item[2])
        elif kind == "meter_offline" and self.session is not None:
            self.session.tracker.comm_lost(item[1])
            self.log.warning("session.meter_offline", session=self.session.id[:8])

    def note_fault(self, fault_id: str, raised: bool, text: str) -> None:
        """Dispatcher side: know a connector fault at once, before the queue acts on it, so a
        stop already under way for the same incident (pilot E/F) names it too."""
        if raised:
            self.known_faults[fault_id] = text
        else:
            self.known_faults.pop(fault_id, None)

    def emergency_cause(self) -> tuple[str, str]:
        """(by, detail) of an emergency stop, the same whichever of pilot E/F and a faulted
        FaultRaised acted first: the faults known at the close (root causes, sorted by id),
        then the pilot state. Decided when the record is written, not when the stop began."""
        parts = [f"{fid}: {text}" for fid, text in sorted(self.known_faults.items())]
        if self.cp in FAULT_CP:
            parts.append(f"control pilot state {self.cp}")
        return ("fault" if self.known_faults else "evse"), "; ".join(parts)

    async def on_cp(self, cp: str) -> None:
        """The control pilot changed: stop on unplug or fault, start when authorized."""
        s = self.session
        if cp in FAULT_CP and s is not None:
            await self.stop(StopReason.EMERGENCY_STOP, "evse", f"control pilot state {cp}")
        elif cp in FAULT_CP and self.last_stop is not None:
            await self._annotate(f"control pilot state {cp}")
        elif cp not in PLUGGED and cp not in FAULT_CP:
            self.finishing = False
            if s is not None:
                await self.stop(StopReason.EV_DISCONNECTED, "ev")
        elif s is None and cp in PLUGGED and not self.finishing:
            if cp in CHARGING_CP:
                self.needs_disable = True  # drawing without a session: switch it off
            await self._maybe_start()
        if self.session is not None:
            s = self.session
            if cp in CHARGING_CP and not s.charging:
                s.charging, s.charging_end_us = True, None
            elif cp not in CHARGING_CP and s.charging:
                s.charging, s.charging_end_us = False, to_us(utcnow())
        await self.settle("cp", f"control pilot {cp}")

    async def _maybe_start(self) -> None:
        if self.faults or not self.available or self.cp not in PLUGGED:
            return
        if self.unwritten is not None:
            self.log.warning("session.not_started", why=STORE_FULL)
            return
        if self.pending is not None:
            p, self.pending = self.pending, None
            await self.start(p.token, p.method, p.group, p.payment)
        elif self.eng.billing.free_vend:
            token = IdToken(self.eng.billing.free_vend_token, "NONE")
            await self.start(token, AuthMethod.FREE_VEND, None, None)

    async def settle(self, kind: str = "status", detail: str = "") -> None:
        """Derive the status from the facts; persist and publish it if it changed."""
        s = self.session
        new = derive_status(
            self.cp,
            session=s is not None,
            offering=bool(s and s.offering),
            faulted=bool(self.faults),
            available=self.available,
            reserved=self.reservation is not None,
            finishing=self.finishing,
        )
        if new == self.status:
            return
        old, self.status = self.status, new
        now = to_us(utcnow())
        updates = {} if s is None else {"charging_end_ts": s.charging_end_us}
        await asyncio.to_thread(
            self.eng.ledger.transition,
            self.id,
            None if s is None else s.id,
            new.value,
            kind,
            now,
            detail,
            **updates,
        )
        self.log.info("connector.status", status=new.value, was=old.value, why=detail or kind)
        self.publish("status", detail=detail)

    def publish(self, kind: str, **fields: Any) -> None:
        """Put a SessionEvent for this connector on the bus."""
        s = self.session
        base: dict[str, Any] = {"connector": self.id, "status": self.status.value, "kind": kind}
        if s is not None:
            base.update(
                session_id=s.id,
                id_tag=s.token.masked,
                method=s.row.auth_method,
                energy_wh=s.tracker.billed_wh,
                power_w=self.power_w,
            )
            if s.cost is not None:
                base.update(
                    cost_excl_vat=s.cost.total_excl_vat,
                    cost_incl_vat=s.cost.total_incl_vat,
                    currency=s.cost.currency,
                )
        base.update(fields)
        self.eng.bus.publish(SessionEvent(**base))

    # ------------------------------------------------------------------ commands

    async def authorize(self, token: IdToken) -> str:
        """A card at the reader: start (now, or when plugged in) or stop the session."""
        now = to_us(utcnow())
        s = self.session
        if s is not None:
            result = await self.eng.authorizer.authorize(token, now)
            if s.token.id == token.id or (s.group is not None and s.group == result.group):
                await self.stop(StopReason.LOCAL, "card")
                return "stopped"
            raise CommandRefused("another session is running on this connector")
        self._check_free(token)
        result = await self.eng.authorizer.authorize(token, now)
        if not result.accepted:
            self.publish("rejected", id_tag=token.masked, reason=result.status.value)
            raise CommandRefused(f"token {token.masked}: {result.status.value}")
        return await self._authorized(token, result.method, result.group)

    async def remote_start(self, token: IdToken, method: AuthMethod = AuthMethod.REMOTE) -> str:
        """A start the CSMS (or a technician) authorized already."""
        if self.session is not None:
            raise CommandRefused("a session is already running on this connector")
        self._check_free(token)
        return await self._authorized(token, method, None)

    async def pay(self) -> str:
        """The driver pays at the terminal: pre-authorize, then start like an accepted card."""
        eng = self.eng
        if eng.terminal is None or not eng.billing.payment.enabled or eng.tariff is None:
            raise CommandRefused("no payment terminal on this station")
        if self.session is not None:
            raise CommandRefused("a session is already running on this connector")
        self._check_free(None)
        cfg = eng.billing.payment
        amount = preauth_amount(
            eng.tariff, utcnow(), cfg.preauth_energy_wh, cfg.preauth_cap, tz=eng.billing.timezone
        )
        ref = f"PAY-{uuid.uuid4().hex[:12].upper()}"
        # On disk before the terminal is asked: a hold granted while we crash is voided later.
        await asyncio.to_thread(
            eng.ledger.payment, ref, self.id, amount, eng.tariff.currency, to_us(utcnow())
        )
        try:
            auth = await asyncio.wait_for(
                eng.terminal.preauthorize(amount, eng.tariff.currency, ref), cfg.timeout_s
            )
        except (TimeoutError, PaymentError) as e:
            why = "timeout" if isinstance(e, TimeoutError) else str(e)
            self.log.warning("payment.refused", ref=ref, amount=str(amount), why=why)
            if isinstance(e, TimeoutError):
                await self._void(ref, "pre-authorization timed out")
            else:
                await asyncio.to_thread(
                    eng.ledger.payment_done, ref, "declined", to_us(utcnow()), why
                )
            self.publish("rejected", reason="PaymentDeclined", detail=why)
            raise CommandRefused(f"payment not authorized: {why}") from None
        await asyncio.to_thread(
            eng.ledger.payment_done, ref, "authorized", to_us(utcnow()), f"{auth.amount} held"
        )
        token = IdToken(ref, "CARD_TXN_NR")
        return await self._authorized(token, AuthMethod.PAYMENT, None, auth)

    def _check_free(self, token: IdToken | None) -> None:
        if self.faults:  # a latched fault holds the connector until it clears
            causes = "; ".join(f"{fid}: {text}" for fid, text in sorted(self.faults.items()))
            raise CommandRefused(f"connector is faulted ({causes}); see `evedge faults`")
        if self.cp in FAULT_CP:
            raise CommandRefused(f"connector is faulted (control pilot state {self.cp})")
        if self.unwritten is not None:
            raise CommandRefused(STORE_FULL)
        if not self.available:
            raise CommandRefused("connector is unavailable")
        held = self.reservation
        if held is not None and (token is None or token.id != held.token.id):
            raise CommandRefused("connector is reserved for another token")

    async def _authorized(
        self, token: IdToken, method: AuthMethod, group: str | None, payment=None
    ) -> str:
        timeout = int(self.eng.cfg.sessions.connection_timeout_s * US)
        if self.pending is not None and self.pending.payment is not None:
            await self._void(self.pending.payment.ref, "replaced by a newer authorization")
        self.pending = Pending(token, method, group, to_us(utcnow()) + timeout, payment)
        self.publish("authorized", id_tag=token.masked, method=method.value)
        if self.cp in PLUGGED:
            self.finishing = False  # a new authorization may charge the car still plugged in
            await self._maybe_start()
            return "started" if self.session is not None else "refused"
        return "waiting for the plug"

    async def stop_command(self, by: str) -> str:
        """Stop by the CSMS ("remote") or a technician ("cli")."""
        if self.session is None:
            raise CommandRefused("no session on this connector")
        await self.stop(StopReason.REMOTE if by == "remote" else StopReason.LOCAL, by)
        return "stopped"

    async def set_available(self, available: bool) -> str:
        """ChangeAvailability: a running session finishes first; no new one starts."""
        self.available = available
        await asyncio.to_thread(self.eng.ledger.set_available, self.id, available, to_us(utcnow()))
        await self.settle("availability")
        return self.status.value

    async def reserve(self, token: IdToken, expires: datetime, reservation_id: int) -> str:
        """Hold the connector for one token until `expires` (persisted; a new reservation
        with the same id replaces the old one, as OCPP ReserveNow says)."""
        now = to_us(utcnow())
        if expires.tzinfo is None or to_us(expires) <= now:
            raise CommandRefused(f"reservation expiry {expires.isoformat()} is not in the future")
        mine = self.reservation is not None and self.reservation.id == reservation_id
        if self.session is not None or (
            self.status not in (Status.AVAILABLE, Status.RESERVED)
            or (self.status == Status.RESERVED and not mine)
        ):
            raise CommandRefused(f"connector is {self.status.value}")
        self.reservation = Reservation(reservation_id, token, to_us(expires))
        await asyncio.to_thread(self.eng.ledger.set_reservation, self.id, self.reservation, now)
        await self.settle("reserved", f"reservation {reservation_id} for {token.masked}")
        self.publish("reserved", id_tag=token.masked, detail=f"reservation {reservation_id}")
        return self.status.value

    async def end_reservation(self, why: str) -> None:
        """Drop the reservation (cancelled, expired, or used by its token's session)."""
        r, self.reservation = self.reservation, None
        if r is None:
            return
        await asyncio.to_thread(self.eng.ledger.set_reservation, self.id, None, to_us(utcnow()))
        await self.settle("reservation", f"reservation {r.id} {why}")
        self.publish(f"reservation_{why}", id_tag=r.token.masked, detail=f"reservation {r.id}")

    async def fault(self, fault_id: str, active: bool, detail: str) -> None:
        """A fault that stops charging on this connector was raised or cleared."""
        self.note_fault(fault_id, active, detail)
        if active:
            self.faults[fault_id] = detail
            if self.session is not None:
                await self.stop(StopReason.EMERGENCY_STOP, "fault", f"{fault_id}: {detail}")
            elif self.last_stop is not None:
                await self._annotate(f"{fault_id}: {detail}")
        else:
            self.faults.pop(fault_id, None)
        await self.settle("fault", f"{fault_id} {'raised' if active else 'cleared'}: {detail}")

    async def _annotate(self, detail: str) -> None:
        """A second cause of an emergency stop that already closed its record (immutable):
        kept as an event of that session, shortly after its end."""
        sid, ended = self.last_stop or ("", 0)
        if to_us(utcnow()) - ended > ANNOTATE_WINDOW_S * US:
            return
        await asyncio.to_thread(
            self.eng.ledger.transition, self.id, None, self.status.value, "stop_cause",
            to_us(utcnow()), f"session {sid}: also {detail}",
        )  # fmt: skip

    # ------------------------------------------------------------------ EVSE

    async def _evse(self, on: bool, current_a: float = 0.0) -> bool:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                if on:
                    await self.evse.enable(current_a)
                else:
                    await self.evse.disable()
                return True
            except (ModbusFailure, RuntimeError, KeyError) as e:
                self.log.warning(
                    "evse.write_failed",
                    evse=self.evse.name,
                    enable=on,
                    attempt=attempt + 1,
                    error=str(e),
                    hint="check the EVSE link; the enable/setpoint write was not confirmed",
                )
        return False

    async def _evse_set_current(self, amps: float) -> bool:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                await self.evse.set_current(amps)
                return True
            except (ModbusFailure, RuntimeError, KeyError) as e:
                self.log.warning(
                    "evse.write_failed", evse=self.evse.name, current=amps, attempt=attempt + 1,
                    error=str(e), hint="the new current limit was not confirmed by read-back",
                )  # fmt: skip
        return False

    async def _disable(self) -> bool:
        ok = await self._evse(False)
        self.needs_disable = not ok
        return ok

    # ------------------------------------------------------------------ timers

    async def tick(self) -> None:
        """Timeouts and retries that need no input: pending auth, reservation, EVSE off."""
        now = to_us(utcnow())
        loop = asyncio.get_running_loop()
        if self.unwritten is not None and loop.time() >= self._next_record_try:
            self._next_record_try = loop.time() + RECORD_RETRY_S
            await self.retry_record()
        if self.needs_disable and self.session is None and loop.time() >= self._next_disable:
            self._next_disable = loop.time() + EVSE_RETRY_S
            if await self._disable():
                self.log.info("evse.disabled", evse=self.evse.name, why="no session")
        p = self.pending
        if p is not None and now >= p.expires_us:
            self.pending = None
            self.publish(
                "rejected",
                id_tag=p.token.masked,
                reason="Timeout",
                detail="not plugged in within the connection timeout",
            )
            if p.payment is not None:
                await self._void(p.payment.ref, "not plugged in in time")
        if self.reservation is not None and now >= self.reservation.expires_us:
            await self.end_reservation("expired")
        s = self.session
        if s is not None:
            await self._check_limits(s)
        if self.session is not None and self.applied_a != self.effective_limit():
            await self.apply_limit()  # e.g. the cable's capacity became known

    # ------------------------------------------------------------------ current limits

    def effective_limit(self) -> float:
        """The current to offer: the connector's rating, the cable's, every source's limit."""
        caps = [self.cfg.max_current_a, *self.limits.values()]
        if self.cable_a is not None:
            caps.append(self.cable_a)
        return min(caps)

    async def set_limit(self, source: str, amps: float | None) -> float:
        """Set (or with None drop) one source's limit; applied at once; the new effective."""
        if not _SOURCE.fullmatch(source or ""):
            raise CommandRefused(f"limit source {source!r}: use a short lowercase name (ocpp, …)")
        if amps is not None:
            if isinstance(amps, bool) or not isinstance(amps, int | float):
                raise CommandRefused(f"limit must be a number of amperes, got {amps!r}")
            if not math.isfinite(amps) or amps < 0:
                raise CommandRefused(f"limit must be 0 A or more, got {amps!r}")
            self.limits[source] = float(amps)
        else:
            self.limits.pop(source, None)
        if source in PERSISTED_LIMITS:
            await asyncio.to_thread(
                self.eng.ledger.set_limit, self.id, source, amps, to_us(utcnow())
            )
        self.log.info("connector.limit", source=source, amps=amps, effective=self.effective_limit())
        await self.apply_limit()
        return self.effective_limit()

    async def apply_limit(self) -> None:
        """Offer the effective limit to a running session; below 6 A suspend it (EVSE off,
        SuspendedEVSE) instead of an illegal pilot duty; resume when it rises again."""
        s = self.session
        if s is None:
            return
        amps = self.effective_limit()
        ok = True
        if amps < MIN_CURRENT_A:
            if s.offering:
                ok = await self._disable()
                if ok:
                    s.offering = False
        elif s.offering:
            ok = await self._evse_set_current(amps)
        else:
            ok = await self._evse(True, amps)
            if ok:
                s.offering, self.needs_disable = True, False
        if ok:
            self.applied_a = amps
        await self.settle("limit", f"offered current limit {amps:g} A")
