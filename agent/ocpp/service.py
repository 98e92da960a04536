"""The OCPP connection: WebSocket to the CSMS, security profiles, boot, heartbeat, reconnect.

    svc = OcppService(cfg, bus)                  # raises OcppSetupError on a bad setup
    svc.attach_sessions(engine)                  # the session engine, once it exists
    task = asyncio.create_task(svc.run())        # connects, boots, reconnects forever

The service is the `OcppLink` of every charge point instance (agent/ocpp/client.py), one per
connection. Security profiles (OCA whitepaper "Improved security for OCPP 1.6-J"):
0 none; 1 HTTP Basic auth (user = charge point id, password from `password_file`, which must
be mode 0600 or stricter); 2 TLS, the CSMS's certificate verified against `ca_file`, plus
Basic auth; 3 TLS with the client certificate `cert_file`/`key_file`. The highest profile
ever used is persisted (`ocpp_state.security_profile`): a config or a CSMS asking for a
lower one is refused.

Reset: Soft stops running sessions (reason SoftReset), then closes the WebSocket and connects
and boots again. Hard stops them (HardReset) and makes `run()` raise `HardReset`: the agent
stops cleanly and `evedge run` exits with EXIT_HARD_RESET (75, EX_TEMPFAIL), which the unit's
`Restart=on-failure` turns into a restart of the whole process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import random
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from ocpp.exceptions import OCPPError
from ocpp.v16.enums import RegistrationStatus, ResetType
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent.bus import EventBus
from agent.config import StationConfig
from agent.events import FaultCleared, FaultRaised, SessionEvent, utcnow
from agent.ocpp.client import EvedgeChargePoint
from agent.ocpp.config import OcppConfig
from agent.ocpp.config_keys import ConfigKeys
from agent.ocpp.context import OcppCallError, OcppContext, OcppOffline
from agent.ocpp.handlers.core import (
    ActiveFaults,
    connector_ids,
    report_of,
    status_notification,
)
from agent.secretfile import SecretFileError, read_secret
from agent.security.log import SecurityEvents, SecurityLog, log_path_for
from agent.security.ocpp16 import outbox_sink
from agent.security.throttle import Throttled
from agent.sessions.model import StopReason
from agent.sessions.times import to_us
from agent.store.db import Store
from agent.tasks import cancel_and_wait
from agent.walls import Wall

log = structlog.get_logger(__name__)

SUBPROTOCOL = "ocpp1.6"
EXIT_HARD_RESET = 75  # EX_TEMPFAIL: systemd's Restart=on-failure restarts the agent
BOOT_RETRY_S = 30  # when the CSMS's boot answer carries no interval, or no answer came
PROFILE_KEY = "security_profile"
# Configuration keys whose change is a security event (whitepaper: security parameters).
SECURITY_KEYS = ("SecurityProfile", "AuthorizationKey")


class OcppSetupError(Exception):
    """The [ocpp] setup cannot work (file missing, password file too open, downgrade)."""


class HardReset(Exception):
    """The CSMS asked for a hard reset: stop the agent and exit with EXIT_HARD_RESET."""

    exit_code = EXIT_HARD_RESET


class OcppService:
    """See the module docstring."""

    def __init__(
        self,
        cfg: StationConfig,
        bus: EventBus,
        *,
        store: Store | None = None,
        security: SecurityEvents | None = None,
    ):
        if cfg.ocpp is None:
            raise ValueError("OcppService needs an [ocpp] section")
        self.cfg = cfg
        self.ocfg: OcppConfig = cfg.ocpp
        self.cp_id = self.ocfg.charge_point_id or cfg.station.id
        self.store = store or Store(cfg.store.path)
        self._own_store = store is None
        self.online = asyncio.Event()  # OcppLink: connected and boot accepted
        self.ctx = OcppContext(cfg=cfg, store=self.store, bus=bus, link=self)
        self.keys = ConfigKeys(cfg, self.store)
        self.keys.load()
        self.faults = ActiveFaults()
        self.faults.load(self.ctx)
        self.ctx.parts.update(
            charge_point_id=self.cp_id,
            config_keys=self.keys,
            service=self,
            faults=self.faults,
            status_sent={},
            wall=Wall("ocpp"),  # counts what the handlers did not expect (agent/ocpp/client.py)
        )
        self.keys.add_guard("SecurityProfile", self._refuse_profile_change)
        self._password: str | None = None
        self._ssl: ssl.SSLContext | None = None
        self._check_security()
        self.cp: EvedgeChargePoint | None = None
        self.connected = False
        self.boot_status: str | None = None
        self.last_heartbeat: datetime | None = None
        self.last_error: str | None = None
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._reset: str | None = None
        self._heartbeat_changed = asyncio.Event()
        self.keys.subscribe("HeartbeatInterval", lambda *_: self._heartbeat_changed.set())
        self._status_sub = bus.subscribe(SessionEvent, FaultRaised, FaultCleared, maxsize=10_000)
        EvedgeChargePoint.setup(self.ctx)
        # The security events port (agent/security/): the composition root passes the
        # agent's; alone (tests, CLI) the service writes the same log beside the store.
        self.security = security or SecurityLog(log_path_for(cfg.store.path))
        self.ctx.parts["security_events"] = self.security
        self.ctx.parts["invalid_messages"] = Throttled(self.security)  # the wall's refusals
        self.security.add_sink(outbox_sink(self.ctx.parts["outbox"]))
        for key in SECURITY_KEYS:  # changed by the CSMS (ChangeConfiguration accepted)
            self.keys.subscribe(key, self._security_key_changed)
        self._security_failure: str | None = None  # one event per failure streak

    # ------------------------------------------------------------------ setup

    def attach_sessions(self, engine: Any) -> None:
        """Give the handlers the session engine; registers MeterPublicKey<connectorId>."""
        self.ctx.sessions = engine
        for part in list(self.ctx.parts.values()):  # e.g. transactions: ledger hook, policy
            attach = getattr(part, "attach_sessions", None)
            if part is not self and callable(attach):
                attach(engine)
        for cid in sorted(engine.connectors):
            self.keys.add_readonly(f"MeterPublicKey{cid}", lambda c=cid: engine.public_key_hex(c))

    def _check_security(self) -> None:
        """Files of the security profile, and no downgrade; OcppSetupError saying what's wrong."""
        o, profile = self.ocfg, self.ocfg.security_profile
        floor = self._profile_floor()
        if profile < floor:
            raise OcppSetupError(
                f"[ocpp] security_profile {profile} is lower than profile {floor}, which this "
                "station already used with its CSMS: downgrade refused. Raise security_profile "
                f"to {floor} or more (a deliberate downgrade: delete the row key = "
                f"'{PROFILE_KEY}' from the store table ocpp_state)"
            )
        if profile in (1, 2):
            self._password = _read_password(o.password_file)
        if profile >= 2:
            self._ssl = _client_ssl(o)
        self._set_floor(profile)

    def _profile_floor(self) -> int:
        with self.store.reading() as c:
            row = c.execute("SELECT value FROM ocpp_state WHERE key = ?", (PROFILE_KEY,)).fetchone()
        return int(row[0]) if row else 0

    def _set_floor(self, profile: int) -> None:
        if profile <= self._profile_floor():
            return
        with self.store.tx() as c:
            c.execute(
                "INSERT INTO ocpp_state (key, value, updated_ts) VALUES (?, ?, ?) ON CONFLICT "
                "(key) DO UPDATE SET value = excluded.value, updated_ts = excluded.updated_ts",
                (PROFILE_KEY, str(profile), to_us(utcnow())),
            )

    def _refuse_profile_change(self, value: str) -> str | None:
        current = self.ocfg.security_profile
        if int(value) < current:
            return f"downgrade from security profile {current} to {value} refused"
        if int(value) > current:
            return (
                f"security profile {value} needs its URL and files in the [ocpp] config; "
                f"raise security_profile there (running profile {current})"
            )
        return None

    @property
    def url(self) -> str:
        """The WebSocket URL: base URL + "/" + charge point id."""
        return self.ocfg.url.rstrip("/") + "/" + self.cp_id

    # ------------------------------------------------------------------ OcppLink

    async def call(
        self,
        payload: Any,
        *,
        triggered: bool = False,
        unique_id: str | None = None,
        validate: bool = True,
    ) -> Any:
        """Send one call; see `OcppLink.call` (agent/ocpp/context.py). `unique_id`: the
        message id to use (the transaction outbox re-sends a message under the same id)."""
        cp = self.cp
        action = type(payload).__name__
        if cp is None or not self.connected:
            raise OcppOffline(f"{action}: not connected to the CSMS")
        if not self.online.is_set() and not triggered and action != "BootNotification":
            raise OcppOffline(f"{action}: the CSMS has not accepted the boot yet")
        try:
            return await cp.call(
                payload, suppress=False, unique_id=unique_id, skip_schema_validation=not validate
            )
        except OCPPError as e:
            code = "FormationViolation" if e.code == "FormatViolation" else e.code
            raise OcppCallError(action, code, str(e.description)) from None
        except ConnectionClosed as e:
            raise OcppOffline(f"{action}: connection closed while sending ({e})") from None

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Connect, boot, heartbeat; reconnect with backoff; raises HardReset on Reset Hard."""
        watcher = asyncio.create_task(self._watch_status(), name="ocpp status")
        # Long-lived parts with a `run()` (transactions: outbox + meter values, smart
        # charging) run as long as the service, across connections.
        parts = [
            asyncio.create_task(p.run(), name=f"ocpp {name}")
            for name, p in self.ctx.parts.items()
            if p is not self and inspect.iscoroutinefunction(getattr(p, "run", None))
        ]
        backoff = self.ocfg.reconnect_min_s
        try:
            while True:
                booted = await self._connection()
                if self._reset == ResetType.hard:
                    raise HardReset("the CSMS asked for a hard reset")
                if self._reset == ResetType.soft or booted:
                    backoff = self.ocfg.reconnect_min_s
                self._reset = None
                delay = random.uniform(backoff / 2, backoff)  # jitter: stations don't stampede
                log.info("ocpp.reconnect_in", seconds=round(delay, 2))
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.ocfg.reconnect_max_s)
                self.reconnects += 1
        finally:
            await cancel_and_wait([watcher, *parts])
            await self._cancel_uploads()

    async def _connection(self) -> bool:
        """One WebSocket connection from connect to close; True if the boot was accepted."""
        headers = {}
        if self._password is not None:
            token = base64.b64encode(f"{self.cp_id}:{self._password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        ping = self.keys.get_int("WebSocketPingInterval") or None
        booted = False
        try:
            async with connect(
                self.url,
                subprotocols=[SUBPROTOCOL],
                additional_headers=headers,
                ssl=self._ssl,
                open_timeout=self.keys.get_int("ConnectionTimeOut"),
                ping_interval=ping,
                ping_timeout=self.ocfg.ping_timeout_s if ping else None,
                close_timeout=2,
                max_size=2**20,
            ) as ws:
                if ws.subprotocol != SUBPROTOCOL:
                    self.last_error = f"CSMS did not accept subprotocol {SUBPROTOCOL}"
                    log.error("ocpp.connect_failed", url=self._safe_url(), error=self.last_error)
                    return False
                booted = await self._serve(ws)
        except InvalidStatus as e:
            code = e.response.status_code
            self.last_error = f"HTTP {code} from the CSMS"
            hint = "check the password file and charge point id" if code in (401, 403) else None
            log.error("ocpp.connect_refused", url=self._safe_url(), status=code, hint=hint)
            if code in (401, 403):
                self._security_event("FailedToAuthenticateAtCsms", f"HTTP {code} at connect")
        except ssl.SSLCertVerificationError as e:
            self.last_error = f"TLS: {e.verify_message}"
            log.error(
                "ocpp.tls_failed",
                url=self._safe_url(),
                error=e.verify_message,
                hint="the CSMS certificate does not verify against [ocpp] ca_file",
            )
            self._security_event("InvalidCsmsCertificate", e.verify_message)
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("ocpp.connect_failed", url=self._safe_url(), error=self.last_error)
        return booted

    def _security_key_changed(self, key: str, value: str) -> None:
        # The value may be a secret (AuthorizationKey): only the key's name is recorded.
        self.security.record("ReconfigurationOfSecurityParameters", f"{key} changed by the CSMS")

    def _security_event(self, type: str, tech_info: str) -> None:
        """Record a connect failure once per streak: reconnecting every few seconds must not
        flood the log and the CSMS with the same event."""
        if self._security_failure != type:
            self._security_failure = type
            self.security.record(type, tech_info)

    async def _serve(self, ws: ClientConnection) -> bool:
        cp = EvedgeChargePoint(self.ctx, ws, response_timeout=self.ocfg.call_timeout_s)
        self._ws, self.cp, self.connected = ws, cp, True
        self._security_failure = None
        log.info("ocpp.connected", url=self._safe_url(), profile=self.ocfg.security_profile)
        reader = asyncio.create_task(cp.start(), name="ocpp receive")
        life = asyncio.create_task(self._boot_and_beat(cp), name="ocpp boot+heartbeat")
        booted = False
        try:
            await asyncio.wait([reader, life], return_when=asyncio.FIRST_COMPLETED)
            booted = self.online.is_set() or (life.done() and not life.cancelled())
            for t in (reader, life):
                if t.done() and not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    if not isinstance(exc, ConnectionClosed):
                        log.error("ocpp.connection_task_failed", error=repr(exc))
        finally:
            booted = booted or self.online.is_set()
            self.online.clear()
            self.connected = False
            await cancel_and_wait([reader, life])
            with contextlib.suppress(Exception):
                await cp.on_offline()
            self.cp, self._ws = None, None
            log.info("ocpp.disconnected", url=self._safe_url())
        return booted

    async def _boot_and_beat(self, cp: EvedgeChargePoint) -> None:
        while True:
            try:
                conf = await cp.send_boot_notification()
            except (TimeoutError, OcppCallError) as e:
                log.warning("ocpp.boot_failed", error=str(e))
                await asyncio.sleep(BOOT_RETRY_S)
                continue
            self.boot_status = conf.status
            interval = int(conf.interval or 0)
            log.info("ocpp.boot", status=conf.status, interval=interval)
            if conf.status == RegistrationStatus.accepted:
                if interval > 0:
                    await self.keys.change("HeartbeatInterval", str(interval))
                break
            # Pending / Rejected: nothing else is sent until the CSMS accepts (it may still
            # talk to us meanwhile, e.g. ChangeConfiguration or TriggerMessage).
            await asyncio.sleep(interval or BOOT_RETRY_S)
        self.online.set()
        try:
            await cp.on_online()
        except (OcppOffline, OcppCallError, TimeoutError) as e:
            log.warning("ocpp.on_online_failed", error=str(e))
        await self._heartbeats(cp)

    async def _heartbeats(self, cp: EvedgeChargePoint) -> None:
        while True:
            interval = self.keys.get_int("HeartbeatInterval")
            self._heartbeat_changed.clear()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout: Python 3.11's wait_for may lose a cancel.
                async with asyncio.timeout(interval or None):
                    await self._heartbeat_changed.wait()
                continue  # the interval changed: start over with the new one
            try:
                await cp.send_heartbeat()
                self.last_heartbeat = utcnow()
            except (TimeoutError, OcppCallError) as e:
                log.warning("ocpp.heartbeat_failed", error=str(e))

    async def _watch_status(self) -> None:
        """StatusNotification whenever what a connector reports (status, errorCode, info,
        vendorId, vendorErrorCode) changes. With MinimumStatusDuration N > 0 a new report is
        sent once it held for N s: a status that flips back within N s is not sent at all."""
        loop = asyncio.get_running_loop()
        # connector -> (the report waiting to be sent, when it has held long enough)
        waiting: dict[int, tuple[tuple[str | None, ...], float]] = {}
        waiters: dict[int, asyncio.Task[None]] = {}
        try:
            async for ev in self._status_sub:
                if isinstance(ev, SessionEvent):  # connector 0's status follows all of them
                    changed = [ev.connector, 0]
                else:
                    changed = self.faults.apply(ev)
                if not self.online.is_set() or self.cp is None:
                    continue  # every connector's status is sent after the next boot
                hold = self.keys.get_int("MinimumStatusDuration")
                for cid in changed:
                    if cid not in connector_ids(self.ctx):
                        continue
                    if hold <= 0:
                        await self._send_status_if_changed(cid)
                        continue
                    report = report_of(status_notification(self.ctx, cid))
                    if cid in waiting and waiting[cid][0] == report:
                        continue  # an event that changes nothing reported: keep the clock
                    waiting[cid] = (report, loop.time() + hold)
                    waiter = waiters.get(cid)
                    if waiter is None or waiter.done():
                        waiters[cid] = asyncio.create_task(
                            self._send_when_steady(cid, waiting), name=f"ocpp status {cid}"
                        )
        finally:
            await cancel_and_wait(list(waiters.values()))

    async def _send_when_steady(
        self, cid: int, waiting: dict[int, tuple[tuple[str | None, ...], float]]
    ) -> None:
        """Send connector `cid`'s report once it held (a change in `waiting` restarts it)."""
        loop = asyncio.get_running_loop()
        while cid in waiting:
            wait = waiting[cid][1] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            del waiting[cid]
            await self._send_status_if_changed(cid)

    async def _send_status_if_changed(self, cid: int) -> None:
        cp = self.cp
        if cp is None or not self.online.is_set():
            return  # on_online sends every connector after the next boot
        sent: dict[int, tuple[str | None, ...]] = self.ctx.parts["status_sent"]
        if sent.get(cid) == report_of(status_notification(self.ctx, cid)):
            return
        try:
            await cp.send_status(cid)
        except (OcppOffline, OcppCallError, TimeoutError) as e:
            log.warning("ocpp.status_failed", connector=cid, error=str(e))

    # ------------------------------------------------------------------ reset

    def schedule_reset(self, kind: str) -> None:
        """Reset.req was accepted: stop sessions, then reconnect (Soft) or exit (Hard)."""
        self._reset = kind
        task = asyncio.ensure_future(self._do_reset(kind))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _do_reset(self, kind: str) -> None:
        reason = StopReason.HARD_RESET if kind == ResetType.hard else StopReason.SOFT_RESET
        await self._cancel_uploads()
        eng = self.ctx.sessions
        if eng is not None:
            for cid in sorted(eng.connectors):
                try:
                    await eng.stop_for(cid, reason)
                except Exception:
                    log.exception("ocpp.reset_stop_failed", connector=cid)
        log.warning("ocpp.reset", type=kind)
        ws = self._ws
        if ws is not None:
            await ws.close(1000, f"{kind} reset")

    async def _cancel_uploads(self) -> None:
        """A GetDiagnostics upload does not outlive a Reset or the service."""
        diagnostics = self.ctx.parts.get("diagnostics")
        if diagnostics is not None:
            await cancel_and_wait(diagnostics.cancel())

    # ------------------------------------------------------------------ status, flush

    def state(self) -> dict[str, Any]:
        """For `evedge status`: connection, security, boot, heartbeat, outbox backlog, the
        unexpected errors the handlers' wall caught."""
        try:
            backlog = self.ctx.parts["outbox"].backlog()
        except Exception as e:  # a status display must not fail on it
            backlog = {"error": str(e)}
        hb = self.last_heartbeat
        return {
            "connected": self.connected,
            "online": self.online.is_set(),
            "url": self._safe_url(),
            "charge_point_id": self.cp_id,
            "security_profile": self.ocfg.security_profile,
            "boot_status": self.boot_status,
            "last_heartbeat": None if hb is None else hb.isoformat(),
            "heartbeat_interval_s": self.keys.get_int("HeartbeatInterval"),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "outbox": backlog,
            "backlog": backlog.get("pending") if isinstance(backlog, dict) else None,
            **self.ctx.parts["wall"].state(),  # internal_errors, last_internal_error
        }

    async def flush(self, timeout: float) -> None:
        """The agent's stop: let the outbox (transactions) send what it can in `timeout`."""
        await self.ctx.parts["outbox"].flush(timeout)

    def close(self) -> None:
        """Release the bus subscription and the store connection if the service opened it."""
        self._status_sub.close()
        tx = self.ctx.parts.get("transactions")  # the outbox's own store connection
        if tx is not None:
            tx.close()
        if self._own_store:
            self.store.close()

    def _safe_url(self) -> str:
        """The URL without credentials or query (never log secrets)."""
        u = urlsplit(self.url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
        return f"{u.scheme}://{host}{port}{u.path}"


def _read_password(path: Path | None) -> str:
    """The Basic-auth password; refused when the file is readable by group or others."""
    assert path is not None  # the config requires it for profiles 1 and 2
    try:
        password = read_secret(path, "[ocpp] password_file").strip()
    except SecretFileError as e:
        raise OcppSetupError(str(e)) from None
    if not 16 <= len(password) <= 40:
        # The whitepaper's AuthorizationKey is 16..40 characters; some CSMSs issue others.
        log.warning("ocpp.password_length", length=len(password), expected="16..40")
    if ":" in password:
        raise OcppSetupError(f"[ocpp] password_file {path}: ':' is not allowed in a password")
    return password


def _client_ssl(o: OcppConfig) -> ssl.SSLContext:
    """TLS that verifies the CSMS against `ca_file`; with the client certificate (profile 3)."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(o.ca_file))
    except (OSError, ssl.SSLError) as e:
        raise OcppSetupError(f"[ocpp] ca_file {o.ca_file}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # the whitepaper: TLS 1.2 or above
    if o.security_profile == 3:
        try:
            ctx.load_cert_chain(str(o.cert_file), str(o.key_file))
        except (OSError, ssl.SSLError) as e:
            raise OcppSetupError(
                f"[ocpp] cert_file {o.cert_file} / key_file {o.key_file}: {e}"
            ) from None
    return ctx
