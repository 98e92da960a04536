"""The MQTT command `clear_fault` over a real broker: a technician's remote clear of a
latched fault, recorded with who and the note; bad input refused with a reason."""

from __future__ import annotations

import pytest
from mqtt_helpers import Backend
from sessions_helpers import billed_config, running
from test_fault_latch_ocpp import TUNING, latched_fault
from test_mqtt_commands import Cloud
from test_mqtt_sync import with_mqtt

from agent.events import FaultCleared, FaultLatch, FaultRaised
from hil import REFERENCE_EVSE

pytestmark = pytest.mark.timeout(180)


async def test_clear_fault_command_clears_a_latched_fault(tmp_path, broker):
    backend = Backend(broker).connect()
    cloud = Cloud(backend)
    cfg = with_mqtt(billed_config(tmp_path, evse_profile=REFERENCE_EVSE, diagnosis=TUNING), broker)
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            sub = rig.agent.bus.subscribe(FaultRaised, FaultLatch, FaultCleared)
            fault = await latched_fault(rig, sub)
            fid = fault.fault_id
            bad = await cloud.run("clear_fault", {"fault_id": fid})
            assert bad["error"]["code"] == "invalid" and "note" in bad["error"]["message"]
            assert fid in rig.conn.faults
            done = await cloud.run(
                "clear_fault", {"fault_id": fid, "note": "PE terminal re-tightened", "by": "tech-7"}
            )
            assert done["ok"], done
            assert done["result"]["reason"] == "manual" and done["result"]["by"] == "mqtt:tech-7"
            assert done["result"]["note"] == "PE terminal re-tightened"
            await rig.status("Available")
            again = await cloud.run("clear_fault", {"fault_id": fid, "note": "again"})
            assert again["error"]["code"] == "not_found" and fid in again["error"]["message"]
            sub.close()
    finally:
        backend.close()
