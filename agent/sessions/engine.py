"""The session engine: one Connector task per connector, fed from the bus, with a command API.

    engine = SessionEngine(cfg, bus, station.devices)   # cfg.billing must be set
    task = asyncio.create_task(engine.run())
    await engine.authorize(1, card_token("DEMO-0042"))  # a card at connector 1's reader
    await engine.stop(1, by="remote")

Faults: the engine subscribes to `FaultRaised`/`FaultCleared` when agent.events defines them
(the diagnosis engine publishes them) and stops a session on a fault that makes its
connector Faulted. Without diagnosis, the EVSE's own control pilot state E/F stops it.
A latched fault (`FaultLatch`, rules that clear only on evidence or by hand) keeps its
connectors Faulted; only its "retry" state frees them for one new attempt, and its state
"active" (the defect is back) holds them again.
Faults raised before a restart and still active are not published again: the runtime hands
over `restored_faults` (the diagnosis service's), applied at start like a FaultRaised
(derating, Faulted) before any bus event.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from agent import events
from agent.billing import ocmf
from agent.billing.keys import PrivateKey, load_or_create_key, public_key_hex
from agent.billing.tariff import Tariff, TariffError, parse_tariff
from agent.billing.usable import check_usable
from agent.bus import EventBus
from agent.config import StationConfig
from agent.events import READINGS, DeviceHealth, HealthState, utcnow
from agent.security.log import SecurityEvents
from agent.sessions.auth import Authorizer, OnlineAuthorizer
from agent.sessions.clock import clock_status
from agent.sessions.config import (
    REMOTE_TARIFF_BASE_KEY,
    TariffChoice,
    choose_tariff,
    file_sha256,
    remote_tariff_path,
    write_tariff_file,
)
from agent.sessions.connector import CommandRefused, Connector
from agent.sessions.evse import EvseControl
from agent.sessions.failsafe import run_heartbeat
from agent.sessions.integrity import Integrity
from agent.sessions.ledger import Ledger
from agent.sessions.model import AuthMethod, IdToken, StopReason
from agent.sessions.payment import PaymentTerminal
from agent.sessions.reviews import FaultsDuring
from agent.sessions.signing import AgentSigner, MeterSigner, ModbusSigningMeter, SigningMeter
from agent.sessions.store import SessionStore, set_state
from agent.sessions.times import from_us, to_us
from agent.tasks import cancel_and_wait
from drivers.device import Device
from drivers.signing import OcmfSigningMeter

log = structlog.get_logger(__name__)

__all__ = ["CommandRefused", "SessionEngine", "fault_event_types"]

_EVSE_QUANTITIES = frozenset({"cp_state", "charger_state", "cable_state"})
# Tokens that are the same for every car (free vend) or new for every session (a payment
# reference, a technician's start): no vehicle identity for the diagnosis' sides.
_NOT_A_VEHICLE = frozenset({AuthMethod.FREE_VEND, AuthMethod.PAYMENT, AuthMethod.CLI})
RESTORE_WAIT_S = 30.0  # how long run() waits for the diagnosis' restored faults


def _version() -> str:
    try:
        return metadata.version("evedge")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def fault_event_types() -> tuple[type[events.Event], ...]:
    """FaultRaised/FaultCleared/FaultLatch if the diagnosis engine defined them (else none)."""
    return tuple(
        t
        for t in (getattr(events, n, None) for n in ("FaultRaised", "FaultCleared", "FaultLatch"))
        if t
    )


def _fault_fields(ev: Any) -> tuple[str, list[int], bool, str]:
    """(id, connectors, stops charging, text) of a FaultRaised/FaultCleared, read loosely:
    the diagnosis event's exact shape is its own (issue 3)."""
    fid = str(getattr(ev, "fault_id", None) or getattr(ev, "id", None) or "fault")
    conns = getattr(ev, "connectors", None)
    if conns is None:
        one = getattr(ev, "connector", None)
        conns = [] if one is None else [one]
    faulted = getattr(ev, "faulted", None)
    if faulted is None:
        faulted = getattr(ev, "connector_status", None) == "Faulted" or (
            str(getattr(ev, "severity", "")).lower() in ("critical", "fault", "error")
        )
    text = getattr(ev, "title", None) or getattr(ev, "root_cause", None) or fid
    if isinstance(text, dict):  # per language
        text = text.get("en") or next(iter(text.values()), fid)
    return fid, [int(c) for c in conns], bool(faulted), str(text)


def _signing_meters(
    cfg: StationConfig, devices: dict[str, Device], gateway: ocmf.Gateway
) -> dict[int, SigningMeter]:
    """A signing-register driver for each connector whose meter profile has [signing]."""
    out: dict[int, SigningMeter] = {}
    drivers: dict[str, ModbusSigningMeter] = {}
    for c in cfg.connector:
        dev = devices.get(c.meter or c.evse or "")
        if dev is None or dev.profile.signing is None:
            continue
        if dev.name not in drivers:
            drivers[dev.name] = ModbusSigningMeter(OcmfSigningMeter(dev), gateway)
        out[c.id] = drivers[dev.name]
    return out


class SessionEngine:
    """Sessions of every connector that has an EVSE; see the module docstring."""

    def __init__(
        self,
        cfg: StationConfig,
        bus: EventBus,
        devices: dict[str, Device],
        *,
        store: SessionStore | None = None,
        online: OnlineAuthorizer | None = None,
        terminal: PaymentTerminal | None = None,
        signing_meters: dict[int, SigningMeter] | None = None,
        security: SecurityEvents | None = None,
    ):
        if cfg.billing is None:
            raise ValueError("the session engine needs a [billing] section in the config")
        self.cfg = cfg
        self.billing = cfg.billing
        self.bus = bus
        self.devices = devices
        self.store = store or SessionStore(cfg.store.path)
        self._own_store = store is None
        # The agent's key signs every record when signer = "agent", and stands in for a
        # signing meter that fails to sign a session's end (the record says so).
        self.key: PrivateKey = load_or_create_key(self.billing.key_dir)
        gateway = ocmf.Gateway(serial=cfg.station.id, version=_version())
        if signing_meters is None and self.billing.signer == "meter":
            signing_meters = _signing_meters(cfg, devices, gateway)
        self._meter_signers = {c: MeterSigner(m) for c, m in (signing_meters or {}).items()}
        self.ledger = Ledger(self.store, cfg.station.id, AgentSigner(self.key, gateway))
        self.integrity = Integrity(self.store, cfg.station.id, self.key, security)
        self.integrity.start()  # a finding: security.tamper_detected, TamperDetectionActivated
        self.ledger.integrity = self.integrity
        self.authorizer = Authorizer(self.store, cfg.auth, online)
        # The remotely set tariff (state directory) or the config's file: see choose_tariff.
        self.tariff_choice: TariffChoice = choose_tariff(
            self.billing, self.store.path, self.store.state(REMOTE_TARIFF_BASE_KEY)
        )
        self.tariff = self.tariff_choice.tariff
        log.info("sessions.tariff_in_force", **self.tariff_choice.as_json())
        if self.tariff is not None and not self.tariff.is_valid_at(utcnow()):
            log.error(
                "sessions.tariff_not_in_force", tariff=self.tariff.id,
                start=self.tariff.start_date_time, end=self.tariff.end_date_time,
                hint="sessions are priced by it and flagged for review: set a current tariff",
            )  # fmt: skip
        self.terminal = terminal
        self.time_status = clock_status()
        self.measurands = set(self.billing.sampling.measurands) | {"energy_import_wh"}
        self.connectors: dict[int, Connector] = {}
        for c in cfg.connector:
            dev = devices.get(c.evse or "")
            if dev is None:
                log.warning(
                    "session.no_evse",
                    connector=c.id,
                    hint="a connector without an EVSE controller cannot run sessions",
                )
                continue
            if self.billing.signer == "meter" and c.id not in self._meter_signers:
                meter = devices.get(c.meter or c.evse or "")
                raise ValueError(
                    f"billing.signer = 'meter' but connector {c.id}'s meter "
                    f"{c.meter or c.evse!r} ({meter.profile.name if meter else 'no device'}) "
                    "cannot sign: its profile has no [signing] registers"
                )
            self.connectors[c.id] = Connector(self, c, EvseControl(dev))
        self._by_device: dict[str, list[Connector]] = {}
        for conn in self.connectors.values():
            for name in {conn.evse.name, conn.meter_device}:
                self._by_device.setdefault(name, []).append(conn)
        # Rule id -> current (A) a raised warning of that rule derates its connectors to
        # (the diagnosis rules' derate_a, handed over by the runtime); per connector, the
        # derating faults now active: fault id -> A.
        self.derate_limits: dict[str, float] = {}
        self._derating: dict[int, dict[str, float]] = {}
        # Latched faults whose retry freed their connectors for a new attempt.
        self._retrying: set[str] = set()
        # The faults still active from before a restart (FaultRaised events), when the
        # runtime hands the diagnosis service's over (see _restore_faults).
        self.restored_faults: Callable[[], Awaitable[list[Any]]] | None = None
        # The faults during a session, for its record's review (agent/sessions/reviews.py);
        # the runtime plugs in the store's fault history. None: records name no faults.
        self.faults_during: FaultsDuring | None = None
        # Subscribe now, not in run(): the first readings after start must not be missed.
        self._sub = bus.subscribe(*READINGS, DeviceHealth, *fault_event_types(), maxsize=50_000)

    # ------------------------------------------------------------------ plumbing

    def signer_kind(self, connector: int) -> str:
        """'meter' when the connector's meter signs, else 'agent'."""
        return "meter" if connector in self._meter_signers else "agent"

    def meter_signer(self, connector: int) -> MeterSigner | None:
        """The pass-through signer of a signing meter, if the connector has one."""
        return self._meter_signers.get(connector)

    def public_key_hex(self, connector: int) -> str:
        """The key that verifies the connector's OCMF records."""
        ms = self._meter_signers.get(connector)
        if ms is not None:
            return ms.public_key_hex
        return public_key_hex(self.key)

    def modulus(self, device: str) -> int | None:
        """Where the device's energy register wraps (unsigned integer registers), in Wh."""
        dev = self.devices.get(device)
        if dev is None:
            return None
        reg = next((r for r in dev.profile.readable() if r.quantity == "energy_import_wh"), None)
        if reg is None or reg.type not in ("u16", "u32", "u64") or reg.exponent_address:
            return None
        return round(2 ** (16 * reg.words) * reg.scale) or None

    async def run(self) -> None:
        """Seed the local list, recover each connector, then dispatch bus events."""
        await asyncio.to_thread(self.authorizer.seed, to_us(utcnow()))
        await self._restore_faults()  # before the connectors recover and offer any current
        log.info(
            "sessions.start",
            connectors=sorted(self.connectors),
            tariff=None if self.tariff is None else self.tariff.id,
            free_vend=self.billing.free_vend,
            clock=self.time_status.value,
            store=str(self.store.path),
        )
        tasks = [
            asyncio.create_task(c.run(), name=f"sessions connector {c.id}")
            for c in self.connectors.values()
        ]
        sess = self.cfg.sessions
        for dev in {c.evse.device.name: c.evse.device for c in self.connectors.values()}.values():
            if dev.profile.failsafe is not None:
                beat = run_heartbeat(dev, sess.failsafe_timeout_s, sess.failsafe_current_a)
                tasks.append(asyncio.create_task(beat, name=f"failsafe {dev.name}"))
        try:
            async for ev in self._sub:
                self._dispatch(ev)
                for t in tasks:
                    if t.done():
                        t.result()  # a crashed connector task ends the engine loudly
        finally:
            await cancel_and_wait(tasks)
            self._sub.close()

    async def _restore_faults(self) -> None:
        """Apply the faults active before a restart as if just raised, before the connector
        tasks start and before any queued bus event (a FaultCleared already queued for one
        of them then lifts it in order)."""
        if self.restored_faults is None:
            return
        try:
            faults = await asyncio.wait_for(self.restored_faults(), RESTORE_WAIT_S)
        except TimeoutError:
            log.warning(
                "sessions.faults_not_restored", waited_s=RESTORE_WAIT_S,
                hint="diagnosis did not restore its faults: derating and Faulted connectors "
                "from before the restart apply again only when raised anew",
            )  # fmt: skip
            return
        if faults:
            log.info("sessions.faults_restored", faults=[f.fault_id for f in faults])
        for ev in faults:
            self._on_fault(ev, restored=True)

    def _dispatch(self, ev: events.Event) -> None:
        if isinstance(ev, READINGS):
            for conn in self._by_device.get(ev.device, ()):
                for r in ev.samples():
                    conn.on_reading(r.device, r.quantity, r.value, r.ts)
        elif isinstance(ev, DeviceHealth):
            if ev.state == HealthState.OFFLINE:
                for conn in self._by_device.get(ev.device, ()):
                    if conn.meter_device == ev.device:
                        conn.on_meter_offline(ev.ts)
        else:
            self._on_fault(ev)

    def _on_fault(self, ev: Any, restored: bool = False) -> None:
        """A FaultRaised/FaultCleared: derate, or fault the connectors it makes Faulted.
        `restored`: raised before a restart, applied before the connector tasks start."""
        fid, conns, faulted, text = _fault_fields(ev)
        kind = type(ev).__name__
        if kind == "FaultLatch":
            self._on_latch(ev, fid, conns, faulted, text)
            return
        raised = kind == "FaultRaised"
        if not raised:
            self._retrying.discard(fid)
        for conn, amps in self._derate(ev, fid, conns, raised):
            if restored and amps is not None:  # no task runs yet: recovery offers this
                conn.limits["derate"] = amps
            else:
                self._spawn(conn, lambda c=conn, a=amps: c.set_limit("derate", a))
        for cid in conns:
            conn = self.connectors.get(cid)
            if conn is not None and (faulted or not raised):
                conn.note_fault(fid, raised, text)  # at once: see emergency_cause()
                self._spawn(conn, lambda c=conn: c.fault(fid, raised, text))

    def _on_latch(self, ev: Any, fid: str, conns: list[int], faulted: bool, text: str) -> None:
        """A latched fault's retry frees its connectors (a new session may try); the defect
        coming back (or the latch after the retry) holds them again."""
        retry = ev.state == "retry"
        if not faulted or retry == (fid in self._retrying):
            return  # a warning, or no change for the connectors
        if retry:
            self._retrying.add(fid)
            text = f"retry {ev.attempts + 1} of {ev.retries}: {text}"
        else:
            self._retrying.discard(fid)
        for cid in conns:
            conn = self.connectors.get(cid)
            if conn is not None:
                conn.note_fault(fid, not retry, text)
                self._spawn(conn, lambda c=conn: c.fault(fid, not retry, text))

    def _derate(
        self, ev: Any, fid: str, conns: list[int], raised: bool
    ) -> list[tuple[Connector, float | None]]:
        """A raised fault whose rule (or an explained symptom's) has derate_a caps its
        connectors' current as limit source "derate" (the lowest such fault wins); its
        FaultCleared lifts that cap. Returns each connector whose cap changes, with the new
        cap (None: no derating left)."""
        amps = None
        if raised:
            rules = [ev.rule, *(s.rule for s in getattr(ev, "explains", ()))]
            amps = min((self.derate_limits[r] for r in rules if r in self.derate_limits),
                       default=None)  # fmt: skip
            if amps is None:
                return []
        changed: list[tuple[Connector, float | None]] = []
        for cid in conns:
            conn = self.connectors.get(cid)
            active = self._derating.setdefault(cid, {})
            if conn is None or (not raised and active.pop(fid, None) is None):
                continue
            if amps is not None:
                active[fid] = amps
            limit = min(active.values(), default=None)
            log.info("sessions.derate", connector=cid, fault_id=fid, raised=raised, limit_a=limit)
            changed.append((conn, limit))
        return changed

    def _spawn(self, conn: Connector, fn: Callable[[], Awaitable[Any]]) -> None:
        fut = asyncio.ensure_future(conn.call(fn))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self) -> None:
        """Close the store connection if the engine opened it."""
        if self._own_store:
            self.store.close()

    def _conn(self, connector: int) -> Connector:
        try:
            return self.connectors[connector]
        except KeyError:
            known = ", ".join(str(c) for c in sorted(self.connectors)) or "none"
            raise CommandRefused(f"no connector {connector}; connectors: {known}") from None

    # ------------------------------------------------------------------ commands

    async def authorize(self, connector: int, token: IdToken) -> str:
        """A card at the connector's reader (start, or stop the card's own session)."""
        c = self._conn(connector)
        return await c.call(lambda: c.authorize(token))

    async def remote_start(self, connector: int, token: IdToken) -> str:
        """RemoteStartTransaction: authorized by the CSMS."""
        c = self._conn(connector)
        return await c.call(lambda: c.remote_start(token, AuthMethod.REMOTE))

    async def cli_start(self, connector: int, token: IdToken | None = None) -> str:
        """A technician's start from the CLI (local API)."""
        c = self._conn(connector)
        tok = token or IdToken("CLI", "LOCAL")
        return await c.call(lambda: c.remote_start(tok, AuthMethod.CLI))

    async def pay(self, connector: int) -> str:
        """The driver pays by card at the terminal."""
        c = self._conn(connector)
        return await c.call(c.pay)

    async def stop(self, connector: int, by: str = "remote") -> str:
        """Stop the connector's session: by "remote" (CSMS) or "cli" (technician)."""
        c = self._conn(connector)
        return await c.call(lambda: c.stop_command(by))

    async def stop_for(self, connector: int, reason: StopReason, by: str = "csms") -> bool:
        """Stop the connector's session for `reason` (OCPP Reset, UnlockConnector); False
        when none runs."""
        c = self._conn(connector)

        async def go() -> bool:
            if c.session is None:
                return False
            await c.stop(reason, by)
            return True

        return await c.call(go)

    async def deauthorize(self, token_id: str) -> int:
        """The token is no longer valid (CSMS or local list said so): stop its sessions."""
        stopped = 0
        for c in self.connectors.values():
            s = c.session
            if s is not None and s.token.id == token_id:
                await c.call(lambda c=c: c.stop(StopReason.DEAUTHORIZED, "deauthorized"))
                stopped += 1
        return stopped

    async def set_available(self, connector: int, available: bool) -> str:
        """ChangeAvailability (persisted)."""
        c = self._conn(connector)
        return await c.call(lambda: c.set_available(available))

    async def reserve(
        self, connector: int, token: IdToken, expires: datetime, reservation_id: int = 0
    ) -> str:
        """ReserveNow: hold the connector for `token` until `expires` (aware datetime).
        Returns the new status ("Reserved"); CommandRefused if it is busy or expiry is past."""
        c = self._conn(connector)
        return await c.call(lambda: c.reserve(token, expires, reservation_id))

    async def cancel_reservation(self, reservation_id: int) -> bool:
        """CancelReservation: True if a connector held that reservation (now released)."""
        for c in self.connectors.values():
            held = c.reservation
            if held is not None and held.id == reservation_id:
                await c.call(lambda c=c: c.end_reservation("cancelled"))
                return True
        return False

    async def set_limit(self, connector: int, source: str, amps: float | None) -> float:
        """Limit the connector's offered current from one source ("ocpp" smart charging,
        "local" technician, "derate" diagnosis; None drops that source's limit). The EVSE
        offers min(connector max_current_a, cable capacity, every source's limit) at once,
        verified by read-back; below 6 A the session is suspended (SuspendedEVSE). The
        "local" limit survives a restart. Returns the effective limit in A."""
        c = self._conn(connector)
        return await c.call(lambda: c.set_limit(source, amps))

    async def set_tariff(self, tariff: Tariff | str) -> str:
        """Replace the station's tariff (an OCPI 2.2.1 Tariff, or its JSON text): validated
        like the tariff file at load and refused unless in force now (check_usable;
        CommandRefused naming the field), kept atomically in
        the state directory beside the store (remote_tariff_path; the config's [billing]
        tariff file is never written), in force at once and after a restart. A running
        session gets a new charging period from now on, priced by the new tariff (OCMF
        reading TX=T). Returns its id."""
        config = self.billing.tariff
        if config is None:
            raise CommandRefused("no [billing] tariff: this station runs free vend")
        try:
            new = tariff if isinstance(tariff, Tariff) else parse_tariff(tariff, "tariff", "json")
            check_usable(new, self.billing.tariff_limits, utcnow())
        except TariffError as e:
            raise CommandRefused("; ".join(f"{p}: {m}" for p, m in e.problems)) from None
        currency = self.billing.currency or (self.tariff.currency if self.tariff else None)
        if currency is not None and new.currency != currency:
            raise CommandRefused(
                f"tariff {new.id} is in {new.currency}, the station bills {currency}"
            )
        path = remote_tariff_path(self.store.path)
        try:
            await asyncio.to_thread(self._keep_remote_tariff, path, config, new)
        except OSError as e:
            raise CommandRefused(f"tariff not saved to {path}: {e}") from None
        self.tariff = new
        self.tariff_choice = TariffChoice.remote(new, path, config)
        log.info("sessions.tariff_changed", tariff=new.id, file=str(path))
        for c in self.connectors.values():
            await c.call(lambda c=c: c.tariff_changed(new))
        return new.id

    def _keep_remote_tariff(self, path: Path, config: Path, tariff: Tariff) -> None:
        # The config file's hash first: a crash before the file is written leaves the old
        # remote tariff (or none) judged against the same, unchanged config file.
        base = file_sha256(config)
        with self.store.tx() as c:
            set_state(c, REMOTE_TARIFF_BASE_KEY, base)
        write_tariff_file(path, tariff)

    def effective_limit(self, connector: int) -> float:
        """The current the connector may offer now, in A (see set_limit)."""
        return self._conn(connector).effective_limit()

    # The diagnosis' ConnectorFacts (agent/diagnosis/facts.py) ---------------------------

    def charging_disabled_since(self, connector: int) -> datetime | None:
        """When this engine switched the connector's EVSE off and read it back (None: on)."""
        c = self.connectors.get(connector)
        return None if c is None else c.evse.disabled_since

    def vehicle(self, connector: int) -> str | None:
        """The vehicle charging now, as a short hash of its id token (never the token);
        None where the token names no driver (free vend, a payment, a technician)."""
        c = self.connectors.get(connector)
        if c is None or c.session is None or c.session.row.auth_method in _NOT_A_VEHICLE:
            return None
        return hashlib.sha256(c.session.token.id.encode()).hexdigest()[:8]

    async def fault(self, connector: int, fault_id: str, active: bool, detail: str = "") -> None:
        """Raise/clear a fault that stops charging (the hook FaultRaised events use)."""
        c = self._conn(connector)
        await c.call(lambda: c.fault(fault_id, active, detail))

    def status(self, connector: int) -> dict[str, Any]:
        """A connector's state for status displays."""
        c = self._conn(connector)
        s = c.session
        r = c.reservation
        return {
            "connector": c.id,
            "status": c.status.value,
            "cp_state": c.cp,
            "limit_a": c.effective_limit(),
            "limits": {"max": c.cfg.max_current_a, "cable": c.cable_a, **c.limits},
            "reservation": None
            if r is None
            else {"id": r.id, "id_tag": r.token.masked, "expires": from_us(r.expires_us)},
            "session_id": None if s is None else s.id,
            "energy_wh": None if s is None else s.tracker.billed_wh,
            "cost": None if s is None or s.cost is None else s.cost.to_json(),
        }
