"""The MQTT sync end to end: a simulated station, the agent, a real mosquitto, a backend.

Every stream of the contract arrives and validates against the committed JSON Schemas;
a broker restart in the middle of a stream loses nothing and keeps charge records in
order (duplicates are recognisable by msg_id); the charge-record cursor survives restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import jsonschema
from conftest import station_config
from mqtt_helpers import Backend, Broker
from sessions_helpers import CARD, billed_config, running

from agent.config import StationConfig
from agent.events import DriverMessage, utcnow
from agent.mqtt.config import MqttConfig
from agent.mqtt.schema import COMMITTED
from agent.runtime import Agent
from agent.sessions.model import IdToken
from agent.tickets.model import Snapshot, Ticket
from agent.tickets.store import TicketStore

STATION = "TEST"


def with_mqtt(cfg: StationConfig, broker: Broker, **kw) -> StationConfig:
    """`cfg` plus an [mqtt] section for the test broker (plain TCP unless kw says)."""
    m = dict(
        host="127.0.0.1",
        port=broker.port,
        tls=False,
        telemetry_interval_s=0.3,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    m.update(kw)
    return cfg.model_copy(update={"mqtt": MqttConfig(**m)})


def schema_for(topic: str) -> dict:
    """The committed schema of a message on `topic` (under evedge/v1/<station>/)."""
    rest = topic.split("/", 3)[3]
    if rest.startswith("display/"):
        rest = "display"
    return json.loads((COMMITTED / f"{rest.replace('/', '-')}.json").read_text())


def validate(msgs) -> int:
    for m in msgs:
        jsonschema.validate(m.json(), schema_for(m.topic))
    return len(msgs)


def by_stream(msgs, stream: str) -> list[dict]:
    return [m.json() for m in msgs if m.json().get("stream") == stream]


def no_gaps_after_dedup(docs: list[dict]) -> list[int]:
    """Sequence numbers once each, in arrival order of first sight."""
    seen: dict[str, int] = {}
    for d in docs:
        if d["msg_id"] in seen:
            assert seen[d["msg_id"]] == d["seq"], "a duplicate must repeat its seq"
        seen.setdefault(d["msg_id"], d["seq"])
    return list(seen.values())


async def charge_one(rig, seconds: float = 1.0) -> None:
    rig.sim.plug_in(1)
    await rig.status("Preparing", "Charging")
    await rig.engine.remote_start(1, IdToken(CARD, "RFID"))
    await rig.status("Charging")
    await asyncio.sleep(seconds)
    rig.sim.unplug(1)
    await rig.status("Available", "Finishing", timeout=15)


async def test_the_whole_contract_arrives_and_validates(tmp_path, broker):
    backend = Backend(broker).connect()
    cfg = with_mqtt(billed_config(tmp_path), broker)
    try:
        async with running(cfg) as rig:
            await charge_one(rig)
            await rig.record(1)
            await asyncio.to_thread(
                backend.wait,
                lambda ms: (
                    any("billing/records" in m.topic for m in ms)
                    and any(m.topic.endswith("/telemetry") for m in ms)
                ),
                what="a charge record and telemetry",
            )
            state = rig.agent.mqtt.state()
        msgs = backend.snapshot()
    finally:
        backend.close()
    topics = {m.topic.split("/", 3)[3] for m in msgs}
    assert {"status", "telemetry", "health", "sessions/events", "billing/records"} <= topics
    assert state["connected"] is True
    assert validate(msgs) == len(msgs)
    status = by_stream(msgs, "status")
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    assert status[-1]["clean"] is True  # a clean stop, not the Last Will
    rec = by_stream(msgs, "billing/records")[0]
    assert rec["record_seq"] == 1 and rec["body"]["ocmf"]["begin"].startswith("OCMF|")
    for stream in ("telemetry", "health", "sessions/events", "billing/records"):
        seqs = no_gaps_after_dedup(by_stream(msgs, stream))
        assert seqs == list(range(1, len(seqs) + 1)), stream
    tele = by_stream(msgs, "telemetry")[0]
    assert {r["quantity"] for r in tele["readings"]} >= {"energy_import_wh", "cp_state"}
    # Health goes out when a device's state changes, not after every poll (~10 polls/s here).
    health = [d["health"] for d in by_stream(msgs, "health")]
    for device in {h["device"] for h in health}:
        states = [h["state"] for h in health if h["device"] == device]
        assert all(a != b for a, b in itertools.pairwise(states)), (device, states)


async def test_broker_restart_mid_stream_loses_nothing(tmp_path, broker):
    backend = Backend(broker).connect()
    cfg = with_mqtt(billed_config(tmp_path), broker, telemetry_interval_s=0.1)
    try:
        async with running(cfg) as rig:
            await charge_one(rig, 0.5)
            await rig.record(1)
            # Down in the middle of the stream: telemetry keeps coming, a session ends.
            await asyncio.to_thread(broker.stop)
            await charge_one(rig, 0.5)
            await rig.record(2)
            await rig.until(
                lambda: rig.agent.mqtt.state()["backlog_by_stream"].get("billing/records") == 1,
                5,
                "the record waiting in the outbox",
            )
            backlog = rig.agent.mqtt.state()
            await asyncio.to_thread(broker.start)
            await charge_one(rig, 0.3)
            await rig.record(3)
            await asyncio.to_thread(
                backend.wait,
                lambda ms: len({d["record_seq"] for d in by_stream(ms, "billing/records")}) == 3,
                30,
                "three charge records",
            )
        await asyncio.to_thread(
            backend.wait,
            lambda ms: by_stream(ms, "status")[-1]["state"] == "offline",
            what="offline at the end",
        )
        msgs = backend.snapshot()
    finally:
        backend.close()
    assert backlog["connected"] is False
    assert backlog["backlog_by_stream"].get("billing/records") == 1
    assert backlog["backlog_by_stream"].get("telemetry", 0) >= 1
    # Charge records: each once after dedup by msg_id, in chain order, none missing.
    recs = by_stream(msgs, "billing/records")
    first = {}
    for d in recs:
        first.setdefault(d["msg_id"], d["record_seq"])
    assert list(first.values()) == [1, 2, 3]
    for stream in ("telemetry", "health", "sessions/events"):
        seqs = no_gaps_after_dedup(by_stream(msgs, stream))
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"{stream}: a message was lost"
        assert seqs == sorted(seqs), f"{stream}: out of order"
    assert validate(msgs) == len(msgs)
    with rig.store() as st:
        assert all(r.delivered_ts is not None for r in st.records())


async def test_display_messages_and_tickets_are_forwarded(tmp_path, broker):
    backend = Backend(broker).connect()
    cfg = with_mqtt(station_config(extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n'), broker)
    now = utcnow()
    ticket = Ticket(
        id="T-ABC123", station=STATION, connector=1, created=now, source="cli",
        category="damaged", lang="en", text="cable torn", contact=None,
        snapshot=Snapshot(taken=now, status=None, faults=[], readings=[], health=[],
                          session=None),
    )  # fmt: skip
    shown = DriverMessage(
        connector=2,
        status="Faulted",
        state="Faulted",
        level="error",
        lang="en",
        headline={"en": "Out of order"},
        lines={"en": ["Sorry"]},
    )
    agent = Agent(cfg)
    await agent.start()
    try:
        with TicketStore(cfg.store.path) as tickets:
            tickets.insert(ticket)
        agent.bus.publish_many([ticket.created_event(), shown])
        await asyncio.to_thread(
            backend.wait,
            lambda ms: backend.on("tickets") and backend.on("display/2"),
            what="the ticket and the display message",
        )
        await until_delivered(cfg, "T-ABC123")
    finally:
        await agent.stop()
    late = Backend(broker, client_id="late").connect()
    try:
        await asyncio.to_thread(late.wait, lambda ms: late.on("display/2"), what="retained")
        assert late.on("display/2")[0].retain
    finally:
        late.close()
        backend.close()
    assert validate(backend.on("tickets") + backend.on("display/2")) == 2
    sent = backend.on("tickets")[0].json()
    assert sent["ticket"]["id"] == "T-ABC123" and sent["ticket"]["text"] == "cable torn"
    assert backend.on("display/2")[0].json()["message"]["headline"] == {"en": "Out of order"}


async def until_delivered(cfg: StationConfig, ticket_id: str) -> None:
    """Wait until the ticket's delivered_ts is set (the broker acknowledged it)."""
    for _ in range(500):
        with TicketStore(cfg.store.path) as tickets:
            got = tickets.get(ticket_id)
        if got is not None and got.delivered is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{ticket_id} never marked delivered")
