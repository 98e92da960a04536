"""Smart charging at run time: installed profiles (persisted), transactions, the live limit.

`SmartChargingService` lives as long as the agent (not one WebSocket connection) and is
registered as `ctx.parts["smart_charging"]`. The SmartChargingMixin's handlers call
`set_profile`, `clear` and `composite`; the transactions profile calls
`set_remote_start_profile` and `set_transaction_id`. `run()` applies the limit in real time:
`SessionEngine.set_limit(connector, "ocpp", amps or None)` at every period boundary and
after every change (profiles, transactions), from `limit_timeline`, the same computation
GetCompositeSchedule answers with. The pure logic is agent/ocpp/smart_charging.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from agent.events import SessionEvent, utcnow
from agent.ocpp.smart_charging import (
    ConnectorSpec,
    Installed,
    Limits,
    Purpose,
    RateUnit,
    Station,
    Tx,
    check_profile,
    limit_timeline,
    matches_clear,
    normalized,
    parse_profile,
    replaces,
    schedule_periods,
)
from agent.sessions.times import from_us, to_us

if TYPE_CHECKING:
    from agent.ocpp.context import OcppContext
    from agent.store.db import Store

log = structlog.get_logger(__name__)

HORIZON = timedelta(days=1)  # the live limiter re-evaluates at least this often
RETRY_S = 5.0  # after the EVSE refused a limit
# GetCompositeSchedule beyond this is Rejected: "not able to report the requested schedule"
# (a day is what CSMSs ask for; a huge duration would overflow the date arithmetic).
MAX_COMPOSITE_S = 31 * 86_400
_UNITS = {"Current": RateUnit.AMPS, "Power": RateUnit.WATTS}


class ProfileStore:
    """The `ocpp_charging_profiles` table of the store (synchronous: call from a thread)."""

    def __init__(self, store: Store):
        self.store = store

    def load(self) -> list[Installed]:
        """Every installed profile."""
        with self.store.reading() as c:
            rows = c.execute(
                "SELECT connector, body FROM ocpp_charging_profiles ORDER BY profile_id"
            ).fetchall()
        return [Installed(cid, parse_profile(json.loads(body))) for cid, body in rows]

    def put(self, inst: Installed, replaced: list[int], now_us: int) -> None:
        """Install `inst`, removing the profiles it replaces, in one transaction."""
        p = inst.profile
        with self.store.tx() as c:
            _delete(c, replaced)
            c.execute(
                "INSERT INTO ocpp_charging_profiles (profile_id, connector, purpose, stack_level,"
                " body, installed_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    p.charging_profile_id,
                    inst.connector_id,
                    p.charging_profile_purpose.value,
                    p.stack_level,
                    json.dumps(p.wire()),
                    now_us,
                ),
            )

    def delete(self, profile_ids: list[int]) -> None:
        """Remove profiles by id."""
        with self.store.tx() as c:
            _delete(c, profile_ids)


def _delete(c: sqlite3.Connection, ids: list[int]) -> None:
    c.executemany("DELETE FROM ocpp_charging_profiles WHERE profile_id = ?", [(i,) for i in ids])


class SmartChargingService:
    """See the module docstring."""

    def __init__(self, ctx: OcppContext):
        self.ctx = ctx
        self.db = ProfileStore(ctx.store)
        self.profiles: list[Installed] = self.db.load()
        self.connectors = {
            c.id: ConnectorSpec(c.phases, c.max_current_a) for c in ctx.cfg.connector
        }
        self.txs: dict[int, Tx] = {}
        self._pending: dict[int, Any] = {}  # connector -> RemoteStartTransaction's TxProfile
        self._changed = asyncio.Event()
        self.applied: dict[int, float | None] = {}  # what the EVSE was last told, per connector
        # Subscribe now: a session that starts before run() must not be missed.
        self._sub = ctx.bus.subscribe(SessionEvent)
        ctx.parts["smart_charging"] = self

    # ------------------------------------------------------------------ state

    def station(self) -> Station:
        """The connectors and transactions the limit depends on."""
        return Station(self.connectors, dict(self.txs))

    def limits(self) -> Limits:
        """The Smart Charging configuration keys (defaults when the key store is absent)."""
        keys = self.ctx.parts.get("config_keys")
        if keys is None:
            return Limits()
        units = frozenset(
            _UNITS[u]
            for u in keys.get_list("ChargingScheduleAllowedChargingRateUnit")
            if u in _UNITS
        )
        return Limits(
            max_stack_level=keys.get_int("ChargeProfileMaxStackLevel"),
            allowed_units=units,
            max_periods=keys.get_int("ChargingScheduleMaxPeriods"),
            max_installed=keys.get_int("MaxChargingProfilesInstalled"),
        )

    def _changed_now(self) -> None:
        self._changed.set()

    # ------------------------------------------------------------------ CSMS operations

    async def set_profile(self, connector_id: int, data: dict) -> str | None:
        """SetChargingProfile: install the profile, or say why it is rejected."""
        now = utcnow()
        try:
            profile = normalized(parse_profile(data), now)
        except ValueError as e:
            return str(e)
        reason = check_profile(profile, connector_id, self.profiles, self.station(), self.limits())
        if reason is not None:
            return reason
        await self._install(Installed(connector_id, profile), now)
        return None

    async def _install(self, inst: Installed, now: datetime) -> None:
        gone = [i for i in self.profiles if replaces(inst.profile, inst.connector_id, i)]
        ids = [i.profile.charging_profile_id for i in gone]
        await asyncio.to_thread(self.db.put, inst, ids, to_us(now))
        self.profiles = [i for i in self.profiles if i not in gone] + [inst]
        p = inst.profile
        log.info(
            "ocpp.profile_set",
            profile_id=p.charging_profile_id,
            connector=inst.connector_id,
            purpose=p.charging_profile_purpose.value,
            stack_level=p.stack_level,
            kind=p.charging_profile_kind.value,
            unit=p.charging_schedule.charging_rate_unit.value,
            replaced=ids or None,
        )
        self._changed_now()

    async def clear(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile: remove the matching profiles; returns how many."""
        want = Purpose(purpose) if purpose is not None else None
        gone = [
            i
            for i in self.profiles
            if matches_clear(i, profile_id, connector_id, want, stack_level)
        ]
        await self._remove(gone, "cleared")
        return len(gone)

    async def _remove(self, gone: list[Installed], why: str) -> None:
        if not gone:
            return
        ids = [i.profile.charging_profile_id for i in gone]
        await asyncio.to_thread(self.db.delete, ids)
        self.profiles = [i for i in self.profiles if i not in gone]
        log.info("ocpp.profiles_removed", profile_ids=ids, reason=why)
        self._changed_now()

    def composite(self, connector_id: int, duration_s: int, unit: RateUnit | None) -> dict | None:
        """GetCompositeSchedule's answer fields (None: Rejected: unknown connector, a duration
        not in 0..MAX_COMPOSITE_S)."""
        if not 0 <= duration_s <= MAX_COMPOSITE_S:
            return None
        if not self.connectors or (connector_id != 0 and connector_id not in self.connectors):
            return None  # no such connector (a station without connectors has no schedule)
        start = utcnow().replace(microsecond=0)
        steps = limit_timeline(
            self.profiles,
            connector_id,
            start,
            start + timedelta(seconds=duration_s),
            self.station(),
        )
        if connector_id == 0:
            max_a = sum(c.max_current_a for c in self.connectors.values())
            phases = max((c.phases for c in self.connectors.values()), default=3)
        else:
            spec = self.connectors[connector_id]
            max_a, phases = spec.max_current_a, spec.phases
        unit = unit or RateUnit.AMPS
        return {
            "connector_id": connector_id,
            "schedule_start": start.isoformat().replace("+00:00", "Z"),
            "charging_schedule": {
                "duration": duration_s,
                "start_schedule": start.isoformat().replace("+00:00", "Z"),
                "charging_rate_unit": unit.value,
                "charging_schedule_period": schedule_periods(steps, unit, max_a, phases),
            },
        }

    # ------------------------------------------------------------------ transactions

    def set_remote_start_profile(self, connector_id: int, data: dict) -> str | None:
        """RemoteStartTransaction's chargingProfile: installed as the TxProfile of the
        transaction that starts next on the connector. Returns why it is refused, or None."""
        try:
            profile = parse_profile(data)
        except ValueError as e:
            return str(e)
        if profile.charging_profile_purpose != Purpose.TX:
            return "RemoteStartTransaction's chargingProfile must be a TxProfile"
        self._pending[connector_id] = profile
        return None

    def set_transaction_id(self, connector_id: int, transaction_id: int) -> None:
        """StartTransaction.conf gave the connector's transaction its id."""
        tx = self.txs.get(connector_id)
        if tx is not None:
            self.txs[connector_id] = Tx(connector_id, tx.started, transaction_id)
            self._changed_now()

    async def _on_session(self, ev: SessionEvent) -> None:
        c = ev.connector
        if ev.kind in ("started", "resumed"):
            started = await self._session_start(ev)
            self.txs[c] = Tx(c, started, (self.txs.get(c) or Tx(c, started)).transaction_id)
            pending = self._pending.pop(c, None)
            if pending is not None:
                await self._install(Installed(c, normalized(pending, ev.ts)), ev.ts)
            self._changed_now()
        elif ev.kind in ("stopped", "rejected"):
            self._pending.pop(c, None)
            if self.txs.pop(c, None) is not None:
                tx_profiles = [
                    i for i in self.profiles if i.purpose == Purpose.TX and i.connector_id == c
                ]
                await self._remove(tx_profiles, "transaction ended")
                self._changed_now()

    async def _session_start(self, ev: SessionEvent) -> datetime:
        """When the session began (a resumed one: from the store)."""
        engine = self.ctx.sessions
        if ev.kind == "resumed" and engine is not None and ev.session_id:
            row = await asyncio.to_thread(engine.store.session, ev.session_id)
            if row is not None:
                return from_us(row.started_ts)
        return ev.ts

    async def _recover(self) -> None:
        """Transactions still open from before a restart; TxProfiles of ended ones go."""
        engine = self.ctx.sessions
        rows = [] if engine is None else await asyncio.to_thread(engine.store.active_sessions)
        for r in rows:
            self.txs.setdefault(r.connector, Tx(r.connector, from_us(r.started_ts)))
        stale = [
            i for i in self.profiles if i.purpose == Purpose.TX and i.connector_id not in self.txs
        ]
        await self._remove(stale, "transaction ended while stopped")

    # ------------------------------------------------------------------ live limit

    async def run(self) -> None:
        """Follow sessions and apply the limit of every connector in real time."""
        await self._recover()
        watcher = asyncio.create_task(self._watch(), name="smart-charging sessions")
        try:
            while True:
                self._changed.clear()
                wake = await self._apply_all()
                timeout = max(0.0, (wake - utcnow()).total_seconds())
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait(
                    {changed, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
                if watcher in done:
                    watcher.result()  # a crash ends the service loudly
                    return
        finally:
            watcher.cancel()
            self._sub.close()

    async def _watch(self) -> None:
        async for ev in self._sub:
            await self._on_session(ev)

    async def _apply_all(self) -> datetime:
        """Apply each connector's current limit; returns when the next step is due."""
        now = utcnow()
        wake = now + HORIZON
        engine = self.ctx.sessions
        if engine is None:
            return wake
        station = self.station()
        for cid in engine.connectors:
            steps = limit_timeline(self.profiles, cid, now, now + HORIZON, station)
            if len(steps) > 1:
                wake = min(wake, steps[1].at)
            amps = steps[0].amps
            if cid in self.applied and self.applied[cid] == amps:
                continue
            try:
                effective = await engine.set_limit(cid, "ocpp", amps)
            except Exception as e:  # the EVSE did not take it: try again soon
                log.warning("ocpp.limit_failed", connector=cid, amps=amps, error=str(e))
                wake = min(wake, now + timedelta(seconds=RETRY_S))
                continue
            self.applied[cid] = amps
            log.info("ocpp.limit_applied", connector=cid, amps=amps, effective_a=effective)
        return wake
