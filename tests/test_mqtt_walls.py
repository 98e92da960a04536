"""The MQTT command walls over a real broker: where replies may go, what input is refused
before it is parsed, what an unexpected exception does, and a flood of commands.

A command may ask (MQTT 5 Response Topic) for its reply only under `<base>/reply/`: anything
else (the station's own streams, another station's commands) is refused, counted and not
run. Deep nesting is `bad_json`, a bool is not a connector, a bug is answered `internal`
and logged once per minute, and a full command queue answers `busy`.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from mqtt_helpers import Backend
from sessions_helpers import CARD, billed_config, running
from structlog.testing import capture_logs
from test_mqtt_commands import Cloud, expires
from test_mqtt_sync import STATION, with_mqtt

from agent.mqtt.commands import Refused, parse_json
from agent.mqtt.config import MqttConfig

pytestmark = pytest.mark.timeout(180)

BASE = f"evedge/v1/{STATION}"


def replies_on(backend: Backend, topic: str) -> list[dict]:
    """Command replies the backend saw on `topic`."""
    return [
        m.json()
        for m in backend.snapshot()
        if m.topic == topic and m.json().get("stream") == "replies"
    ]


async def test_a_response_topic_outside_the_reply_tree_is_refused(tmp_path, broker):
    backend = Backend(broker).connect()
    cloud = Cloud(backend)
    cfg = with_mqtt(billed_config(tmp_path), broker)
    hostile = [
        f"{BASE}/billing/records",
        f"{BASE}/display/1",
        f"{BASE}/status",
        "evedge/v1/OTHER/cmd/stop_session",
        f"{BASE}/reply",  # the tree itself, not a topic in it
        "backend/replies/x",
    ]
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            rig.sim.plug_in(1)
            await rig.status("Preparing")
            start = {"connector": 1, "id_token": CARD}
            for i, topic in enumerate(hostile):
                cid = f"cmd-hostile-{i}"
                payload = {"id": cid, "expires": expires(60), "args": start}
                await asyncio.to_thread(
                    backend.command, STATION, "start_session", payload, response=topic
                )
                # The error goes to the documented default reply topic, never to `topic`.
                await asyncio.to_thread(
                    backend.wait,
                    lambda _ms, cid=cid: any(
                        r["command_id"] == cid
                        for r in replies_on(backend, f"{BASE}/cmd/start_session/reply")
                    ),
                    20,
                    f"the refusal of {topic}",
                )
            refusals = replies_on(backend, f"{BASE}/cmd/start_session/reply")
            assert [r["error"]["code"] for r in refusals] == ["forbidden"] * len(hostile)
            assert "reply/#" in refusals[0]["error"]["message"]
            for topic in hostile:
                assert replies_on(backend, topic) == [], topic
            assert rig.conn.session is None and rig.conn.status.value == "Preparing"
            state = rig.agent.mqtt.state()["commands"]
            assert state["refused_response_topic"] == len(hostile)
            # Under the reply tree the command runs and answers there.
            ok = await cloud.run("start_session", start, response=f"{BASE}/reply/ops-7")
            assert ok["ok"], ok
            assert replies_on(backend, f"{BASE}/reply/ops-7")[0]["command_id"] == ok["command_id"]
            await rig.status("Charging")
    finally:
        backend.close()


async def test_bad_input_is_refused_before_it_runs(tmp_path, broker):
    backend = Backend(broker).connect()
    cloud = Cloud(backend)
    cfg = with_mqtt(billed_config(tmp_path), broker, command_max_bytes=4096)
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            rig.sim.plug_in(1)
            await rig.status("Preparing")
            as_bool = await cloud.run("start_session", {"connector": True, "id_token": CARD})
            assert as_bool["error"]["code"] == "invalid", as_bool
            assert "args.connector" in as_bool["error"]["message"]
            amps = await cloud.run("set_current_limit", {"connector": 1, "amps": True})
            assert amps["error"]["code"] == "invalid"
            floaty = await cloud.run("stop_session", {"connector": 1.0})
            assert floaty["error"]["code"] == "invalid"
            deep = b'{"id": "cmd-deep-0001", "args": ' + b'{"a": ' * 500 + b"1" + b"}" * 501
            nested = await cloud.raw("get_status", deep)
            assert nested["error"]["code"] == "bad_json", nested
            assert "deeper" in nested["error"]["message"]
            assert (await cloud.raw("get_status", b"[" * 4000))["error"]["code"] == "bad_json"
            huge = {"id": "cmd-huge-0001", "expires": expires(60), "args": {"x": "y" * 5000}}
            too_big = await cloud.raw("get_status", huge)
            assert too_big["error"]["code"] == "invalid" and "4096" in too_big["error"]["message"]
            inf = await cloud.raw(
                "set_current_limit",
                b'{"id": "cmd-inf-00001", "expires": "%s", "args": {"connector": 1, '
                b'"amps": Infinity}}' % expires(60).encode(),
            )
            assert inf["error"]["code"] == "invalid"
            far = await cloud.run("get_status", ttl_s=3600)  # the default bound is 300 s
            assert far["error"]["code"] == "invalid" and "300" in far["error"]["message"]
            assert rig.conn.session is None
            assert rig.agent.mqtt.state()["commands"]["internal_errors"] == 0
    finally:
        backend.close()


async def test_a_bug_is_answered_counted_and_logged_once(tmp_path, broker):
    backend = Backend(broker).connect()
    cloud = Cloud(backend)
    cfg = with_mqtt(billed_config(tmp_path), broker)

    async def broken() -> None:
        raise ZeroDivisionError("a bug")

    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            healthy = rig.agent.ops.active_faults
            rig.agent.ops.active_faults = broken  # fault injection: the operation has a bug
            with capture_logs() as logs:
                for _ in range(5):
                    got = await cloud.run("get_active_faults")
                    assert got["error"] == {"code": "internal", "message": "ZeroDivisionError"}
            rig.agent.ops.active_faults = healthy
            assert (await cloud.run("get_active_faults"))["ok"]
            state = (await cloud.run("get_status"))["result"]["sync"]["mqtt"]["commands"]
    finally:
        backend.close()
    assert state["internal_errors"] == 5
    assert state["last_internal_error"] == "ZeroDivisionError: a bug"
    logged = [e for e in logs if e["event"] == "mqtt.command.internal_error"]
    assert len(logged) == 1 and logged[0]["command"] == "get_active_faults"


async def test_a_full_command_queue_answers_busy(tmp_path, broker):
    backend = Backend(broker).connect()
    cfg = with_mqtt(billed_config(tmp_path), broker, command_queue=2)
    n = 12
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            ids = []
            for _ in range(n):  # each takes >= 3 s; 4 run at a time, 2 may wait
                cid, _ = await asyncio.to_thread(
                    backend.command, STATION, "diagnose", args={"reads": 2, "gap_s": 3}
                )
                ids.append(cid)

            def answered(ms) -> dict[str, dict]:
                got = {}
                for m in ms:
                    doc = json.loads(m.payload)
                    if m.topic == f"{BASE}/reply/backend" and doc["command_id"] in ids:
                        got[doc["command_id"]] = doc
                return got

            await asyncio.to_thread(
                backend.wait, lambda ms: len(answered(ms)) == n, 60, "every command answered"
            )
            busy_count = rig.agent.mqtt.state()["commands"]["busy"]
        docs = answered(backend.snapshot())
    finally:
        backend.close()
    busy = [d for d in docs.values() if not d["ok"] and d["error"]["code"] == "busy"]
    ran = [d for d in docs.values() if d["ok"]]
    assert busy and len(busy) == busy_count
    assert len(ran) + len(busy) == n and len(ran) <= n - len(busy)
    assert "2 commands are waiting" in busy[0]["error"]["message"]
    # The newest were refused: the first 4 ran at once and the next 2 waited their turn.
    order = {cid: i for i, cid in enumerate(ids)}
    assert min(order[d["command_id"]] for d in busy) >= 6


def test_the_ttl_default_is_minutes():
    assert MqttConfig(host="b").command_max_ttl_s <= 600


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"9" * 5000, "bad_json"),  # json.loads: ValueError, over 4300 digits (found by fuzzing)
        (b"[" * 65, "bad_json"),  # deeper than the bound, refused before parsing
        (b'{"a": NaN', "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b" " * 8000, "invalid"),  # over command_max_bytes
    ],
)
def test_parse_json_refuses_what_the_parser_cannot_take(payload: bytes, code: str):
    with pytest.raises(Refused) as e:
        parse_json(payload, 6000)
    assert e.value.code == code
