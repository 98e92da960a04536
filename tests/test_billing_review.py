"""Billing follows diagnosis (issue 11, item 5): a session during which the billing meter's
register froze, jumped or went silent is flagged for review with the faults that say so, and
carries the power x time estimate as evidence; the register's energy is what is billed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sessions_helpers import billed_config, body, running

from agent.kpi.history import FaultHistory
from agent.sessions.metering import EnergyTracker
from agent.sessions.records import verify_records
from agent.sessions.reviews import FaultRef, billing_faults
from agent.sessions.store import SessionStore
from agent.sessions.times import US

ENERGY_RULES = Path(__file__).resolve().parents[1] / "agent" / "diagnosis" / "rules" / "energy.toml"


def _tracker() -> EnergyTracker:
    return EnergyTracker(start_wh=1000, start_us=0, serial="S", max_power_w=22_000, power_w=11_000)


def test_frozen_register_bills_the_register_and_flags_the_power_estimate():
    # The case: 34.5 s at 11 kW, the register counted 13 Wh and then froze.
    t = _tracker()
    for i in range(1, 70):  # a reading every 0.5 s
        wh = 1000 + min(i, 3) * 13 // 3  # 13 Wh in the first 1.5 s, then nothing
        t.feed(wh, i * US // 2, "S", 11_000)
    assert t.billed_wh == 13  # the register's energy, never the integral
    assert t.estimate_wh == 11_000 * 34.5 / 3600 // 1 == 105
    reason = t.shortfall(20, 20)
    assert reason is not None and "13 Wh" in reason and "105 Wh" in reason


def test_register_that_agrees_with_power_is_not_flagged():
    t = _tracker()
    for i in range(1, 61):  # 30 s at 11 kW: 91.7 Wh, the register in whole Wh
        t.feed(1000 + int(11_000 * i / 2 / 3600), i * US // 2, "S", 11_000)
    assert abs(t.estimate_wh - t.billed_wh) <= 1
    assert t.shortfall(20, 20) is None


def test_estimate_skips_gaps_and_missing_power_and_survives_a_restart():
    t = _tracker()
    t.feed(1003, 1 * US, "S", 11_000)  # 1 s at 11 kW: 3 Wh
    t.feed(1003, 2 * US, "S", None)  # no power reading: that second is unknown
    t.feed(1006, 3 * US, "S", 11_000)  # after a missing power value: not integrated either
    t.feed(1100, 30 * US, "S", 11_000)  # 27 s without a reading: a gap, not integrated
    assert t.estimate_wh == 3 and t.estimate_us == 1 * US
    again = EnergyTracker.from_state(t.to_state())
    again.feed(1103, 31 * US, "S", 11_000)
    assert again.estimate_wh == 6 and again.estimate_us == 2 * US


def test_only_fiscal_metering_faults_flag_billing_once_each():
    refs = [
        FaultRef("F2", "energy_register_jump", "FiscalMetering", "jumped", 20),
        FaultRef("F1", "welded_contactor", "PowerContactor", "welded", 10),
        FaultRef("F2", "energy_register_jump", "FiscalMetering", "jumped", 20),
        FaultRef("F0", "device_not_answering", "FiscalMetering", "silent", 5, 8),
    ]
    assert [f.fault_id for f in billing_faults(refs, ("FiscalMetering",))] == ["F0", "F2"]


def _fast_frozen_rule(tmp_path: Path) -> Path:
    """The shipped frozen-register rule with a 3 s window instead of 30 s (a short test)."""
    text = ENERGY_RULES.read_text().split("[[rule]]")[1]
    text = text.replace('"energy_register_frozen"', '"energy_register_frozen_fast"')
    text = text.replace("30)", "3)").replace("detection_s = 30", "detection_s = 3")
    d = tmp_path / "rules"
    d.mkdir()
    (d / "fast.toml").write_text("[[rule]]" + text)
    return d


async def test_frozen_register_stops_and_flags_the_record_with_the_fault(tmp_path):
    rules = _fast_frozen_rule(tmp_path)
    cfg = billed_config(
        tmp_path,
        sessions="estimate_min_wh = 5",  # a 3 s freeze at 22 kW leaves ~18 Wh unbilled
        diagnosis=f'[diagnosis]\nrules_dir = "{rules}"\n'
        "[diagnosis.rule.energy_register_frozen]\nenabled = false\n",
    )
    async with running(cfg) as rig:
        await rig.card_charging()
        await asyncio.sleep(1.0)
        rig.sim.inject({"kind": "energy_frozen", "device": "meter1"})
        rec = await rig.record(timeout=30)  # the real diagnosis raises; the session stops
        with SessionStore(cfg.store.path) as st:
            assert verify_records(st, None).ok  # flagged, and still verifies
    b = body(rec)
    assert b["stop"]["reason"] == "EmergencyStop"
    review = b["review"]
    assert review["required"] is True
    assert [f["rule"] for f in review["faults"]] == ["energy_register_frozen_fast"]
    fid = review["faults"][0]["fault_id"]
    assert any(fid in r and "energy_register_frozen_fast" in r for r in review["reasons"])
    # Billed: the register's difference; the estimate from power is larger, as evidence.
    assert b["energy_wh"] == b["meter"]["end_wh"] - b["meter"]["start_wh"]
    assert b["energy_estimate"]["wh"] > b["energy_wh"], b["energy_estimate"]
    assert any("integrate to about" in r for r in review["reasons"])


async def test_fault_history_port_names_faults_on_the_connector_or_its_meter(tmp_path):
    from agent import events
    from agent.diagnosis.store import FaultLog

    def raised(fid, rule, connectors, devices, component, ts):
        codes = events.FaultCodes(error_code="PowerMeterFailure", vendor_id="x",
                                  vendor_error_code="", info="", component=component,
                                  variable="Problem")  # fmt: skip
        scope = "connector:1" if connectors or devices else "station"
        return events.FaultRaised(
            ts=ts, fault_id=fid, rule=rule, scope=scope, title={"en": rule}, root_cause={},
            severity="error", connectors=connectors, devices=devices, evidence=[],
            confidence=0.9, codes=codes, faulted=True, driver_message={}, technician_steps={},
        )  # fmt: skip

    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    path = tmp_path / "s.db"
    with FaultLog(path) as log:
        log.record(raised("A", "energy_register_frozen", [1], ["meter1"], "FiscalMetering", t0))
        log.record(raised("B", "device_not_answering", [], ["meter1"], "FiscalMetering", t0))
        log.record(raised("C", "energy_register_jump", [2], ["meter2"], "FiscalMetering", t0))
        # Station-wide (the billing store, not the meter): not a doubt on this energy.
        log.record(raised("S", "billing_tamper_detected", [], [], "FiscalMetering", t0))
        late = raised("D", "energy_register_jump", [1], ["meter1"], "FiscalMetering",
                      t0 + timedelta(hours=2))  # fmt: skip
        log.record(late)
    from agent.bus import EventBus
    from agent.sessions.times import to_us

    store, bus = SessionStore(path), EventBus()
    try:
        port = FaultHistory(store.reading, bus)
        # Published a moment ago, not yet in the store: the session it stopped names it.
        bus.publish(raised("E", "energy_register_frozen", [1], [], "FiscalMetering", t0))
        window = (to_us(t0 + timedelta(minutes=1)), to_us(t0 + timedelta(hours=1)))
        got = await port(1, "meter1", *window)
        port.close()
    finally:
        store.close()
    # Not C (another connector and meter), not D (raised after the session).
    assert sorted(f.fault_id for f in got) == ["A", "B", "E"]


async def test_silent_billing_meter_flags_the_record_with_its_fault(tmp_path):
    cfg = billed_config(
        tmp_path,
        diagnosis="[diagnosis.rule.device_not_answering]\nraise_after_s = 0.5\n",
    )
    async with running(cfg) as rig:
        await rig.card_charging()
        await asyncio.sleep(0.5)
        fid = rig.sim.inject({"kind": "no_response", "device": "meter1"})
        rec = await rig.record(timeout=30)  # the meter's fault stops the session
        rig.sim.clear(fid)
    b = body(rec)
    review = b["review"]
    assert review["required"] is True
    assert "device_not_answering" in [f["rule"] for f in review["faults"]]
    assert all(f["component"] == "FiscalMetering" for f in review["faults"])
    assert b["energy_wh"] == b["meter"]["end_wh"] - b["meter"]["start_wh"]
