"""OCPP 1.6: the CSMS operator's ChangeAvailability(Operative) or Reset clears the latched
faults only a technician may clear (rules with clear = manual), recorded as such.

A real central system on loopback (hil/csms.py, the `ocpp` library), the agent against the
simulated station's reference controller (its vendor code 13 is a PE / ground failure).
"""

from __future__ import annotations

import asyncio

from ocpp.v16 import call
from ocpp_helpers import csms_running
from sessions_helpers import CARD, billed_config, running

from agent.events import FaultCleared, FaultLatch, FaultRaised
from hil import REFERENCE_EVSE

RULE = "ground_failure"
TUNING = f"[diagnosis.rule.{RULE}]\nclear_after_s = 1\n"


def config(tmp_path, url: str):
    auth = f'local_list = [{{ id = "{CARD}" }}]\n[ocpp]\nurl = "{url}"\nreconnect_min_s = 0.2'
    return billed_config(tmp_path, auth=auth, evse_profile=REFERENCE_EVSE, diagnosis=TUNING)


async def latched_fault(rig, sub) -> FaultRaised:
    """A ground failure reported by the controller, then gone: latched, still active."""
    seen: list = []

    def of(kind: type) -> list:
        while (ev := sub.get_nowait()) is not None:
            seen.append(ev)
        return [e for e in seen if isinstance(e, kind) and e.rule == RULE]

    fid = rig.sim.inject({"kind": "evse_error_code", "connector": 1, "code": 13})
    await rig.until(lambda: of(FaultRaised), 15, "ground_failure raised")
    rig.sim.clear(fid)
    await rig.until(lambda: [e for e in of(FaultLatch) if e.state == "latched"], 15, "latched")
    (raised,) = of(FaultRaised)
    assert raised.clear == "manual" and of(FaultCleared) == []
    return raised


async def test_change_availability_operative_and_reset_clear_manual_latches(tmp_path):
    async with csms_running() as csms, running(config(tmp_path, csms.url)) as rig:
        sub = rig.agent.bus.subscribe(FaultRaised, FaultLatch, FaultCleared)
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
        fault = await latched_fault(rig, sub)
        await csms.wait_for("StatusNotification", "TEST", {"status": "Faulted"})
        await asyncio.sleep(2)
        assert rig.conn.status.value == "Faulted"  # latched: no new session

        res = await csms.call("TEST", call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert res.status == "Accepted" and fault.fault_id in rig.conn.faults
        res = await csms.call("TEST", call.ChangeAvailability(connector_id=1, type="Operative"))
        assert res.status == "Accepted"
        cleared = await sub_wait(rig, sub, fault.fault_id)
        assert (cleared.reason, cleared.by) == ("manual", "ocpp")
        assert "ChangeAvailability Operative" in cleared.note
        await rig.status("Available")

        second = await latched_fault(rig, sub)
        res = await csms.call("TEST", call.Reset(type="Soft"))
        assert res.status == "Accepted"
        cleared = await sub_wait(rig, sub, second.fault_id)
        assert (cleared.reason, cleared.by) == ("manual", "ocpp") and "Reset" in cleared.note
        await rig.status("Available", timeout=20)
        # Connected again before the agent stops (it flushes its OCPP outbox on the way).
        await csms.wait_for("BootNotification", "TEST", count=2)
        sub.close()


async def sub_wait(rig, sub, fault_id: str) -> FaultCleared:
    got: list[FaultCleared] = []

    def done() -> bool:
        while (ev := sub.get_nowait()) is not None:
            if isinstance(ev, FaultCleared) and ev.fault_id == fault_id:
                got.append(ev)
        return bool(got)

    await rig.until(done, 10, f"FaultCleared {fault_id}")
    return got[0]
