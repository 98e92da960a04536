"""The long-lived half of OCPP transactions: outbox sender, meter sampling, authorizer.

`TxService` lives as long as the agent (a WebSocket connection comes and goes around it). It
is created by `TransactionsMixin.setup` and registered as `ctx.parts["transactions"]`, its
outbox as `ctx.parts["outbox"]`, its authorizer as `ctx.parts["online_authorizer"]` (the
runtime hands it to the session engine). `attach_sessions(engine)` (called by the service's
`attach_sessions`) plugs the rest into the engine:

- `TxJournal` becomes a ledger hook: a session's StartTransaction / StopTransaction are
  queued in the session's own SQLite transaction (agent/ocpp/txjournal.py); sessions
  already active (OCPP enabled mid-session) get their StartTransaction queued at once;
- `CsmsAuthorizer` becomes the engine's online authorizer (Authorize.req when connected,
  `OnlineUnavailable` when not), and the engine's authorization policy follows the keys
  LocalPreAuthorize, LocalAuthorizeOffline, AuthorizationCacheEnabled,
  AllowOfflineTxForUnknownId and LocalAuthListEnabled.

`run()` drains the outbox while connected and takes meter values all the time (offline
too: they queue): Sample.Periodic every MeterValueSampleInterval from each transaction's
start, Sample.Clock at every multiple of ClockAlignedDataInterval since midnight UTC. A
clock-aligned value of a connector without a transaction is not a transaction message: it
is sent when connected and not kept otherwise.

After each StartTransaction.conf: the id goes to smart charging; an idTagInfo other than
Accepted stops the session (StopTransactionOnInvalidId, reason DeAuthorized) or caps the
transaction's total energy at MaxEnergyOnInvalidId Wh. The idTagInfo of Start- and
StopTransaction.conf also updates the authorization cache (OCPP 1.6 §3.5.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from ocpp.charge_point import camel_to_snake_case
from ocpp.v16 import call

from agent.events import READINGS, Reading, SessionEvent, utcnow
from agent.ocpp import metervalues as mv
from agent.ocpp.context import OcppCallError, OcppContext, OcppOffline
from agent.ocpp.outbox import Outbox, OutboxRow
from agent.ocpp.txjournal import TxJournal, id_tag
from agent.sessions.auth import AuthPolicy, OnlineUnavailable
from agent.sessions.model import AuthStatus, IdToken, StopReason, mask
from agent.sessions.times import US, to_us
from agent.store.space import disk_full_tolerated
from agent.tasks import cancel_and_wait

if TYPE_CHECKING:
    from agent.sessions.connector import Connector
    from agent.sessions.engine import SessionEngine

log = structlog.get_logger(__name__)

READING_MAX_AGE_S = 60.0  # an older value is not reported as current
SAMPLER_TICK_S = 1.0  # the sampler re-reads intervals and sessions at least this often


def _expiry_us(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return to_us(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


class CsmsAuthorizer:
    """The session engine's OnlineAuthorizer: Authorize.req to the CSMS."""

    def __init__(self, ctx: OcppContext):
        self.ctx = ctx

    def reachable(self) -> bool:
        """Connected and booted: an Authorize.req can be sent now."""
        return self.ctx.link.online.is_set()

    async def authorize(self, token: IdToken) -> tuple[AuthStatus, str | None, int | None]:
        """(status, parent id tag, expiry µs); OnlineUnavailable when not connected or no
        answer (a CALLERROR too: the CSMS could not decide)."""
        if not self.reachable():
            raise OnlineUnavailable("not connected to the central system")
        try:
            conf = await self.ctx.link.call(call.Authorize(id_tag=id_tag(token.id)))
        except (OcppOffline, OcppCallError, TimeoutError) as e:
            raise OnlineUnavailable(str(e) or type(e).__name__) from None
        info = conf.id_tag_info or {}
        status = info.get("status")
        # ConcurrentTx (in use elsewhere) has no AuthStatus: it may not start a session.
        st = AuthStatus(status) if status in set(AuthStatus) else AuthStatus.INVALID
        return st, info.get("parent_id_tag"), _expiry_us(info.get("expiry_date"))


class LatestReadings:
    """The newest value of every quantity of every device on the bus, for meter values."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, tuple[Any, float]]] = {}

    def feed(self, r: Reading) -> None:
        """Keep one reading."""
        self.values.setdefault(r.device, {})[r.quantity] = (r.value, time.monotonic())

    def of(self, *devices: str | None) -> dict[str, Any]:
        """quantity -> value from `devices` (a later device wins), recent values only."""
        now = time.monotonic()
        out: dict[str, Any] = {}
        for dev in devices:
            # A copy first: the session ledger's thread reads this while the loop feeds it.
            for q, (v, at) in dict(self.values.get(dev or "", {})).items():
                if v is not None and now - at <= READING_MAX_AGE_S:
                    out[q] = v
        return out


class TxService:
    """See the module docstring."""

    def __init__(self, ctx: OcppContext):
        self.ctx = ctx
        self.keys = ctx.parts["config_keys"]
        self.outbox = Outbox(
            ctx.cfg.store.path,
            attempts=lambda: self.keys.get_int("TransactionMessageAttempts"),
            retry_interval_s=lambda: self.keys.get_int("TransactionMessageRetryInterval"),
            batch_size=lambda: ctx.cfg.ocpp.meter_values_batch if ctx.cfg.ocpp else 1,
        )
        self.readings = LatestReadings()
        # Readings for meter values; session events wake the sender (a session's messages
        # were committed in the engine's thread just before it published them).
        self._sub = ctx.bus.subscribe(*READINGS, SessionEvent, maxsize=20_000)
        self._periodic: dict[str, int] = {}  # session id -> µs of its last periodic sample
        self._clock_slot: int | None = None
        self.authorizer = CsmsAuthorizer(ctx)
        ctx.parts.update(outbox=self.outbox, transactions=self, online_authorizer=self.authorizer)

    def attach_sessions(self, engine: SessionEngine) -> None:
        """Plug into the session engine: ledger hook, online authorizer, policy."""
        if any(isinstance(h, TxJournal) for h in engine.ledger.hooks):
            return
        journal = TxJournal(self.keys, self._public_key, self.values_of)
        engine.ledger.hooks.append(journal)
        engine.authorizer.online = self.authorizer
        engine.authorizer.policy = self.auth_policy
        try:
            with engine.store.tx() as c:
                adopted = journal.adopt_active(c)
        except Exception:  # the close still queues the start (TxJournal.closed)
            log.exception("ocpp.adopt_failed", hint="running sessions start at their stop")
            return
        if adopted:
            log.info("ocpp.sessions_adopted", sessions=[s[:8] for s in adopted])

    # ------------------------------------------------------------------ plumbing

    def _public_key(self, connector: int) -> str | None:
        engine = self.ctx.sessions
        try:
            return None if engine is None else engine.public_key_hex(connector)
        except (AssertionError, KeyError, AttributeError):
            return None

    def auth_policy(self) -> AuthPolicy:
        """The engine's authorization switches, from the configuration keys."""
        k = self.keys
        return AuthPolicy(
            local_pre_authorize=k.get_bool("LocalPreAuthorize"),
            local_authorize_offline=k.get_bool("LocalAuthorizeOffline"),
            cache_enabled=k.get_bool("AuthorizationCacheEnabled"),
            allow_offline_unknown=k.get_bool("AllowOfflineTxForUnknownId"),
            local_list_enabled=k.get_bool("LocalAuthListEnabled"),
        )

    def backlog(self) -> dict[str, Any]:
        """The outbox summary (blocking: a few counts)."""
        return self.outbox.backlog()

    async def run(self) -> None:
        """Drain the outbox, keep the latest readings and sample meter values."""
        tasks = [
            asyncio.create_task(self.outbox.drain(self.ctx.link, self._delivered), name="ocpp tx"),
            asyncio.create_task(self._collect(), name="ocpp readings"),
            asyncio.create_task(self._sample_loop(), name="ocpp meter values"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            await cancel_and_wait(tasks)
            self._sub.close()

    def close(self) -> None:
        """Close the outbox's store connection and the bus subscription."""
        self._sub.close()
        self.outbox.close()

    async def _collect(self) -> None:
        async for ev in self._sub:
            if isinstance(ev, READINGS):
                for r in ev.samples():
                    self.readings.feed(r)
            elif ev.kind in ("started", "stopped"):
                self.outbox.notify()

    # ------------------------------------------------------------------ StartTransaction.conf

    async def _delivered(self, row: OutboxRow, result: Any) -> None:
        if row.action in ("StartTransaction", "StopTransaction"):
            await self._cache_id_tag(row, getattr(result, "id_tag_info", None))
        if row.action != "StartTransaction":
            return
        tx_id = int(result.transaction_id)
        smart = self.ctx.parts.get("smart_charging")
        conn = self._live_conn(row.connector, row.session_id)
        if smart is not None and conn is not None:
            smart.set_transaction_id(row.connector, tx_id)
        status = (result.id_tag_info or {}).get("status")
        log.info(
            "ocpp.transaction_id",
            session=row.session_id[:8],
            connector=row.connector,
            transaction_id=tx_id,
            id_tag_status=status,
        )
        if status == AuthStatus.ACCEPTED or conn is None:
            return
        await self._invalid_id(conn, row.session_id, str(status))

    async def _cache_id_tag(self, row: OutboxRow, info: dict[str, Any] | None) -> None:
        """Start/StopTransaction.conf's idTagInfo updates the authorization cache like an
        Authorize.conf (OCPP 1.6 §3.5.2; AuthorizationCacheEnabled). ConcurrentTx says
        nothing lasting about the token: the cache keeps what it had."""
        engine = self.ctx.sessions
        tag = row.payload.get("idTag")
        status = (info or {}).get("status")
        if engine is None or not tag or status not in set(AuthStatus):
            return
        cached = await asyncio.to_thread(
            engine.authorizer.remember,
            tag,
            AuthStatus(status),
            info.get("parent_id_tag"),
            to_us(utcnow()),
            _expiry_us(info.get("expiry_date")),
        )
        if cached:
            log.info("ocpp.auth_cache_updated", action=row.action, id_tag=mask(tag), status=status)

    async def _invalid_id(self, conn: Connector, session_id: str, status: str) -> None:
        """StartTransaction.conf refused the token of a running session."""
        if self.keys.get_bool("StopTransactionOnInvalidId"):
            log.warning("ocpp.invalid_id_stop", session=session_id[:8], status=status)

            async def stop() -> None:
                s = conn.session
                if s is not None and s.id == session_id:
                    await conn.stop(StopReason.DEAUTHORIZED, "csms", f"idTag {status}")

            await conn.call(stop)
            return
        max_wh = self.keys.get_int("MaxEnergyOnInvalidId")
        if max_wh <= 0:
            return
        log.warning("ocpp.invalid_id_cap", session=session_id[:8], status=status, max_wh=max_wh)

        async def cap() -> None:
            # The transaction's total, not energy since the conf: OCPP 1.6's key table
            # defines it as "Maximum energy in Wh delivered when an identifier is
            # invalidated by the Central System after start of a transaction" (as quoted by
            # rust-ocpp's docs); nothing there counts from the invalidation. A transaction
            # already past it (e.g. charged offline) stops at the next limit check.
            s = conn.session
            if s is None or s.id != session_id:
                return
            if s.limits.max_energy_wh is None or max_wh < s.limits.max_energy_wh:
                s.limits = s.limits.model_copy(update={"max_energy_wh": max_wh})

        await conn.call(cap)

    def _live_conn(self, connector: int, session_id: str) -> Connector | None:
        engine = self.ctx.sessions
        conn = None if engine is None else engine.connectors.get(connector)
        if conn is None or conn.session is None or conn.session.id != session_id:
            return None
        return conn

    # ------------------------------------------------------------------ meter values

    def values_of(self, connector: int) -> dict[str, Any]:
        """The connector's current quantities (EVSE first, its meter wins)."""
        cc = next((c for c in self.ctx.cfg.connector if c.id == connector), None)
        if cc is None:
            return {}
        return self.readings.of(cc.evse, cc.meter or cc.evse)

    def _payload(
        self, connector: int, measurands: list[str], context: str, now_us: int
    ) -> dict[str, Any] | None:
        svs = mv.sampled_values(self.values_of(connector), measurands, context)
        if not svs:
            return None
        return {"connectorId": connector, "meterValue": [mv.meter_value(now_us, svs)]}

    async def _sample_loop(self) -> None:
        while True:
            now = to_us(utcnow())
            try:
                await self._periodic_due(now)
                await self._clock_due(now)
            except Exception:  # one bad sample must not end meter values for good
                log.exception("ocpp.meter_values_failed")
            await asyncio.sleep(self._next_wake(now))

    def _next_wake(self, now: int) -> float:
        waits = [SAMPLER_TICK_S]
        clock = self.keys.get_int("ClockAlignedDataInterval")
        if clock > 0:
            step = clock * US
            waits.append(((now // step + 1) * step - now) / US)
        interval = self.keys.get_int("MeterValueSampleInterval")
        if interval > 0:
            for last in self._periodic.values():
                waits.append((last + interval * US - now) / US)
        return max(0.01, min(waits))

    async def _periodic_due(self, now: int) -> None:
        engine = self.ctx.sessions
        interval = self.keys.get_int("MeterValueSampleInterval")
        live: set[str] = set()
        if engine is None:
            return
        for cid, conn in engine.connectors.items():
            s = conn.session
            if s is None:
                continue
            live.add(s.id)
            last = self._periodic.setdefault(s.id, s.row.started_ts)
            if interval <= 0 or now < last + interval * US:
                continue
            self._periodic[s.id] = now
            measurands = mv.parse_measurands(",".join(self.keys.get_list("MeterValuesSampledData")))
            payload = self._payload(cid, measurands, mv.PERIODIC, now)
            if payload is not None:
                with disk_full_tolerated("ocpp outbox: meter values"):
                    await asyncio.to_thread(self.outbox.enqueue, s.id, cid, "MeterValues", payload)
        for sid in set(self._periodic) - live:
            del self._periodic[sid]

    async def _clock_due(self, now: int) -> None:
        interval = self.keys.get_int("ClockAlignedDataInterval")
        if interval <= 0:
            self._clock_slot = None
            return
        slot = now // (interval * US)
        if self._clock_slot is None or slot == self._clock_slot:
            self._clock_slot = slot
            return
        self._clock_slot = slot
        at = slot * interval * US  # the boundary, not when this loop woke
        measurands = mv.parse_measurands(",".join(self.keys.get_list("MeterValuesAlignedData")))
        engine = self.ctx.sessions
        for cc in self.ctx.cfg.connector:
            payload = self._payload(cc.id, measurands, mv.CLOCK, at)
            if payload is None:
                continue
            conn = None if engine is None else engine.connectors.get(cc.id)
            s = None if conn is None else conn.session
            if s is not None:
                with disk_full_tolerated("ocpp outbox: meter values"):
                    await asyncio.to_thread(
                        self.outbox.enqueue, s.id, cc.id, "MeterValues", payload
                    )
            elif self.ctx.link.online.is_set():
                with contextlib.suppress(OcppOffline, OcppCallError, TimeoutError):
                    await self.ctx.link.call(call.MeterValues(**camel_to_snake_case(payload)))

    async def send_meter_values(self, connector_id: int | None = None) -> None:
        """TriggerMessage(MeterValues): the current values now, context Trigger (all
        connectors when `connector_id` is None or 0). Sent directly, not queued."""
        ids = [c.id for c in self.ctx.cfg.connector]
        if connector_id:
            ids = [i for i in ids if i == connector_id]
        measurands = mv.parse_measurands(",".join(self.keys.get_list("MeterValuesSampledData")))
        now = to_us(utcnow())
        engine = self.ctx.sessions
        for cid in ids:
            payload = self._payload(cid, measurands, mv.TRIGGER, now)
            if payload is None:  # no current value to report
                continue
            conn = None if engine is None else engine.connectors.get(cid)
            if conn is not None and conn.session is not None:
                tx = await asyncio.to_thread(self.outbox.transaction_id, conn.session.id)
                if tx is not None:
                    payload["transactionId"] = tx
            await self.ctx.link.call(
                call.MeterValues(**camel_to_snake_case(payload)), triggered=True
            )
