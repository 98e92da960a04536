"""The `kpi` MQTT stream and the `get_kpi` command over a real broker, checked against the
committed JSON Schemas, on a store that holds the scripted March 2026."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from kpi_helpers import scripted_month
from mqtt_helpers import Backend
from sessions_helpers import billed_config, running
from test_mqtt_commands import Cloud
from test_mqtt_sync import with_mqtt

from agent.mqtt.schema import COMMITTED

pytestmark = pytest.mark.timeout(180)
NET_C1 = 120 + 45


def _march(report: dict) -> dict:
    (c1,) = report["connectors"]
    return next(m for m in c1["months"] if m["month"] == "2026-03")


async def test_kpi_stream_and_command(tmp_path, broker):
    scripted_month(tmp_path / "evedge.db")  # the store the agent will open
    backend = Backend(broker).connect()
    cfg = with_mqtt(billed_config(tmp_path), broker)
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            reply = await Cloud(backend).run("get_kpi", {"months": 13})  # schema-checked
            assert reply["ok"], reply
            m = _march(reply["result"])
            assert (m["outage_min"], m["excluded_min"], m["attempts"]) == (645, 480, 5)
            bad = await Cloud(backend).run("get_kpi", {"months": 0})
            assert not bad["ok"] and bad["error"]["code"] == "invalid"
            await rig.agent.mqtt.publish_kpi()  # what the daily timer does
            await asyncio.to_thread(backend.wait, lambda ms: backend.on("kpi"), 20, "kpi")
    finally:
        backend.close()
    (msg,) = backend.on("kpi")
    doc = msg.json()
    jsonschema.validate(doc, json.loads((COMMITTED / "kpi.json").read_text()))
    assert doc["stream"] == "kpi" and doc["seq"] == 1
    assert _march(doc["report"])["uptime_12m_pct"] == round((525_600 - NET_C1) / 525_600 * 100, 3)
