"""Communication faults end with the recovery, over real Modbus against the simulator.

A device that answers normally again clears its fault within the rule's clear_after_s (not
when the minute-long health window forgets the errors), and the end of a whole-bus outage
raises nothing for devices that answer again. Virtual time (hil/scenarios/rig.py).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from agent.events import FaultCleared, FaultRaised
from hil.scenarios.rig import scenario_rig


def clean_since(rig, device: str) -> datetime | None:
    """When the device's current run of clean poll cycles began (virtual clock)."""
    t = rig.engine.devices[device].clean_since
    return None if t is None else datetime.fromtimestamp(t, rig.now().tzinfo)


@pytest.mark.parametrize(("station", "device"), [("tcp", "meter1"), ("reference", "evse1")])
async def test_a_device_answering_again_clears_within_its_clear_time(station, device):
    async with scenario_rig(station) as rig:
        await rig.run(3)
        fid = rig.sim.inject({"kind": "exception", "device": device, "code": 2})
        got = await rig.until(lambda: rig.raised("modbus_exception", f"device:{device}"), 10)
        assert got
        await rig.run(20)  # refusing every read for a while: the window fills with them
        rig.sim.clear(fid)
        cleared = await rig.until(lambda: rig.cleared(got[0].fault_id), 90)
        assert isinstance(cleared, FaultCleared) and cleared.reason == "resolved"
        recovered = clean_since(rig, device)
        assert recovered is not None and recovered < cleared.ts
        clear_after = rig.engine.instance("modbus_exception", f"device:{device}").clear_after
        # Within clear_after_s of the first clean cycle (plus the evaluation step), though
        # the health window (60 s) still counts the refusals.
        assert (cleared.ts - recovered).total_seconds() <= clear_after + rig.dt
        window = rig.engine.devices[device].health_field("exceptions_2", rig.now().timestamp())
        assert window and window > 0
        assert not [e for e in rig.events if isinstance(e, FaultRaised) and e.ts > cleared.ts]


def pollers(rig) -> dict:
    return {pd.device.name: pd for p in rig.station.pollers for pd in p.devices}


async def outage(rig) -> FaultRaised:
    """Both devices of the RS-485 bus fall silent until the poller backs off to its cap."""
    for dev in ("meter2", "meter3"):
        rig.sim.inject({"kind": "no_response", "device": dev})
    got = await rig.until(lambda: rig.raised("bus_silent", "bus:rs485"), 30)
    assert got
    await rig.run(60)
    return got[0]


async def test_the_end_of_a_bus_outage_raises_nothing_for_devices_that_answer():
    async with scenario_rig("rtu") as rig:
        await rig.run(3)
        silent = await outage(rig)
        # The poller's back-off has meter3 asked again 5.5 s after meter2: longer than
        # bus_silent's clear_after_s (5 s), so the bus fault is over before meter3's turn.
        pd = pollers(rig)
        pd["meter3"].due = pd["meter2"].due + 5.5
        rig.sim.clear()
        cleared = await rig.until(lambda: rig.cleared(silent.fault_id), 60)
        assert cleared and cleared.reason == "resolved"
        await rig.until(lambda: rig.engine.devices["meter3"].clean_since, 30)
        await rig.run(30)
        late = [e.rule for e in rig.events if isinstance(e, FaultRaised) and e.ts > silent.ts]
        assert late == [], late
        assert rig.engine.active() == []


async def test_a_device_still_dead_after_the_bus_came_back_is_raised():
    async with scenario_rig("rtu") as rig:
        await rig.run(3)
        silent = await outage(rig)
        rig.sim.clear()
        rig.sim.inject({"kind": "no_response", "device": "meter3"})  # meter3 stays dead
        assert await rig.until(lambda: rig.cleared(silent.fault_id), 60)
        got = await rig.until(lambda: rig.raised("device_not_answering", "device:meter3"), 60)
        assert got and got[0].ts > silent.ts
        assert rig.raised("device_not_answering", "device:meter2") == []
