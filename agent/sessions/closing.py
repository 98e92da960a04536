"""Opening and closing a session: start reading, signed begin record, EVSE on; EVSE off,
end reading, price, sign, chain, exactly one record; payment capture or void. Mixed into
`Connector`."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

from agent.billing import ocmf
from agent.billing.keys import public_key_hex
from agent.billing.pricing import MeterSample
from agent.events import ChargeRecordWritten, utcnow
from agent.sessions.ledger import Closing
from agent.sessions.metering import EnergyTracker
from agent.sessions.model import AuthMethod, IdToken, Status, StopReason
from agent.sessions.payment import PaymentAuth
from agent.sessions.records import RecordInput, build_body
from agent.sessions.reviews import FaultRef, billing_faults
from agent.sessions.session import Live, payment_json
from agent.sessions.states import CHARGING_CP, FAULT_CP, MIN_CURRENT_A, PLUGGED, derive_status
from agent.sessions.store import RecordRow, SampleRow, SessionRow
from agent.sessions.times import US, from_us, to_us
from agent.store.space import DiskFullError

# OCMF end reading reason per stop reason.
END_TX = {
    StopReason.LOCAL: ocmf.Tx.END_LOCAL,
    StopReason.REMOTE: ocmf.Tx.END_REMOTE,
    StopReason.DEAUTHORIZED: ocmf.Tx.END_REMOTE,
    StopReason.POWER_LOSS: ocmf.Tx.END_POWER_FAILURE,
    StopReason.EMERGENCY_STOP: ocmf.Tx.END_ABORT,
    StopReason.OTHER: ocmf.Tx.END_ABORT,
}


RECORD_RETRY_S = 5.0  # a charge record refused by a full disk is tried again this often


class ClosingMixin:
    """start() and stop() of a connector's session, and the payment that goes with it."""

    async def start(
        self, token: IdToken, method: AuthMethod, group: str | None, payment: PaymentAuth | None
    ) -> bool:
        """Open a session: start reading, durable row + signed begin record, enable EVSE."""
        eng = self.eng
        now = to_us(utcnow())
        reading = await self._energy_after(
            now - int(eng.cfg.sessions.meter_max_age_s * US), eng.cfg.sessions.end_reading_timeout_s
        )
        reviews = []
        if reading is None and self.energy is not None:
            reading = self.energy
            age = (now - reading[1]) / US
            reviews.append(f"start reading is {age:.0f} s old: the meter did not answer at start")
        if reading is None:
            self.log.error(
                "session.no_meter",
                meter=self.meter_device,
                hint="the meter never answered: check its link",
            )
            if payment is not None:
                await self._void(payment.ref, "no meter reading: session not started")
            self.publish("rejected", reason="MeterUnavailable", detail="no meter reading")
            return False
        wh, read_us = reading
        signer = eng.meter_signer(self.id)
        meter_record = None
        if signer is not None:
            # The meter signs its own begin reading, and that is the one billed from.
            begin = self._ocmf_reading(read_us, ocmf.Tx.BEGIN, wh)
            tariff_id = None if eng.tariff is None else eng.tariff.id
            req = self._request(method.value, self.meter_serial, tariff_id, token, [begin])
            try:
                meter_record = await signer.begin(req)
                signed_wh = ocmf.parse(meter_record).readings[0].energy_wh
            except Exception as e:
                self.log.error(
                    "session.meter_signing_failed",
                    meter=self.meter_device,
                    error=str(e),
                    hint="the signing meter did not sign the begin reading: session not started",
                )
                if payment is not None:
                    await self._void(payment.ref, "meter did not sign: session not started")
                self.publish("rejected", reason="MeterSigningFailed", detail=str(e)[:200])
                return False
            if signed_wh != wh:
                reviews.append(f"begin reading: register {wh} Wh, meter signed {signed_wh} Wh")
                wh, read_us = signed_wh, to_us(utcnow())
        tracker = EnergyTracker(
            start_wh=wh,
            start_us=read_us,
            serial=self.meter_serial,
            max_power_w=self.max_power_w,
            modulus=eng.modulus(self.meter_device),
            gap_after_s=eng.cfg.sessions.gap_after_s,
            jump_slack_wh=eng.cfg.sessions.jump_slack_wh,
            backwards_glitch_wh=eng.cfg.sessions.backwards_glitch_wh,
            power_w=self.power_w,
        )
        tracker.reviews.extend(reviews)
        limits = eng.billing.limits
        if payment is not None:
            cap = (
                payment.amount if limits.max_cost is None else min(limits.max_cost, payment.amount)
            )
            limits = limits.model_copy(update={"max_cost": cap})
        tariff = eng.tariff
        row = SessionRow(
            id=uuid.uuid4().hex,
            connector=self.id,
            state="active",
            status=Status.SUSPENDED_EVSE.value,
            started_ts=now,
            charging_end_ts=None,
            ended_ts=None,
            auth_method=method.value,
            id_token=token.id,
            id_token_type=token.kind,
            meter_device=self.meter_device,
            meter_serial=self.meter_serial,
            start_wh=wh,
            billed_wh=0,
            tariff_id=None if tariff is None else tariff.id,
            tariff_json=None if tariff is None else tariff.model_dump_json(),
            limits_json=limits.model_dump_json(),
            payment_json=None if payment is None else json.dumps(payment_json(payment)),
            ocmf_begin=None,
            tracker_json=json.dumps(tracker.to_state()),
            stop_reason=None,
            updated_ts=now,
        )
        begin = self._ocmf_reading(read_us, ocmf.Tx.BEGIN, wh)
        req = self._sign_request(row, token, [begin])
        sample = SampleRow(row.id, read_us, "begin", wh, 0, ocmf.Tx.BEGIN.value, "{}")
        await asyncio.to_thread(
            eng.ledger.open,
            row,
            sample,
            req,
            meter_record,
            None if payment is None else payment.ref,
            f"{method.value} {token.masked}",
        )
        slot = (
            now // (eng.billing.sampling.clock_aligned_s * US)
            if eng.billing.sampling.clock_aligned_s
            else 0
        )
        self.session = Live(
            row=row,
            token=token,
            group=group,
            tracker=tracker,
            tariff=tariff,
            limits=limits,
            payment=payment,
            points=[MeterSample(from_us(now), 0, self._power())],
            readings=[begin],
            last_sample_us=now,
            last_checkpoint_us=now,
            clock_slot=slot,
            charging=self.cp in CHARGING_CP,
        )
        self.status = Status.SUSPENDED_EVSE
        await self.end_reservation("used")
        self.log.info(
            "session.started",
            session=row.id[:8],
            id_tag=token.masked,
            method=method.value,
            meter=self.meter_device,
            start_wh=wh,
        )
        self.publish("started", id_tag=token.masked, method=method.value)
        current = self.effective_limit()
        if current < MIN_CURRENT_A:
            self.log.info("session.limited", current=current, why="below 6 A: SuspendedEVSE")
            await self.settle("limit", f"offered current limit {current:g} A: suspended")
        elif await self._evse(True, current):
            self.session.offering = True
            self.needs_disable = False
            self.applied_a = current
            await self.settle("enabled", f"EVSE offers {current:g} A")
        else:
            await self.stop(StopReason.OTHER, "evse", "the EVSE did not accept the enable command")
        return True

    # ------------------------------------------------------------------ stop

    async def stop(
        self,
        reason: StopReason,
        by: str,
        detail: str = "",
        *,
        ended_us: int | None = None,
        end: tuple[int, int] | None = None,
        wait_end: bool = True,
    ) -> None:
        """Close the session: EVSE off, end reading, price, sign, chain, one record."""
        s = self.session
        if s is None:
            return
        eng = self.eng
        stop_us = ended_us if ended_us is not None else to_us(utcnow())
        notes = list(s.notes)
        if not await self._disable():
            s.tracker.reviews.append(
                "the EVSE did not confirm it stopped charging: energy after the stop may be "
                "missing from this record"
            )
        if end is None and wait_end:
            end = await self._energy_after(stop_us, eng.cfg.sessions.end_reading_timeout_s)
        if end is not None:
            s.tracker.feed(end[0], end[1], self.meter_serial, self.power_w)
        else:
            at = from_us(s.tracker.hwm_us).isoformat(timespec="seconds")
            s.tracker.reviews.append(
                f"no meter reading after the stop: the end reading is the last good one, "
                f"from {at}; energy after it is not billed"
            )
        faults = await self._billing_faults(s, stop_us)
        short = s.tracker.shortfall(
            eng.cfg.sessions.estimate_tolerance_pct, eng.cfg.sessions.estimate_min_wh
        )
        if short is not None:
            s.tracker.reviews.append(short)
        end_wh, end_read_us = s.tracker.register_wh, s.tracker.hwm_us
        if end is not None and end[1] >= end_read_us:
            end_wh, end_read_us = end
        tx = END_TX.get(reason, ocmf.Tx.END)
        meter_record = await self._meter_end(s, tx, end_read_us, end_wh)
        if meter_record is not None:
            signed_wh = ocmf.parse(meter_record).readings[-1].energy_wh
            if signed_wh != end_wh:
                # What the meter signed is what is billed (it read after the agent did).
                at = max(to_us(utcnow()), end_read_us)
                s.tracker.feed(signed_wh, at, self.meter_serial)
                end_wh, end_read_us = signed_wh, at
        if reason == StopReason.EMERGENCY_STOP:
            by, detail = self.emergency_cause()  # whichever of pilot and fault came first
        if s.charging:
            charging_end = stop_us
        else:
            charging_end = s.charging_end_us if s.charging_end_us is not None else s.row.started_ts
        charging_end = max(s.row.started_ts, min(charging_end, stop_us))
        s.cost = self._cost(s, charging_end, stop_us)
        if (why := self.pricing_review(s)) is not None:
            s.tracker.reviews.append(why)
        # The end record holds the tariff-change and end readings; the begin reading is in the
        # begin record (verifiers pair the two and refuse a second begin reading).
        readings = [*s.readings[1:], self._ocmf_reading(end_read_us, tx, end_wh)]
        req = self._sign_request(s.row, s.token, readings)
        # The car stays (unless the stop was its unplugging): Finishing until it leaves. A
        # fault pilot (E/F) hides whether it is there; assume it is, the pilot will tell.
        plugged = self.cp in PLUGGED or self.cp in FAULT_CP
        self.session = None
        self.finishing = plugged
        status = derive_status(
            self.cp,
            session=False,
            offering=False,
            faulted=bool(self.faults),
            available=self.available,
            reserved=False,
            finishing=plugged,
        )
        payment = None
        if s.payment is not None:
            payment = {**payment_json(s.payment), "status": "capture_pending"}
        body_in = RecordInput(
            station_id=eng.cfg.station.id,
            row=s.row,
            ended_us=stop_us,
            charging_end_us=charging_end,
            stop_reason=reason.value,
            stopped_by=by,
            stop_detail=detail,
            tracker=s.tracker,
            end_wh=end_wh,
            end_reading_us=end_read_us,
            cost=s.cost,
            signer=eng.signer_kind(self.id),
            public_key_hex=eng.public_key_hex(self.id),
            end_public_key_hex=(
                None
                if meter_record is not None or eng.meter_signer(self.id) is None
                else public_key_hex(eng.key)
            ),
            payment=payment,
            notes=tuple(notes),
            faults=tuple(faults),
        )
        try:
            body = build_body(body_in)
        except Exception as e:  # a bug here must not leave the session open forever
            self.log.exception("record.body_failed", session=s.id[:8])
            body_in.cost = None
            s.tracker.reviews.append(f"record could not be built in full ({e}): cost left out")
            body = build_body(body_in)
        end_sample = self._sample(s, "end", end_read_us, end_wh, tx.value)
        end_sample.ts = max(end_read_us, s.tracker.start_us)
        closing = Closing(
            session_id=s.id,
            connector=self.id,
            status=status.value,
            stop_reason=reason.value,
            ended_us=stop_us,
            charging_end_us=charging_end,
            billed_wh=s.tracker.billed_wh,
            tracker_json=json.dumps(s.tracker.to_state()),
            end_sample=end_sample,
            body=body,
            sign=req,
            ocmf_end=meter_record,
            detail=f"{reason.value} by {by}" + (f": {detail}" if detail else ""),
        )
        try:
            rec = await asyncio.to_thread(eng.ledger.close, closing)
        except DiskFullError:
            # The session is over for the car; its record waits in memory and tick() writes
            # it once the disk has room. New sessions are refused meanwhile (_maybe_start).
            self.log.critical(
                "record.not_written", session=s.id[:8],
                hint="the store's disk is full: the charge record is retried every "
                f"{RECORD_RETRY_S:g} s (and written by the recovery if the agent restarts); "
                "new sessions are refused until then. Free up the disk.",
            )  # fmt: skip
            self.unwritten = (
                closing,
                lambda rec: self._closed(s, rec, status, reason, by, detail, stop_us),
            )
            return
        await self._closed(s, rec, status, reason, by, detail, stop_us)

    async def _closed(
        self,
        s: Live,
        rec: RecordRow,
        status: Status,
        reason: StopReason,
        by: str,
        detail: str,
        stop_us: int,
    ) -> None:
        """After the charge record is written: log, publish it, settle payment and status."""
        eng = self.eng
        self.status = status
        self.last_stop = (s.id, stop_us) if reason == StopReason.EMERGENCY_STOP else None
        cost = s.cost
        self.log.info(
            "session.stopped",
            session=s.id[:8],
            record=rec.id,
            reason=reason.value,
            by=by,
            energy_wh=s.tracker.billed_wh,
            total=None if cost is None else str(cost.total_incl_vat or cost.total_excl_vat),
            currency=None if cost is None else cost.currency,
            review=bool(rec.review),
        )
        eng.bus.publish(
            ChargeRecordWritten(
                record_id=rec.id,
                session_id=s.id,
                connector=self.id,
                seq=rec.seq,
                hash=rec.hash,
                energy_wh=rec.energy_wh,
                total_excl_vat=None if cost is None else cost.total_excl_vat,
                total_incl_vat=None if cost is None else cost.total_incl_vat,
                currency=None if cost is None else cost.currency,
                stop_reason=reason.value,
                review=bool(rec.review),
            )
        )
        self.publish(
            "stopped",
            session_id=s.id,
            id_tag=s.token.masked,
            reason=reason.value,
            energy_wh=s.tracker.billed_wh,
            cost_excl_vat=None if cost is None else cost.total_excl_vat,
            cost_incl_vat=None if cost is None else cost.total_incl_vat,
            currency=None if cost is None else cost.currency,
            detail=detail,
        )
        if s.payment is not None:
            total = None
            if cost is not None:
                total = (
                    cost.total_incl_vat if cost.total_incl_vat is not None else cost.total_excl_vat
                )
            await self._settle_payment(s.payment.ref, s.payment.amount, total)
        await self.settle("stopped", reason.value)

    async def _billing_faults(self, s: Live, stop_us: int) -> list[FaultRef]:
        """The faults during the session that put its energy in doubt (reviews.py), through
        the engine's port; unreadable history is itself a review reason."""
        port = self.eng.faults_during
        if port is None:
            return []
        try:
            found = await port(self.id, self.meter_device, s.row.started_ts, stop_us)
        except Exception as e:
            self.log.error("session.fault_history_failed", session=s.id[:8], error=str(e))
            s.tracker.reviews.append(
                f"the fault history could not be read ({e}): faults during the session unknown"
            )
            return []
        return billing_faults(found, self.eng.cfg.sessions.review_fault_components)

    async def retry_record(self) -> None:
        """Write the charge record a full disk refused (see stop()); on success, finish the
        stop as if it had just happened."""
        if self.unwritten is None:
            return
        closing, done = self.unwritten
        try:
            rec = await asyncio.to_thread(self.eng.ledger.close, closing)
        except DiskFullError:
            return  # still full: tried again at the next tick after RECORD_RETRY_S
        self.unwritten = None
        self.log.warning("record.written_late", session=closing.session_id[:8], record=rec.id)
        await done(rec)

    async def _meter_end(self, s, tx: ocmf.Tx, at_us: int, wh: int) -> str | None:
        """The signing meter's end record, or None (no signing meter, or it failed: then the
        agent signs the end reading and the record is flagged)."""
        signer = self.eng.meter_signer(self.id)
        if signer is None:
            return None
        req = self._sign_request(s.row, s.token, [self._ocmf_reading(at_us, tx, wh)])
        try:
            return await signer.end(req)
        except Exception as e:
            self.log.error(
                "session.meter_signing_failed",
                session=s.id[:8],
                meter=self.meter_device,
                error=str(e),
                hint="the end reading is signed with the agent's key instead",
            )
            s.tracker.reviews.append(
                f"the meter did not sign the end reading ({e}): signed by the agent's key"
            )
            return None

    # ------------------------------------------------------------------ payments

    async def _settle_payment(self, ref: str, held: Decimal, total: Decimal | None) -> None:
        """Capture the final cost (never more than held), or void when nothing is owed."""
        if total is None or total <= 0:
            await self._void(ref, "nothing to capture")
            return
        amount = min(total, held)
        terminal = self.eng.terminal
        now = to_us(utcnow())
        try:
            await asyncio.wait_for(
                terminal.capture(ref, amount), self.eng.billing.payment.timeout_s
            )
        except Exception as e:
            self.log.error(
                "payment.capture_failed",
                ref=ref,
                amount=str(amount),
                error=str(e),
                hint="retried at the next start",
            )
            await asyncio.to_thread(
                self.eng.ledger.payment_done, ref, "capture_pending", now, str(e)
            )
            return
        await asyncio.to_thread(self.eng.ledger.payment_done, ref, "captured", now, str(amount))
        self.log.info("payment.captured", ref=ref, amount=str(amount))

    async def _void(self, ref: str, why: str) -> None:
        terminal = self.eng.terminal
        now = to_us(utcnow())
        try:
            await asyncio.wait_for(terminal.void(ref), self.eng.billing.payment.timeout_s)
        except Exception as e:
            self.log.error("payment.void_failed", ref=ref, error=str(e))
            return
        await asyncio.to_thread(self.eng.ledger.payment_done, ref, "voided", now, why)
        self.log.info("payment.voided", ref=ref, why=why)
