"""Every diagnosis rule end to end: its scenario on the simulated station over real Modbus.

For each scenario (hil/scenarios/catalog.py): the station runs clean, the fault is
injected, the agent must name the expected root cause with the expected OCPP 1.6 / MREC /
OCPP 2.0.1 codes and guidance, list the symptoms it explains without raising them, and
clear the fault after recovery. Time is virtual (hil/scenarios/rig.py): the pollers and
the engine are the agent's own, the devices are the simulator's Modbus servers.
"""

from __future__ import annotations

import pytest

from agent.diagnosis.codes import MREC_VENDOR_ID
from agent.diagnosis.rules import load_rules
from agent.events import FaultRaised
from hil.scenarios import SCENARIOS, Scenario
from hil.scenarios.physics import PROFILE_SCENARIOS
from hil.scenarios.rig import SimRig, scenario_rig


def raised_rules(rig: SimRig) -> set[str]:
    return {e.rule for e in rig.events if isinstance(e, FaultRaised)}


def test_every_rule_has_exactly_one_scenario():
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    assert {s.expect.rule for s in SCENARIOS} == set(load_rules())


@pytest.mark.parametrize("scenario", SCENARIOS + PROFILE_SCENARIOS, ids=lambda s: s.name)
async def test_scenario(scenario: Scenario):
    exp = scenario.expect
    async with scenario_rig(scenario.station, diagnosis=scenario.diagnosis or None) as rig:
        await scenario.setup(rig.driver)
        assert rig.events == [], "the station must run clean before the fault"
        await scenario.fault(rig.driver)
        got = await rig.until(lambda: rig.raised(exp.rule, exp.scope), scenario.raise_within_s)
        assert got, f"{exp.rule} on {exp.scope} not raised; saw {raised_rules(rig)}"
        fault = got[0]

        # One root cause: its symptoms are listed, not raised on their own.
        assert exp.explains <= {s.rule for s in fault.explains}
        assert not raised_rules(rig) & (exp.explains | exp.not_raised)
        # Codes, as written independently in the scenario.
        codes = fault.codes
        assert codes.error_code == exp.error_code
        assert f"{codes.component}.{codes.variable}" == exp.component
        assert codes.mrec == exp.mrec
        if exp.mrec:
            assert (codes.vendor_id, codes.vendor_error_code) == (MREC_VENDOR_ID, exp.mrec)
        elif exp.vendor_error_code:
            assert codes.vendor_error_code == exp.vendor_error_code
        assert len(codes.info) <= 50 and codes.info
        assert fault.faulted == exp.faulted
        if exp.side:
            assert fault.side == exp.side
        # Guidance in both languages, placeholders filled, naming where the fault is.
        for lang in ("en", "de"):
            texts = [fault.root_cause[lang], fault.driver_message[lang], fault.title[lang]]
            steps = fault.technician_steps[lang]
            assert all(texts) and len(steps) >= 2
            assert not any("{" in t for t in texts + steps)
        if exp.scope != "station":
            where = [*fault.devices, *exp.scope.split(":")[1:]]
            assert any(w in fault.root_cause["en"] for w in where), fault.root_cause["en"]
            assert fault.connectors or fault.devices
        # Evidence: the figures it was raised on, device readings with their time.
        assert fault.evidence
        assert all(e.ts is not None for e in fault.evidence if e.device and "(" not in e.name)

        await scenario.recover(rig.driver)
        fid = fault.fault_id
        rule = rig.engine.rules[exp.rule]
        if not rule.latches:
            cleared = await rig.until(lambda: rig.cleared(fid), scenario.clear_within_s)
            assert cleared, f"{exp.rule} not cleared within {scenario.clear_within_s} s"
            assert cleared.reason == "resolved" and cleared.raised_ts == fault.ts
        else:
            # The symptom's end only latches a hardware fault; it clears on its evidence
            # (where the recovery shows it, e.g. current flows again) or by hand.
            latched = await rig.until(lambda: rig.latch(fid), scenario.clear_within_s)
            assert latched and latched.state == "latched", f"{exp.rule} did not latch"
            await rig.run(3 * rig.engine.instance(exp.rule, exp.scope).clear_after + 2)
            cleared = rig.cleared(fid)
            if cleared is None:
                cleared = rig.clear_manual(fid, "scenario")
                assert cleared.reason == "manual" and cleared.by == "test"
            else:
                assert cleared.reason == "evidence" and rule.clear == "evidence"
                assert rule.clear_evidence in cleared.detail
        assert not raised_rules(rig) & (exp.explains | exp.not_raised)


@pytest.mark.parametrize("station", ["tcp", "reference"])
async def test_every_evse_error_code_is_decoded_through_its_profile(station):
    rules = load_rules()
    handler = {f: r for r in rules.values() for f in r.evse_faults}
    async with scenario_rig(station) as rig:
        profile = rig.evse(1).profile
        assert len(profile.error_codes) >= 15
        await rig.run(3)
        for code, meaning in sorted(profile.error_codes.items()):
            mark = len(rig.events)
            fid = rig.sim.inject({"kind": "evse_error_code", "connector": 1, "code": code})
            if meaning.fault in ("none", "busy"):
                await rig.run(8)
                assert rig.events[mark:] == [], f"code {code} ({meaning.text}) raised a fault"
            else:
                rule = handler[meaning.fault]

                def mine(rule=rule, mark=mark):
                    new = rig.events[mark:]
                    return [e for e in new if isinstance(e, FaultRaised) and e.rule == rule.id]

                got = await rig.until(mine, 15)
                assert got, f"code {code} ({meaning.fault}) did not raise {rule.id}"
                codes = got[0].codes
                assert codes.info.startswith(f"{code}: ")
                assert meaning.text[:10] in codes.info
                if not rule.codes.mrec:
                    assert codes.vendor_error_code == str(code)
                    assert codes.vendor_id == profile.manufacturer
            rig.sim.clear(fid)
            # Faults that latch stay until their evidence or a technician clears them.
            await rig.until(lambda: all(rig.latch(f.fault_id) for f in held(rig)), 150)
            for f in held(rig):
                rig.clear_manual(f.fault_id)
            assert await rig.until(lambda: not rig.engine.active(), 150), code


async def _plug_session(rig: SimRig, vehicle: str, fault: bool) -> FaultRaised | None:
    """One plug-in cycle of `vehicle` (with a missing CP diode if `fault`); its fault."""
    d = rig.driver
    mark = len(rig.events)
    if fault:
        rig.sim.inject({"kind": "diode_fault", "connector": 1})
    await d.plug_in(1, vehicle=vehicle)
    await d.authorize(1, 16.0)
    await d.wait(4)
    await d.stop(1)
    await d.unplug(1)
    if fault:
        rig.sim.clear()
    await d.wait(8)
    new = [e for e in rig.events[mark:] if isinstance(e, FaultRaised)]
    return new[0] if new else None


async def test_the_same_car_again_and_again_says_nothing_about_the_side():
    async with scenario_rig("tcp") as rig:
        assert await _plug_session(rig, "car-A", False) is None
        assert await _plug_session(rig, "car-A", False) is None
        same = await _plug_session(rig, "car-A", True)
        assert same is not None and same.side == "unknown", same


async def test_charger_side_and_vehicle_side_over_plug_in_sessions():
    async with scenario_rig("tcp") as rig:
        assert await _plug_session(rig, "car-B", False) is None
        # The connector charged another car fine; car-C has it: that car.
        vehicle = await _plug_session(rig, "car-C", True)
        assert vehicle is not None and vehicle.side == "vehicle"
        assert "car-C" in vehicle.side_basis
        # The next, different car has it too: the charger.
        charger = await _plug_session(rig, "car-D", True)
        assert charger is not None and charger.side == "charger"
        assert raised_rules(rig) == {"diode_fault"}


def held(rig) -> list[FaultRaised]:
    """The active faults whose rule latches."""
    return [f for f in rig.engine.active() if rig.engine.rules[f.rule].latches]
