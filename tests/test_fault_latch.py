"""Latching hardware faults over real Modbus against the simulated station (virtual time).

A hardware fault's symptom goes when the session stops; the fault must not. These run the
agent's pollers and diagnosis engine against the simulator's Modbus servers on two
controller profiles: the Phoenix EV Charge Control (no contactor feedback) and the
project's reference controller. The agent with its store, CLI and session engine is in
test_fault_latch_agent.py.
"""

from __future__ import annotations

import pytest

from agent.events import FaultCleared, FaultLatch, FaultRaised
from hil.scenarios.base import charging
from hil.scenarios.rig import scenario_rig

PROFILES = ["tcp", "reference"]  # Phoenix EV-CC (no contactor feedback), reference EVSE
C1 = "connector:1"


def tuning(backoff_s: float, retries: int) -> str:
    """Station config text tuning contactor_fails_to_close's retries."""
    return (
        "\n[diagnosis.rule.contactor_fails_to_close]\n"
        f"retry_backoff_s = {backoff_s}\nretries = {retries}\n"
    )


def latches(rig, fid: str) -> list[str]:
    return [e.state for e in rig.events if isinstance(e, FaultLatch) and e.fault_id == fid]


async def contactor_fault(rig) -> FaultRaised:
    """A vehicle charges on a contactor that does not close: the fault is raised."""
    rig.sim.inject({"kind": "contactor_stuck_open", "connector": 1})
    await rig.driver.plug_in(1)
    await rig.driver.authorize(1, 16.0)
    got = await rig.until(lambda: rig.raised("contactor_fails_to_close", C1), 30)
    assert got, [e.rule for e in rig.events if isinstance(e, FaultRaised)]
    return got[0]


async def failed_retry(rig, fid: str) -> None:
    """A retry on the still broken contactor: the fault holds again, the session stops."""
    await rig.driver.authorize(1, 16.0)
    assert await rig.until(lambda: latches(rig, fid)[-1] == "active", 30)
    await rig.driver.stop(1)


@pytest.mark.parametrize("station", PROFILES)
async def test_a_hardware_fault_stays_latched_after_the_session_stops(station):
    async with scenario_rig(station) as rig:
        fault = await contactor_fault(rig)
        assert fault.clear == "evidence" and fault.latch == "retry" and fault.clear_evidence
        await rig.driver.stop(1)  # the agent's reaction: the symptom (pilot C, 0 A) goes
        assert await rig.until(lambda: "latched" in latches(rig, fault.fault_id), 30)
        await rig.run(120)  # far beyond clear_after_s: still held
        assert rig.cleared(fault.fault_id) is None
        assert [f.fault_id for f in rig.engine.active()] == [fault.fault_id]
        # No evidence came (no current flowed): only a technician clears it.
        cleared = rig.clear_manual(fault.fault_id, "contactor replaced")
        assert (cleared.reason, cleared.by, cleared.note) == (
            "manual",
            "test",
            "contactor replaced",
        )
        assert rig.engine.active() == []


@pytest.mark.parametrize("station", PROFILES)
async def test_retries_with_back_off_then_evidence_clears(station):
    async with scenario_rig(station, extra=tuning(5, 2)) as rig:
        fault = await contactor_fault(rig)
        fid = fault.fault_id
        await rig.driver.stop(1)
        latch = await rig.until(lambda: rig.latch(fid) if latches(rig, fid) else None, 30)
        assert latch.state == "latched" and latch.retry_at is not None and latch.attempts == 0
        retry = await rig.until(lambda: latches(rig, fid)[-1] == "retry", 10)
        assert retry, latches(rig, fid)
        # First retry: the contactor still does not close. The fault holds again.
        await failed_retry(rig, fid)
        assert rig.latch(fid).attempts == 1 and rig.cleared(fid) is None
        assert await rig.until(lambda: latches(rig, fid)[-1] == "retry", 30)
        # Second retry: repaired. Current flows with pilot C: positive evidence clears it.
        rig.sim.clear()
        await rig.driver.authorize(1, 16.0)
        cleared = await rig.until(lambda: rig.cleared(fid), 30)
        assert cleared and cleared.reason == "evidence", latches(rig, fid)
        assert "cp_state" in cleared.detail and latches(rig, fid) == [
            "latched", "retry", "active", "latched", "retry"
        ]  # fmt: skip


@pytest.mark.parametrize("station", PROFILES)
async def test_retries_used_up_block_until_a_technician_clears(station):
    async with scenario_rig(station, extra=tuning(2, 1)) as rig:
        fault = await contactor_fault(rig)
        fid = fault.fault_id
        await rig.driver.stop(1)
        assert await rig.until(lambda: latches(rig, fid)[-1:] == ["retry"], 30)
        await failed_retry(rig, fid)
        assert await rig.until(lambda: latches(rig, fid)[-1] == "latched", 30)
        assert rig.latch(fid).retry_at is None and rig.latch(fid).attempts == 1
        await rig.run(60)
        assert latches(rig, fid)[-1] == "latched" and rig.cleared(fid) is None


async def test_supply_faults_still_clear_on_their_condition():
    async with scenario_rig("tcp") as rig:
        await charging()(rig.driver)
        fid = rig.sim.inject({"kind": "voltage_sag", "device": "meter1", "volts": 40})
        got = await rig.until(lambda: rig.raised("undervoltage", C1), 30)
        assert got and got[0].clear == "condition" and got[0].latch is None
        rig.sim.clear(fid)
        cleared = await rig.until(lambda: rig.cleared(got[0].fault_id), 30)
        assert isinstance(cleared, FaultCleared) and cleared.reason == "resolved"
        assert latches(rig, got[0].fault_id) == []
