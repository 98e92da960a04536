"""A running session in memory (`Live`), and the metering half of a connector: register
readings into the bill, samples, running cost, limits. Mixed into `Connector`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from agent.billing import ocmf
from agent.billing.pricing import CostResult, MeterSample, PricingError, Session, price_session
from agent.billing.tariff import Tariff
from agent.events import utcnow
from agent.sessions.config import SessionLimits
from agent.sessions.metering import EnergyTracker
from agent.sessions.model import AuthMethod, IdToken, StopReason
from agent.sessions.payment import PaymentAuth
from agent.sessions.signing import SignRequest, user_assignment
from agent.sessions.store import SampleRow, SessionRow
from agent.sessions.times import US, from_us, to_us

PROGRESS_S = 1.0


@dataclass
class Pending:
    """An authorization waiting for the car to be plugged in."""

    token: IdToken
    method: AuthMethod
    group: str | None
    expires_us: int
    payment: PaymentAuth | None = None


@dataclass(frozen=True)
class Reservation:
    """A connector held for one token (OCPP ReserveNow) until `expires_us`."""

    id: int
    token: IdToken
    expires_us: int

    def to_json(self) -> str:
        """As kept in the store."""
        return json.dumps(
            {"id": self.id, "token": self.token.id, "kind": self.token.kind, "exp": self.expires_us}
        )

    @classmethod
    def from_json(cls, text: str) -> Reservation:
        """The inverse of to_json."""
        d = json.loads(text)
        return cls(int(d["id"]), IdToken(d["token"], d["kind"]), int(d["exp"]))


@dataclass
class Live:
    """The running session of a connector (its durable twin is the session row)."""

    row: SessionRow
    token: IdToken
    group: str | None
    tracker: EnergyTracker
    tariff: Tariff | None
    limits: SessionLimits
    payment: PaymentAuth | None
    points: list[MeterSample]  # pricing points: (time, billed Wh so far, power)
    readings: list[ocmf.MeterReading]  # the signed B and T readings so far
    offering: bool = False
    charging: bool = False
    charging_end_us: int | None = None
    last_sample_us: int = 0
    last_checkpoint_us: int = 0
    clock_slot: int = 0
    charging_periods: int = 1
    last_progress: float = 0.0
    cost: CostResult | None = None
    notes: list[str] = field(default_factory=list)
    unpriced: str | None = None  # why the last pricing failed (None: it did not)
    changes: list[tuple[datetime, Tariff]] = field(default_factory=list)  # tariff changes

    @property
    def id(self) -> str:
        """The session id."""
        return self.row.id


class MeteringMixin:
    """Register readings -> billed energy, samples, running cost and limits."""

    async def _energy_after(self, after_us: int, timeout_s: float) -> tuple[int, int] | None:
        """The first register reading taken after `after_us`, waiting up to `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            e = self.energy
            if e is not None and e[1] > after_us:
                return e
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self.energy_event.clear()
            waiter = asyncio.ensure_future(self.energy_event.wait())
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                waiter.cancel()

    def _power(self) -> Decimal | None:
        return None if self.power_w is None else Decimal(str(round(self.power_w, 1)))

    def _sample(self, s: Live, kind: str, at_us: int, register: int, tx: str | None = None):
        m = {k: v for k, v in self.measurands.items() if k != "energy_import_wh"}
        return SampleRow(
            s.id, at_us, kind, register, s.tracker.billed_wh, tx, json.dumps(m, sort_keys=True)
        )

    async def on_energy(self, wh: int, at_us: int) -> None:
        """A register reading: bill it, keep samples, check limits, publish progress."""
        s = self.session
        if s is None:
            return
        outcome = s.tracker.feed(wh, at_us, self.meter_serial, self.power_w)
        if not outcome.accepted and outcome.review is None and outcome.gap is None:
            return
        cfg = self.eng.billing.sampling
        kind, event = None, None
        if outcome.review is not None:
            kind, event = "anomaly", outcome.review
            self.log.warning(
                "meter.anomaly", session=s.id[:8], meter=self.meter_device, reason=outcome.review
            )
        elif outcome.gap is not None:
            g = outcome.gap
            kind = "gap"
            event = f"no readings for {(g.end_us - g.start_us) / US:.1f} s ({g.cause})"
            self.log.warning("meter.gap", session=s.id[:8], meter=self.meter_device, gap=event)
        slot = at_us // (cfg.clock_aligned_s * US) if cfg.clock_aligned_s else 0
        if kind is None and cfg.clock_aligned_s and slot != s.clock_slot:
            kind = "clock"
        if kind is None and at_us - s.last_sample_us >= cfg.interval_s * US:
            kind = "periodic"
        s.clock_slot = slot
        await self._price(s, at_us)
        if kind is None and s.cost is not None:
            periods = sum(1 for p in s.cost.periods if p.charging)
            if periods > s.charging_periods:
                kind, event = "tariff", f"charging period {periods} (tariff element changed)"
            s.charging_periods = max(periods, s.charging_periods)
        if kind is not None:
            await self._keep_sample(s, kind, at_us, wh, event)
        elif at_us - s.last_checkpoint_us >= cfg.checkpoint_s * US:
            s.last_checkpoint_us = at_us
            await asyncio.to_thread(
                self.eng.ledger.checkpoint,
                s.id,
                s.tracker.billed_wh,
                json.dumps(s.tracker.to_state()),
                at_us,
            )
        await self._check_limits(s)

    async def tariff_changed(self, tariff: Tariff) -> None:
        """The station's tariff changed: a running session is priced by it from now on (a new
        charging period, an OCMF tariff-change reading; kept with the session for a restart)."""
        s = self.session
        if s is None or s.tariff is None:
            return
        now = to_us(utcnow())
        s.changes.append((from_us(now), tariff))
        wh = s.tracker.register_wh
        await self._keep_sample(
            s, "tariff", now, wh, f"tariff changed to {tariff.id}", tariff.model_dump_json()
        )
        s.last_progress = 0.0
        await self._price(s, now)

    async def _keep_sample(
        self, s: Live, kind: str, at_us: int, wh: int, event: str | None, tariff_json: str = ""
    ):
        tx = None
        if kind == "tariff":
            tx = ocmf.Tx.TARIFF_CHANGE.value
            s.readings.append(self._ocmf_reading(at_us, ocmf.Tx.TARIFF_CHANGE, wh))
        row = self._sample(s, kind, at_us, wh, tx)
        if tariff_json:
            row.measurands = json.dumps({**json.loads(row.measurands), "tariff": tariff_json})
        await asyncio.to_thread(
            self.eng.ledger.sample,
            row,
            s.tracker.billed_wh,
            json.dumps(s.tracker.to_state()),
            event,
        )
        s.last_sample_us = s.last_checkpoint_us = at_us
        last = s.points[-1]
        if at_us > to_us(last.at):
            s.points.append(MeterSample(from_us(at_us), s.tracker.billed_wh, self._power()))

    async def _price(self, s: Live, now_us: int) -> None:
        loop = asyncio.get_running_loop()
        if s.tariff is None or loop.time() - s.last_progress < PROGRESS_S:
            return
        s.last_progress = loop.time()
        ce = now_us if s.charging else (s.charging_end_us or now_us)
        s.cost = self._cost(s, ce, now_us)
        self.publish("progress")

    def _cost(self, s: Live, charging_end_us: int, end_us: int) -> CostResult | None:
        """Price the session as if it ended at `end_us` (None if it cannot be priced)."""
        if s.tariff is None:
            return None
        start = s.row.started_ts
        ce = max(start, min(charging_end_us, end_us))
        pts = [p for p in s.points if to_us(p.at) < ce]
        # All energy billed is placed at the end of charging: what arrives while parking
        # (the car's standby, the ramp-down after a stop) belongs to the charge.
        pts.append(MeterSample(from_us(ce), s.tracker.billed_wh, self._power()))
        try:
            cost = price_session(
                s.tariff,
                Session(from_us(start), from_us(ce), from_us(max(end_us, ce)), pts),
                tz=self.eng.billing.timezone,
                changes=s.changes,
                in_force_only=False,  # pricing_review flags it: the driver saw these prices
            )
        except PricingError as e:
            if s.unpriced != str(e):
                self.log.error("session.pricing_failed", session=s.id[:8], error=str(e))
            s.unpriced = str(e)
            return None
        s.unpriced = None
        return cost

    def pricing_review(self, s: Live) -> str | None:
        """Why the session's record needs a person's review for its price, if it does: it
        could not be priced, or its tariff was not in force when it started (the station
        keeps charging and prices by the tariff it has: the driver was shown those prices)."""
        if s.tariff is None:
            return None
        if s.cost is None:
            return f"not priced: {s.unpriced or 'no cost computed'}"
        start = from_us(s.row.started_ts)
        if not s.tariff.is_valid_at(start):
            t = s.tariff
            window = f"[{t.start_date_time or '…'}, {t.end_date_time or '…'})"
            return (
                f"tariff {t.id} was not in force when the session started (valid {window}): "
                "priced by it anyway; set a current tariff"
            )
        return None

    async def _check_limits(self, s: Live) -> None:
        lim = s.limits
        now = to_us(utcnow())
        if lim.max_energy_wh is not None and s.tracker.billed_wh >= lim.max_energy_wh:
            await self.stop(StopReason.ENERGY_LIMIT, "limit", f"{lim.max_energy_wh} Wh reached")
        elif lim.max_duration_s is not None and now - s.row.started_ts >= lim.max_duration_s * US:
            await self.stop(StopReason.TIME_LIMIT, "limit", f"{lim.max_duration_s} s reached")
        elif lim.max_cost is not None and s.cost is not None:
            total = s.cost.total_incl_vat
            if total is None:
                total = s.cost.total_excl_vat
            if total >= lim.max_cost:
                await self.stop(
                    StopReason.COST_LIMIT, "limit", f"{lim.max_cost} {s.cost.currency} reached"
                )

    def _ocmf_reading(self, at_us: int, tx: ocmf.Tx, wh: int) -> ocmf.MeterReading:
        when = from_us(at_us).astimezone(ZoneInfo(self.eng.billing.timezone))
        return ocmf.MeterReading(when, tx, wh, self.eng.time_status)

    def _sign_request(self, s_row: SessionRow, token: IdToken, readings) -> SignRequest:
        return self._request(
            s_row.auth_method, s_row.meter_serial, s_row.tariff_id, token, readings
        )

    def _request(
        self, method: str, serial: str | None, tariff_id: str | None, token: IdToken, readings
    ) -> SignRequest:
        dev = self.eng.devices.get(self.meter_device)
        profile = dev.profile if dev is not None else None
        return SignRequest(
            meter=ocmf.MeterIdentity(
                serial=serial or self.meter_device,
                vendor=profile.manufacturer if profile else None,
                model=profile.model if profile else None,
            ),
            user=user_assignment(method, token.id, token.kind),
            charge_point=ocmf.ChargePoint(f"{self.eng.cfg.station.id}*{self.id}"),
            tariff_text=None if tariff_id is None else f"tariff {tariff_id}",
            readings=list(readings),
        )


def payment_json(p: PaymentAuth) -> dict[str, Any]:
    """A pre-authorization as kept in the session row and the record (amount as text)."""
    return {"ref": p.ref, "amount": str(p.amount), "currency": p.currency, "card": p.card}
