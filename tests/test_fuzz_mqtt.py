"""Fuzz the MQTT commands: every input published through a real mosquitto to a running agent.

Commands come from the committed JSON Schemas (agent/mqtt/schemas/cmd-*.json) plus mutations
(tests/test_fuzz_ocpp.py: wrong types, NaN/Infinity/1e308/1e400, extra and missing fields,
deep nesting, huge strings), and raw payloads: bad JSON, invalid UTF-8, nesting thousands
deep, payloads over the size limit; unknown command names; response topics inside and
outside the station's reply tree. The agent (simulated station, a card session charging)
must answer each one exactly once, with a result or an error code of the contract, never
`internal`; at the end it runs on with the same session and MQTT connection.

Left out of the generated commands: `diagnose` and `diagnostics_bundle` (seconds each: they
read every device, pack the store) and `stop_session` (it would end the session the suite
watches; its arguments are the ones `start_session` takes). `make test` runs FUZZ_N (200)
inputs; `make fuzz` 10,000 (tests/fuzzing.py: fixed seed).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from fuzzing import FUZZ_SETTINGS, assert_alive
from hypothesis import given
from hypothesis import strategies as st
from mqtt_helpers import Broker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from schema_strategy import from_schema
from sessions_helpers import billed_config, running
from test_fuzz_ocpp import BAD_VALUES, Live, encode, mutated
from test_mqtt_sync import STATION, with_mqtt

from agent.mqtt.commands import ERROR_CODES
from agent.mqtt.schema import COMMITTED

pytestmark = pytest.mark.fuzz

BASE = f"evedge/v1/{STATION}"
LEFT_OUT = {"diagnose", "diagnostics_bundle", "stop_session"}
ALL_NAMES = {p.stem.removeprefix("cmd-") for p in COMMITTED.glob("cmd-*.json")}
NAMES = sorted(ALL_NAMES - LEFT_OUT)
REQUESTS = {n: from_schema(json.loads((COMMITTED / f"cmd-{n}.json").read_text())) for n in NAMES}
MAX_BYTES = 64 * 1024  # [mqtt] command_max_bytes of the fuzzed agent
ID, EXPIRES = "@ID@", "@EXPIRES@"  # filled in when sent: a fresh id, an expiry 60 s ahead
REPLY = f"{BASE}/reply/fuzz"
# What a topic level may hold (mosquitto disconnects a client publishing control characters).
NAME_CHARS = st.characters(categories=("L", "N", "P", "S"), exclude_characters="/+#")
HOSTILE_TOPICS = (
    f"{BASE}/billing/records",
    f"{BASE}/status",
    "evedge/v1/OTHER/cmd/stop_session",
    "backend/#",
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """A command document: schema-valid with a fresh id and expiry, or with one mutation."""
    name = draw(st.sampled_from(NAMES))
    doc = draw(REQUESTS[name])
    doc["id"], doc["expires"] = ID, EXPIRES
    if draw(st.booleans()):
        doc.pop("station", None)  # mostly addressed right (a random station is wrong_station)
    if draw(st.booleans()):
        doc = draw(mutated(doc))
    return name, doc


RAW_PAYLOADS = st.one_of(
    st.sampled_from(
        [b"", b" ", b"null", b"[]", b"{}", b"{", b'{"id": ', b"\xff\xfe\x00", b"\x00" * 10,
         b'{"id": "@ID@", "expires": "@EXPIRES@", "args": {"connector": NaN}}',
         b'{"id": "@ID@", "expires": "@EXPIRES@", "args": 1e400}',
         b'{"id": "@ID@", "expires": "@EXPIRES@"}{"id": 2}']
    ),
    st.binary(max_size=64),
    st.integers(10, 100_000).map(lambda n: b"[" * n),
    st.integers(10, 3000).map(lambda n: b'{"a": ' * n + b"1" + b"}" * n),
    st.integers(MAX_BYTES - 100, MAX_BYTES * 3).map(lambda n: b'{"id": "' + b"x" * n + b'"}'),
)  # fmt: skip


@st.composite
def inputs(draw: st.DrawFn) -> tuple[str, bytes | Any, str | None]:
    """(command name, payload, response topic): a request document or raw bytes."""
    kind = draw(st.sampled_from(["request", "request", "request", "raw", "name"]))
    if kind == "request":
        name, payload = draw(requests())
    elif kind == "raw":
        name, payload = draw(st.sampled_from(NAMES)), draw(RAW_PAYLOADS)
    else:  # an unknown name, or a known one with a bad value somewhere
        name = draw(st.one_of(st.text(NAME_CHARS, min_size=1, max_size=20), st.sampled_from(NAMES)))
        payload = {"id": ID, "expires": EXPIRES, "args": {"x": draw(BAD_VALUES)}}
    response = draw(st.sampled_from([REPLY] * 6 + [None, *HOSTILE_TOPICS]))
    return name, payload, response


def wire(payload: bytes | Any, n: int) -> bytes:
    """The payload with the placeholders filled in."""
    data = payload if isinstance(payload, bytes) else encode(payload).encode()
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)).isoformat()
    return data.replace(b'"@ID@"', b'"fuzz-%08d"' % n).replace(
        b'"@EXPIRES@"', json.dumps(expires).encode()
    )


class Replies:
    """The backend side: publishes commands, collects replies by correlation data."""

    def __init__(self, broker: Broker):
        self.got: dict[bytes, list[tuple[str, dict]]] = {}
        self._cond = threading.Condition()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-backend",
                             protocol=paho.MQTTv5)  # fmt: skip
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe(
            [(f"{BASE}/reply/#", 1), (f"{BASE}/cmd/+/reply", 1)]
        )
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c, _u, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        with self._cond:
            self.got.setdefault(corr, []).append((msg.topic, json.loads(msg.payload)))
            self._cond.notify_all()

    def send(self, name: str, data: bytes, response: str | None, corr: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr
        if response is not None:
            props.ResponseTopic = response
        self.c.publish(f"{BASE}/cmd/{name}", data, qos=1, properties=props).wait_for_publish(10)

    def wait(self, corr: bytes, timeout: float = 30) -> list[tuple[str, dict]]:
        with self._cond:
            assert self._cond.wait_for(lambda: corr in self.got, timeout), "no reply"
            return self.got[corr]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class MqttLive(Live):
    """A broker, the agent with a charging session and the backend; see test_fuzz_ocpp.Live."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        self.n = itertools.count(1)

    async def _start(self) -> None:
        self.broker = Broker(self.tmp_path / "broker")
        await self.broker.start_async()
        self.stack.push_async_callback(self.broker.stop_async)
        cfg = with_mqtt(billed_config(self.tmp_path), self.broker, command_max_bytes=MAX_BYTES,
                        telemetry_interval_s=5)  # fmt: skip
        self.rig = await self.stack.enter_async_context(running(cfg))
        await self.rig.until(lambda: self.rig.agent.mqtt.connection.connected, 15, "connected")
        await self.rig.card_charging()
        self.session = self.rig.conn.session.id
        self.backend = Replies(self.broker)
        self.stack.callback(self.backend.close)

    async def _health(self) -> dict[str, Any]:
        agent = self.rig.agent
        return {
            "ended": [t.get_name() for t in agent._tasks if t.done()],
            "session": None if self.rig.conn.session is None else self.rig.conn.session.id,
            "connects": agent.mqtt.connection.connects,
            "commands": agent.mqtt.state()["commands"],
        }

    def check(self, name: str, payload: bytes | Any, response: str | None) -> None:
        n = next(self.n)
        corr = b"c%08d" % n
        before = self.run(self._health())["commands"]["internal_errors"]
        self.backend.send(name, wire(payload, n), response, corr)
        replies = self.backend.wait(corr)
        assert len(replies) == 1, replies
        topic, doc = replies[0]
        inside = response is not None and response.startswith(f"{BASE}/reply/")
        assert topic == (response if inside else f"{BASE}/cmd/{name}/reply"), (topic, response)
        assert doc["command"] == name and doc["stream"] == "replies", doc
        if not doc["ok"]:
            assert doc["error"]["code"] in ERROR_CODES - {"internal"}, doc
        health = self.run(self._health())
        assert_alive(health, self.session, health["commands"], before)
        assert health["connects"] == 1, health  # never dropped the broker connection


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with MqttLive(tmp_path_factory.mktemp("fuzz-mqtt")) as live:
        yield live


@FUZZ_SETTINGS
@given(inputs())
def test_every_command_gets_one_reply_and_the_session_goes_on(live, case):
    live.check(*case)


def test_the_generated_commands_cover_the_contract():
    assert LEFT_OUT < ALL_NAMES
    assert {"start_session", "set_tariff", "update_local_list", "report_problem"} <= set(NAMES)
