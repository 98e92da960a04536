"""The agent against mosquitto locked down with the shipped ACL (config/mosquitto-acl.example),
password authentication and TLS client certificates: the backend's commands work, another
authenticated client cannot command the station, the station's credentials cannot publish
outside its own tree. And a broker that refuses the station's publishes (an ACL missing
lines): refused telemetry is dropped, a refused charge record is kept, raised as a fault and
delivered once the ACL is fixed. (mosquitto 2.0 also closes the connection after refusing a
publish: the agent reconnects, and offers a kept message again only every refused_retry_s.)
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from mqtt_helpers import Backend, Broker, make_pki
from paho.mqtt.enums import CallbackAPIVersion
from sessions_helpers import CARD, billed_config, running
from test_mqtt_commands import Cloud, expires
from test_mqtt_sync import STATION, charge_one, with_mqtt

from agent.mqtt.topics import Stream

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "config" / "mosquitto-acl.example"
USERS = {"backend": "backend-secret", STATION: "station-secret", "intruder": "intruder-secret"}
BASE = f"evedge/v1/{STATION}"


class Client:
    """A bare MQTT 5 client that reports the broker's PUBACK reason code per publish."""

    def __init__(self, broker: Broker, user: str, client_id: str):
        self.acks: dict[int, int] = {}
        self._cond = threading.Condition()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5)  # fmt: skip
        assert broker.pki is not None
        self.c.tls_set(
            ca_certs=str(broker.pki.ca),
            certfile=str(broker.pki.client_cert),
            keyfile=str(broker.pki.client_key),
        )
        self.c.username_pw_set(user, USERS[user])
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def _on_publish(self, _c, _u, mid, reason, _p) -> None:
        with self._cond:
            self.acks[mid] = reason.value
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """Publish with QoS 1; the PUBACK reason code (0 accepted, 0x87 not authorized)."""
        info = self.c.publish(topic, payload, qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 10), topic
            return self.acks[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def station_mqtt(tmp_path: Path, broker: Broker) -> dict:
    """The [mqtt] settings of the station: mTLS, username = station id, password file."""
    pw = tmp_path / "mqtt.pass"
    pw.write_text(USERS[STATION] + "\n")
    pw.chmod(0o600)
    assert broker.pki is not None
    return dict(
        tls=True,
        ca_file=broker.pki.ca,
        cert_file=broker.pki.client_cert,
        key_file=broker.pki.client_key,
        username=STATION,
        password_file=pw,
    )


@pytest.fixture
def locked(tmp_path):
    """mosquitto with TLS client certificates, passwords and the shipped ACL."""
    pki = make_pki(tmp_path / "pki")
    with Broker(tmp_path / "broker", tls="mtls", pki=pki, users=USERS, acl=ACL) as b:
        yield b


async def test_the_shipped_acl_locks_the_topic_tree(tmp_path, locked):
    backend = Backend(locked).connect()  # the first user: "backend"
    cloud = Cloud(backend)
    cfg = with_mqtt(billed_config(tmp_path), locked, **station_mqtt(tmp_path, locked))
    intruder = station = None
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 15, "connected")
            # The backend commands the station and reads its streams.
            st = await cloud.run("get_status")
            assert st["ok"] and st["result"]["sync"]["mqtt"]["tls"] is True
            rig.sim.plug_in(1)
            await rig.status("Preparing")
            # Another authenticated client (valid certificate and password) cannot command.
            intruder = await asyncio.to_thread(Client, locked, "intruder", "intruder-1")
            payload = (
                b'{"id": "cmd-intruder-1", "expires": "%s", "args": {"connector": 1, '
                b'"id_token": "%s"}}' % (expires(60).encode(), CARD.encode())
            )
            code = await asyncio.to_thread(intruder.publish, f"{BASE}/cmd/start_session", payload)
            assert code == 0x87  # Not authorized
            # The station's own credentials cannot publish outside its tree, nor command.
            station = await asyncio.to_thread(Client, locked, STATION, "station-probe")
            for topic in (
                "evedge/v1/OTHER/cmd/stop_session",
                "evedge/v1/OTHER/billing/records",
                f"{BASE}/cmd/start_session",
                "elsewhere/x",
            ):
                assert await asyncio.to_thread(station.publish, topic) == 0x87, topic
            assert await asyncio.to_thread(station.publish, f"{BASE}/reply/probe") == 0
            # A real command after the refused ones: the intruder's never arrived.
            started = await cloud.run("start_session", {"connector": 1, "id_token": CARD})
            assert started["ok"], started
            await rig.status("Charging")
            rig.sim.unplug(1)
            await rig.record(1)
            await rig.until(
                lambda: rig.agent.mqtt.state()["backlog"] == 0, 30, "everything delivered"
            )
            state = rig.agent.mqtt.state()
    finally:
        for c in (intruder, station):
            if c is not None:
                c.close()
        backend.close()
    replies = [m.json() for m in backend.snapshot() if "/reply" in m.topic]
    assert "cmd-intruder-1" not in {r.get("command_id") for r in replies}
    assert state["refused_by_broker"] == 0  # the shipped ACL lets every stream through
    assert backend.on("billing/records"), "the charge record reached the backend"


async def test_a_refused_charge_record_is_kept_and_delivered_once_the_acl_is_fixed(tmp_path):
    pki = make_pki(tmp_path / "pki")
    acl = tmp_path / "acl"
    # A broken ACL: the station may publish its status and replies, not its streams.
    shipped = ACL.read_text()
    broken = "\n".join(
        ln
        for ln in shipped.splitlines()
        if not ln.startswith("pattern write") or "/status" in ln or "reply" in ln
    )
    acl.write_text(broken + "\n")
    broker = Broker(tmp_path / "broker", tls="mtls", pki=pki, users=USERS, acl=acl)
    broker.start()
    backend = Backend(broker).connect()
    cfg = with_mqtt(
        billed_config(tmp_path), broker, telemetry_interval_s=3600, **station_mqtt(tmp_path, broker)
    )

    def fault_active(rig) -> bool:
        return any(f.rule == "mqtt_billing_refused" for f in rig.agent.diagnosis.engine.active())

    try:
        async with running(cfg) as rig:
            rig.agent.mqtt.publisher.refused_retry_s = 1.0  # default 60 s
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 15, "connected")
            await charge_one(rig, 0.5)
            await rig.record(1)
            await rig.until(
                lambda: rig.agent.mqtt.state()["refused_kept"] == 1, 30, "the record refused"
            )
            # Session events were refused too: dropped, not kept for ever.
            await rig.until(
                lambda: not rig.agent.mqtt.state()["backlog_by_stream"].get("sessions/events"),
                30,
                "the refused session events dropped",
            )
            state = rig.agent.mqtt.state()
            assert state["backlog_by_stream"].get("billing/records") == 1  # kept
            assert state["refused_by_broker"] > state["refused_kept"] == 1
            await rig.until(lambda: fault_active(rig), 30, "fault mqtt_billing_refused")
            dropped_events = rig.agent.mqtt.outbox.next_seq(Stream.SESSION_EVENTS, 0) - 1
            # The operator fixes the ACL; the broker restarts; the record goes out.
            await broker.stop_async()
            acl.write_text(shipped)
            await broker.start_async()
            await asyncio.to_thread(
                backend.wait, lambda ms: backend.on("billing/records"), 60, "the record"
            )
            await rig.until(lambda: rig.agent.mqtt.state()["refused_kept"] == 0, 30, "nothing kept")
            await rig.until(lambda: not fault_active(rig), 30, "the fault cleared")
        log_lines = (broker.dir / "mosquitto.log").read_text()
    finally:
        backend.close()
        broker.stop()
    assert backend.on("billing/records")[0].json()["record_seq"] == 1
    assert "Denied PUBLISH" in log_lines  # it was the broker that refused
    # The session events the broker refused never arrive, not even after the fix.
    assert dropped_events >= 3
    arrived = {m.json()["seq"] for m in backend.on("sessions/events")}
    assert not arrived & set(range(1, dropped_events + 1)), sorted(arrived)[:5]


def test_the_shipped_acl_names_every_stream():
    """A new stream without its ACL line is refused by a locked broker (charge records are
    kept, others dropped): every stream the agent publishes has its `pattern write`."""
    lines = set(ACL.read_text().splitlines())
    for stream in Stream:
        if stream is Stream.REPLIES:  # replies go under reply/# and cmd/+/reply
            continue
        topic = "evedge/v1/%u/" + stream.value + ("/+" if stream is Stream.DISPLAY else "")
        assert f"pattern write {topic}" in lines, stream
