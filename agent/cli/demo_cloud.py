"""The cloud side of `evedge demo`: ports, a test CSMS, a mosquitto broker, the CSMS's view.

`prepare(cfg, run_dir, say)` returns the config the demo runs with and what it started:

- Ports. The demo config's loopback ports (simulator 15020-15022, CSMS 15023, broker
  15024) stay as they are when free, so `evedge simctl` and `python -m hil.csms` examples
  work as documented; when any is taken, every one of them moves to a free port and `say`
  tells which (the effective config is also written to `<run_dir>/config.json`).
- OCPP. When `[ocpp] url` is a plain `ws://` URL on loopback, the demo serves hil/csms.py's
  TestCsms there in-process — unless something already answers HTTP there (the user's own
  SteVe or CitrineOS): then that one is used, as is any other URL and `--csms URL`.
- MQTT. When `[mqtt] host` is loopback and mosquitto is installed (/usr/sbin/mosquitto or
  on PATH), a broker (hil/broker.py, anonymous, no persistence, files in `run_dir`, in its
  own process group so Ctrl-C reaches the demo alone and the outboxes can still deliver)
  runs on that port for the demo's lifetime — unless a broker already answers MQTT CONNECT
  there, which is then used, as is `--broker HOST:PORT`. Without mosquitto the `[mqtt]`
  section is dropped and `say` tells why. `$EVEDGE_MOSQUITTO` overrides where mosquitto is
  looked for (the tests use it to run the demo as if it were absent).

`CsmsView` follows what the central system received (per connector: transaction id, id tag,
meter start/stop, meter values, the limit it set) for the live view and the JSON stream;
`LimitScript` plays the CSMS operator: midway through each transaction it caps the current
with SetChargingProfile and later clears it, so the offered current visibly drops and recovers.
"""

from __future__ import annotations

import asyncio
import grp
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from pydantic import ValidationError

from agent.config import StationConfig
from agent.events import utcnow
from agent.tasks import cancel_and_wait
from hil.broker import MOSQUITTO_ENV, Mosquitto, mosquitto_path
from hil.csms import Received, TestCsms
from hil.procs import free_port

log = structlog.get_logger(__name__)

LIMIT_AFTER_S = 12.0  # into a transaction, the CSMS caps the current …
LIMIT_FOR_S = 12.0  # … for this long, then clears the cap
LIMIT_A = 16.0
LIMIT_PROFILE_ID = 901

Say = Callable[[str], None]


def _loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_free(port: int) -> bool:
    """Can we listen on 127.0.0.1:`port` right now? (With SO_REUSEADDR, as the servers
    bind: a port whose last connections linger in TIME_WAIT is free to them.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Ports:
    """The loopback ports the demo serves, by role."""

    roles: dict[str, int]

    @classmethod
    def of(cls, cfg: StationConfig, own: Own) -> Ports:
        """The ports the demo itself serves (`own`: whether it serves the CSMS, the broker)."""
        roles = {"simulator control": cfg.sim.control_port}
        for d in cfg.device:
            if d.host is not None and _loopback(d.host):
                roles[f"device {d.name}"] = d.port
        if own.csms:
            roles["CSMS"] = _csms_port(cfg)
        if own.broker:
            roles["MQTT broker"] = cfg.mqtt.port
        return cls(roles)

    def taken(self) -> list[str]:
        return [f"{role} {port}" for role, port in self.roles.items() if not port_free(port)]

    def moved(self) -> Ports:
        """Every role on a fresh free port."""
        return Ports({role: free_port() for role in self.roles})

    def apply(self, cfg: StationConfig) -> StationConfig:
        """The config with these ports."""
        r = self.roles
        update: dict[str, Any] = {
            "sim": cfg.sim.model_copy(update={"control_port": r["simulator control"]}),
            "device": [
                d.model_copy(update={"port": r[f"device {d.name}"]})
                if f"device {d.name}" in r
                else d
                for d in cfg.device
            ],
        }
        if "CSMS" in r and cfg.ocpp is not None:
            update["ocpp"] = cfg.ocpp.model_copy(update={"url": f"ws://127.0.0.1:{r['CSMS']}"})
        if "MQTT broker" in r and cfg.mqtt is not None:
            update["mqtt"] = cfg.mqtt.model_copy(update={"port": r["MQTT broker"]})
        return cfg.model_copy(update=update)


def _csms_port(cfg: StationConfig) -> int | None:
    """The port of a plain-ws loopback CSMS URL (the demo serves it), else None."""
    assert cfg.ocpp is not None
    u = urlsplit(cfg.ocpp.url)
    if u.scheme != "ws" or not _loopback(u.hostname) or cfg.ocpp.security_profile != 0:
        return None
    return u.port or 80


PROBE_S = 1.0  # how long a loopback CSMS or broker may take to answer the probe
# MQTT 3.1.1 CONNECT, clean session, keep-alive 10 s, client id "evedge-probe".
_MQTT_CONNECT = bytes([0x10, 24, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 12]) + b"evedge-probe"


def _answers(port: int, request: bytes, reply_prefix: bytes) -> bool:
    """Does a server on 127.0.0.1:`port` answer `request` with `reply_prefix` in PROBE_S?
    (A port merely taken — by a listener that says nothing — does not answer.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_S) as s:
            s.sendall(request)
            return s.recv(len(reply_prefix)) == reply_prefix
    except OSError:
        return False


def csms_answers(port: int) -> bool:
    """An HTTP server (a CSMS's WebSocket endpoint) on loopback `port`."""
    return _answers(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/")


def broker_answers(port: int) -> bool:
    """An MQTT broker on loopback `port` (it answers CONNECT with CONNACK)."""
    return _answers(port, _MQTT_CONNECT, b"\x20")


@dataclass
class Own:
    """Which cloud peers the demo serves itself (the others are the user's)."""

    csms: bool
    broker: bool

    @classmethod
    def of(cls, cfg: StationConfig, say: Say) -> Own:
        """Serve a loopback CSMS / broker of the config unless one already answers there."""
        csms = cfg.ocpp is not None and _csms_port(cfg) is not None
        if csms and csms_answers(_csms_port(cfg)):
            say(f"OCPP: a CSMS already answers at {cfg.ocpp.url}: the demo connects to it")
            csms = False
        broker = cfg.mqtt is not None and _loopback(cfg.mqtt.host)
        if broker and broker_answers(cfg.mqtt.port):
            say(f"MQTT: a broker already answers on {cfg.mqtt.host}:{cfg.mqtt.port}: using it")
            broker = False
        return cls(csms, broker)


def with_peers(cfg: StationConfig, csms: str | None, broker: str | None) -> StationConfig:
    """The config pointed at the user's CSMS (`ws://…` URL) and broker (`HOST:PORT`);
    ValueError with a message naming the option when one is not usable."""
    update: dict[str, Any] = {}
    if csms is not None:
        if cfg.ocpp is None:
            raise ValueError("--csms: the config has no [ocpp] section to point at it")
        try:
            update["ocpp"] = type(cfg.ocpp).model_validate({**cfg.ocpp.model_dump(), "url": csms})
        except ValidationError as e:
            raise ValueError(f"--csms {csms}: {e.errors()[0]['msg']}") from None
    if broker is not None:
        if cfg.mqtt is None:
            raise ValueError("--broker: the config has no [mqtt] section to point at it")
        host, sep, port = broker.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--broker wants HOST:PORT, got {broker!r}")
        try:
            update["mqtt"] = type(cfg.mqtt).model_validate(
                {**cfg.mqtt.model_dump(), "host": host, "port": int(port)}
            )
        except ValidationError as e:
            raise ValueError(f"--broker {broker}: {e.errors()[0]['msg']}") from None
    return cfg.model_copy(update=update)


@dataclass
class Cloud:
    """What `prepare` started; `close()` stops it."""

    cfg: StationConfig
    csms: TestCsms | None = None
    broker: Mosquitto | None = None
    mqtt_skipped: str | None = None

    async def close(self) -> None:
        """Stop the broker and the CSMS (after the agent stopped)."""
        if self.broker is not None:
            await self.broker.stop_async()
        if self.csms is not None:
            await self.csms.stop()


async def prepare(cfg: StationConfig, run_dir: Path, say: Say, own: Own) -> Cloud:
    """Pick ports, start the CSMS and the broker the demo serves (`own`); see the module
    docstring."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = Ports.of(cfg, own)
    taken = ports.taken()
    if taken:
        ports = ports.moved()
        say(
            f"ports in use ({', '.join(taken)}), perhaps by another demo: using free ports "
            f"instead: {', '.join(f'{k} {v}' for k, v in ports.roles.items())}; the "
            f"effective config is {run_dir / 'config.json'}"
        )
    cfg = ports.apply(cfg)
    if cfg.api is not None:
        # The demo's socket is the user's own (mode 0600): their group, so the service
        # does not warn about a missing `evedge` group on a laptop.
        cfg = cfg.model_copy(
            update={"api": cfg.api.model_copy(update={"group": grp.getgrgid(os.getgid())[0]})}
        )
    cloud = Cloud(cfg)
    if own.broker:
        binary = mosquitto_path()
        if binary is None:
            cloud.mqtt_skipped = (
                "mosquitto is not installed (not at /usr/sbin/mosquitto nor on PATH); "
                "`sudo apt-get install mosquitto` adds the MQTT link to the demo"
                if MOSQUITTO_ENV not in os.environ
                else f"no mosquitto at ${MOSQUITTO_ENV} ({os.environ[MOSQUITTO_ENV]})"
            )
        else:
            try:
                broker = Mosquitto(run_dir, cfg.mqtt.port, binary=binary)
                await broker.start_async()
                cloud.broker = broker
            except (OSError, RuntimeError) as e:
                cloud.mqtt_skipped = f"the mosquitto broker did not start: {e}"
        if cloud.mqtt_skipped is not None:
            say(f"MQTT skipped: {cloud.mqtt_skipped}")
            cloud.cfg = cfg = cfg.model_copy(update={"mqtt": None})
    if own.csms:
        cloud.csms = TestCsms(port=_csms_port(cfg))
        await cloud.csms.start()
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    return cloud


# ---------------------------------------------------------------------- the CSMS's view


@dataclass
class CsmsTx:
    """One transaction as the central system knows it."""

    transaction_id: int
    id_tag: str
    meter_start_wh: int
    meter_values: int = 0
    meter_stop_wh: int | None = None
    reason: str | None = None
    limit_a: float | None = None

    def line(self) -> str:
        """`tx 3 · DEMO-0042 · 12 meter values · limit 16 A` for the live view."""
        parts = [f"tx {self.transaction_id}", self.id_tag, f"{self.meter_values} meter values"]
        if self.meter_stop_wh is not None:
            kwh = (self.meter_stop_wh - self.meter_start_wh) / 1000
            parts[0] += " closed"
            parts.append(f"{kwh:.2f} kWh ({self.reason or 'Local'})")
        elif self.limit_a is not None:
            parts.append(f"limit {self.limit_a:g} A")
        return " · ".join(parts)


@dataclass
class CsmsView:
    """What the CSMS received from one charge point, per connector (see the docstring)."""

    csms: TestCsms
    cp_id: str
    by_connector: dict[int, CsmsTx] = field(default_factory=dict)
    _seen: int = 0
    _pending_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The id the CSMS gives a StartTransaction is its counter before answering.
        self.csms.responders["StartTransaction"] = self._starting

    def _starting(self, _cp: str, _payload: dict) -> None:
        self._pending_ids.append(self.csms.next_transaction_id)
        return None  # the built-in answer

    def new_calls(self) -> list[Received]:
        """CALLs received since the last look, applied to the view."""
        calls = self.csms.received.get(self.cp_id, [])[self._seen :]
        self._seen += len(calls)
        for r in calls:
            self._apply(r)
        return calls

    def _apply(self, r: Received) -> None:
        p = r.payload
        if r.action == "StartTransaction" and self._pending_ids:
            self.by_connector[int(p.get("connectorId", 0))] = CsmsTx(
                self._pending_ids.pop(0), str(p.get("idTag", "")), int(p.get("meterStart", 0))
            )
        elif r.action in ("MeterValues", "StopTransaction"):
            tx = self._tx(p.get("transactionId"))
            if tx is None:
                return
            if r.action == "MeterValues":
                tx.meter_values += 1
            else:
                tx.meter_stop_wh, tx.reason = int(p.get("meterStop", 0)), p.get("reason")

    def _tx(self, transaction_id: Any) -> CsmsTx | None:
        return next(
            (t for t in self.by_connector.values() if t.transaction_id == transaction_id), None
        )

    def open_tx(self, connector: int) -> CsmsTx | None:
        """The connector's transaction while it is open."""
        tx = self.by_connector.get(connector)
        return tx if tx is not None and tx.meter_stop_wh is None else None


class LimitScript:
    """The CSMS operator: caps each transaction at LIMIT_A for a while, then clears the cap.

    `report(text, details)` tells the demo what happened (a live-view note, a JSON line).
    """

    def __init__(self, view: CsmsView, report: Callable[[str, dict[str, Any]], None]):
        self.view = view
        self.report = report

    async def run(self) -> None:
        """Until cancelled: per connector, every new transaction gets the cap once."""
        done: set[int] = set()
        running: set[asyncio.Task] = set()
        try:
            while True:
                await asyncio.sleep(0.5)
                for cid, tx in list(self.view.by_connector.items()):
                    if tx.transaction_id in done or tx.meter_stop_wh is not None:
                        continue
                    done.add(tx.transaction_id)
                    task = asyncio.create_task(self._cap(cid, tx), name=f"csms cap {cid}")
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            await cancel_and_wait(list(running))

    async def _cap(self, connector: int, tx: CsmsTx) -> None:
        await asyncio.sleep(LIMIT_AFTER_S)
        if self.view.open_tx(connector) is not tx:
            return
        profile = {
            "chargingProfileId": LIMIT_PROFILE_ID,
            "transactionId": tx.transaction_id,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": utcnow().isoformat(),
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": LIMIT_A}],
            },
        }
        status = await self._call(
            call.SetChargingProfile(connector_id=connector, cs_charging_profiles=profile)
        )
        if status == "Accepted":
            tx.limit_a = LIMIT_A
        self.report(
            f"CSMS: SetChargingProfile {LIMIT_A:g} A on connector {connector} "
            f"(tx {tx.transaction_id}): {status}",
            {
                "direction": "to_charge_point",
                "action": "SetChargingProfile",
                "connector": connector,
                "limit_a": LIMIT_A,
                "status": status,
            },
        )
        await asyncio.sleep(LIMIT_FOR_S)
        if self.view.open_tx(connector) is not tx:
            return
        status = await self._call(call.ClearChargingProfile(id=LIMIT_PROFILE_ID))
        tx.limit_a = None
        self.report(
            f"CSMS: ClearChargingProfile on connector {connector} (tx {tx.transaction_id}): "
            f"{status}",
            {
                "direction": "to_charge_point",
                "action": "ClearChargingProfile",
                "connector": connector,
                "status": status,
            },
        )

    async def _call(self, payload: Any) -> str:
        try:
            result = await self.view.csms.call(self.view.cp_id, payload)
        except (OCPPError, ConnectionError, TimeoutError) as e:
            return f"failed ({type(e).__name__}: {e})"
        return str(result.status)
