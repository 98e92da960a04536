"""After a restart: resume a session the EVSE still charges, or close it (PowerLoss) on the
register read now, or on the last persisted reading; finish open payments. Mixed into
`Connector`."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

from agent.billing import ocmf
from agent.billing.pricing import MeterSample
from agent.billing.tariff import Tariff
from agent.events import utcnow
from agent.sessions.config import SessionLimits
from agent.sessions.metering import EnergyTracker
from agent.sessions.model import IdToken, Status, StopReason
from agent.sessions.payment import PaymentAuth
from agent.sessions.session import Live, Reservation
from agent.sessions.states import CHARGING_CP
from agent.sessions.store import SessionRow
from agent.sessions.times import from_us, to_us


class RecoveryMixin:
    """What a restarted connector does before it takes any input."""

    async def recover(self) -> None:
        """After a restart: resume the session if the EVSE still charges, else close it
        (PowerLoss) on the register read now, or on the last persisted reading."""
        eng = self.eng
        self.available = await asyncio.to_thread(eng.ledger.available, self.id)
        self.limits.update(await asyncio.to_thread(eng.ledger.limits, self.id))
        held = await asyncio.to_thread(eng.ledger.reservation, self.id)
        if held is not None:
            self.reservation = Reservation.from_json(held)  # tick() drops it if expired
        rows = [
            r for r in await asyncio.to_thread(eng.store.active_sessions) if r.connector == self.id
        ]
        await self._finish_payments()
        if not rows:
            await self.settle("startup")
            return
        row = rows[0]
        s = await asyncio.to_thread(self._rebuild, row)
        self.session = s
        restart_us = to_us(utcnow())
        timeout = eng.cfg.sessions.recovery_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.cp is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        fresh = await self._energy_after(restart_us, max(0.0, deadline - loop.time()))
        self.log.info(
            "session.recovering",
            session=row.id[:8],
            cp=self.cp,
            register=None if fresh is None else fresh[0],
        )
        if self.cp in CHARGING_CP:
            s.offering, s.charging, self.needs_disable = True, True, False
            s.notes.append(
                f"{from_us(restart_us).isoformat(timespec='seconds')}: agent "
                "restarted; the EVSE was still charging, session resumed"
            )
            await asyncio.to_thread(
                eng.ledger.transition,
                self.id,
                s.id,
                Status.CHARGING.value,
                "resumed",
                restart_us,
                "agent restarted while the EVSE charged",
            )
            self.status = Status.CHARGING
            if fresh is not None:
                await self.on_energy(*fresh)
            self.publish("resumed")
            await self.apply_limit()
            return
        last_alive = max(row.updated_ts, s.tracker.last_us)
        s.notes.append(
            f"closed at restart {from_us(restart_us).isoformat(timespec='seconds')}: the agent "
            f"was not running when the session ended; time after "
            f"{from_us(last_alive).isoformat(timespec='seconds')} is not billed"
        )
        s.charging = False
        await self.stop(
            StopReason.POWER_LOSS,
            "restart",
            f"control pilot {self.cp or 'unknown'} at restart",
            ended_us=max(last_alive, row.started_ts),
            end=fresh,
            wait_end=False,
        )

    def _rebuild(self, row: SessionRow) -> Live:
        """The in-memory session from its row and samples (worker thread)."""
        eng = self.eng
        tracker = EnergyTracker.from_state(json.loads(row.tracker_json))
        tariff = None if row.tariff_json is None else Tariff.model_validate_json(row.tariff_json)
        begin = ocmf.parse(row.ocmf_begin).readings[0]
        when, status = begin.timestamp
        readings = [ocmf.MeterReading(when, ocmf.Tx.BEGIN, begin.energy_wh, status)]
        points = [MeterSample(from_us(row.started_ts), 0, None)]
        last_sample = row.started_ts
        changes = []
        for smp in eng.store.samples(row.id):
            changed = json.loads(smp.measurands).get("tariff")
            if changed is not None:
                changes.append((from_us(smp.ts), Tariff.model_validate_json(changed)))
            if smp.tx == ocmf.Tx.TARIFF_CHANGE.value:
                readings.append(self._ocmf_reading(smp.ts, ocmf.Tx.TARIFF_CHANGE, smp.register_wh))
            if smp.kind != "begin" and smp.ts > to_us(points[-1].at):
                points.append(MeterSample(from_us(smp.ts), smp.session_wh, None))
            last_sample = max(last_sample, smp.ts)
        payment = None
        if row.payment_json:
            p = json.loads(row.payment_json)
            payment = PaymentAuth(p["ref"], Decimal(p["amount"]), p["currency"], p.get("card", ""))
        return Live(
            row=row,
            token=IdToken(row.id_token, row.id_token_type),
            group=None,
            tracker=tracker,
            tariff=tariff,
            limits=SessionLimits.model_validate_json(row.limits_json),
            payment=payment,
            points=points,
            readings=readings,
            charging_end_us=row.charging_end_ts,
            last_sample_us=last_sample,
            last_checkpoint_us=row.updated_ts,
            charging_periods=len(readings),
            changes=changes,
        )

    async def _finish_payments(self) -> None:
        """Capture or void what a previous run left open on this connector."""
        if self.eng.terminal is None:
            return
        for ref, cid, sid, _cur, held, captured, status in await asyncio.to_thread(
            self.eng.ledger.open_payments
        ):
            if cid != self.id:
                continue
            if status == "capture_pending":
                total = None if captured is None else Decimal(captured)
                await self._settle_payment(ref, Decimal(held), total)
            elif status == "authorized" or sid is None:
                await self._void(ref, "no session came of it (agent restarted)")
