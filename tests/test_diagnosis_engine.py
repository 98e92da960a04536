"""The diagnosis engine on hand-made event streams: hysteresis, unknown data, bad quality,
flapping, restart, tuning, root cause over time, charger- vs vehicle-side.

These feed Reading / DeviceHealth events straight into the engine on a manual clock (no
devices): they pin down timing behaviour exactly. The end-to-end scenarios over Modbus
are in test_diagnosis_scenarios.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.diagnosis.engine import DiagnosisEngine
from agent.diagnosis.facts import ManualFacts
from agent.diagnosis.rules import load_rules
from agent.events import DeviceHealth, FaultCleared, FaultRaised, HealthState, Quality, Reading
from agent.events import utcnow as real_now
from drivers.profile import load_profile
from hil.scenarios.stations import station_config

NOMINAL = {"voltage_l1": 230.0, "voltage_l2": 231.0, "voltage_l3": 229.0, "frequency_hz": 50.0}


class Station:
    """An engine on a manual clock, fed like the pollers would feed it."""

    def __init__(self, diagnosis: dict | None = None, extra: str = ""):
        self.cfg = station_config("tcp", diagnosis=diagnosis, extra=extra)
        self.t = real_now()
        profiles = {d.name: load_profile(d.profile) for d in self.cfg.device}
        self.engine = DiagnosisEngine(
            self.cfg, load_rules(), profiles, ManualFacts(), lambda: self.t, self.cfg.diagnosis
        )
        self.events: list[FaultRaised | FaultCleared] = []
        self.meter = dict(NOMINAL, current_l1=0.0, current_l2=0.0, current_l3=0.0, power_w=0.0)
        self.evse = {"cp_state": "A", "evse_error_code": 0, "offered_current_a": 32.0}
        self.energy = 100_000
        self.meter_quality = Quality.GOOD
        self.silent: set[str] = set()

    def poll(self) -> None:
        for device, values in (("meter1", self.meter), ("evse1", self.evse)):
            if device in self.silent:
                continue
            for q, v in {**values, "energy_import_wh": self.energy}.items():
                bad = device == "meter1" and self.meter_quality != Quality.GOOD
                self.engine.ingest(
                    Reading(
                        ts=self.t,
                        device=device,
                        quantity=q,
                        value=None if bad else v,
                        quality=self.meter_quality if device == "meter1" else Quality.GOOD,
                    )
                )
            self.engine.ingest(
                DeviceHealth(ts=self.t, device=device, bus="lan", state=HealthState.OK, polls=1)
            )

    def run(self, seconds: float, dt: float = 0.5) -> list[FaultRaised | FaultCleared]:
        """Poll and evaluate every dt for `seconds`; returns the fault events meanwhile."""
        out = []
        for _ in range(round(seconds / dt)):
            self.t += timedelta(seconds=dt)
            self.poll()
            out.extend(self.engine.evaluate())
        self.events.extend(out)
        return out

    def volts(self, v1: float, v2: float | None = None, v3: float | None = None) -> None:
        self.meter.update(
            voltage_l1=v1, voltage_l2=v1 if v2 is None else v2, voltage_l3=v1 if v3 is None else v3
        )

    def raised(self, rule: str) -> list[FaultRaised]:
        return [e for e in self.events if isinstance(e, FaultRaised) and e.rule == rule]

    def cleared(self, fault_id: str) -> list[FaultCleared]:
        return [e for e in self.events if isinstance(e, FaultCleared) and e.fault_id == fault_id]


def rules_of(events) -> list[str]:
    return [e.rule for e in events if isinstance(e, FaultRaised)]


def test_a_clean_station_raises_nothing():
    s = Station()
    assert s.run(120) == []


def test_hysteresis_a_fault_never_flaps():
    s = Station()
    s.run(5)
    for _ in range(10):  # dips of 2 s, shorter than undervoltage's raise_after (5 s)
        s.volts(200)
        s.run(2)
        s.volts(230)
        s.run(2)
    assert s.raised("undervoltage") == []
    s.volts(200)
    s.run(6)
    (fault,) = s.raised("undervoltage")
    for _ in range(5):  # recoveries of 8 s, shorter than clear_after (10 s)
        s.volts(230)
        s.run(8)
        s.volts(200)
        s.run(1)
    assert s.cleared(fault.fault_id) == [] and len(s.raised("undervoltage")) == 1
    s.volts(230)
    s.run(12)
    (cleared,) = s.cleared(fault.fault_id)
    assert cleared.reason == "resolved" and cleared.raised_ts == fault.ts


def test_evidence_carries_the_readings_and_their_times():
    s = Station()
    s.run(2)
    s.volts(200, 231, 229)
    s.run(6)
    (fault,) = s.raised("undervoltage")
    ev = {e.name: e for e in fault.evidence}
    v1 = ev["meter1.voltage_l1"]
    assert (v1.value, v1.unit, v1.device) == (200.0, "V", "meter1")
    assert v1.ts is not None and fault.ts - v1.ts < timedelta(seconds=1)
    assert fault.root_cause["en"].startswith("Meter meter1 reads a phase voltage below")
    assert "{" not in fault.root_cause["de"] and fault.technician_steps["de"]
    assert (
        fault.codes.info == "Under-voltage" and fault.codes.vendor_id == "https://chargex.inl.gov"
    )


def test_unknown_data_holds_a_fault_stale_readings_are_not_values():
    s = Station()
    s.volts(200)
    s.run(6)
    (fault,) = s.raised("undervoltage")
    s.silent.add("meter1")  # the meter stops answering: its last values go stale
    s.volts(230)
    s.run(60)
    assert s.cleared(fault.fault_id) == []  # no evidence either way: held, not cleared
    assert rules_of(s.events) == ["undervoltage"]  # nothing raised on the stale values
    s.silent.clear()
    s.run(11)
    assert s.cleared(fault.fault_id)[0].reason == "resolved"


def test_bad_quality_readings_raise_the_meter_fault_not_value_faults():
    s = Station()
    s.run(2)
    s.meter_quality = Quality.NOT_AVAILABLE
    s.volts(0)  # whatever the registers say, the meter marked them not available
    s.run(40)
    assert rules_of(s.events) == ["meter_value_unavailable"]
    assert s.raised("meter_value_unavailable")[0].scope == "device:meter1"


def test_an_intermittent_fault_waits_longer_to_clear_each_time():
    s = Station()
    durations = []
    for _ in range(3):
        s.volts(200)
        s.run(6)
        fault = s.raised("undervoltage")[-1]
        s.volts(230)
        for n in range(200):
            s.run(0.5)
            if s.cleared(fault.fault_id):
                durations.append(n * 0.5 + 0.5)
                break
    # clear_after_s is 10 s; the first evaluation past it is up to one step (0.5 s) later.
    assert [round(d - 0.5) for d in durations] == [10, 20, 40]


def test_a_symptom_raised_first_is_cleared_as_explained_by_the_root_cause():
    s = Station()
    s.volts(200, 200, 200)  # low on all phases: under-voltage
    s.run(6)
    (uv,) = s.raised("undervoltage")
    s.volts(200, 0, 200)  # then a phase is lost: that is the root cause now
    s.run(3)
    (loss,) = s.raised("phase_loss")
    (cleared,) = s.cleared(uv.fault_id)
    assert (cleared.reason, cleared.explained_by) == ("explained", loss.fault_id)
    assert [x.rule for x in loss.explains] == ["undervoltage"]
    assert loss.confidence > load_rules()["phase_loss"].confidence
    assert s.engine.suppressed() == [("undervoltage", "connector:1", loss.fault_id)]
    s.volts(200)  # the phase is back, the voltage still low: the symptom stands alone again
    s.run(8)  # phase_loss clears after its 5 s ...
    assert s.cleared(loss.fault_id) and len(s.raised("undervoltage")) == 1
    s.run(6)  # ... and the symptom starts over on fresh data: its own 5 s
    assert len(s.raised("undervoltage")) == 2


def test_restart_keeps_active_faults_and_re_evaluates_them():
    s = Station()
    s.volts(200)
    s.run(6)
    (fault,) = s.raised("undervoltage")
    # A new engine (agent restart) gets the stored active faults back.
    s2 = Station()
    s2.t = s.t
    s2.volts(200)
    orphan = fault.model_copy(update={"fault_id": "x-1", "scope": "connector:9"})
    retired = s2.engine.restore([fault, orphan])
    assert [(c.fault_id, c.reason) for c in retired] == [("x-1", "retired")]
    assert s2.engine.active() == [fault]
    s2.run(30)
    assert s2.events == []  # still true: not raised twice, same fault id
    s2.volts(230)
    s2.run(25)
    (cleared,) = s2.events
    assert isinstance(cleared, FaultCleared) and cleared.fault_id == fault.fault_id


def test_site_tuning_disables_a_rule_or_changes_its_times():
    extra = (
        "[diagnosis.rule.undervoltage]\nraise_after_s = 0\n"
        "[diagnosis.rule.overvoltage]\nenabled = false\n"
    )
    s = Station(extra=extra)
    s.volts(200)
    s.run(0.5)
    assert rules_of(s.events) == ["undervoltage"]  # at once
    s.volts(270)
    s.run(30)
    assert "overvoltage" not in rules_of(s.events)
    assert s.engine.instance("overvoltage", "connector:1") is None


def _session(s: Station, code: int, vehicle: str | None = None) -> None:
    s.evse.update(cp_state="B", evse_error_code=0)
    s.run(1)
    if vehicle:
        s.engine.note_vehicle(1, vehicle)
    if code == 0:
        s.evse["cp_state"] = "C"  # it charged
    s.evse["evse_error_code"] = code
    s.run(3)
    s.evse.update(cp_state="A", evse_error_code=0)
    s.run(7)


def test_the_same_fault_with_another_vehicle_is_charger_side():
    s = Station()
    _session(s, 13, vehicle="WVW-1")
    _session(s, 13, vehicle="VF1-2")
    first, second = s.raised("diode_fault")
    assert first.side == "unknown"  # nothing to compare with yet
    assert second.side == "charger" and "other vehicle" in second.side_basis


def test_a_fault_with_one_vehicle_only_is_vehicle_side():
    s = Station()
    _session(s, 0, vehicle="VF1-2")
    _session(s, 13, vehicle="WVW-1")
    (fault,) = s.raised("diode_fault")
    assert fault.side == "vehicle" and "charged 1 other vehicle" in fault.side_basis
    # The same vehicle again: still the vehicle, not the charger.
    _session(s, 13, vehicle="WVW-1")
    again = s.raised("diode_fault")[-1]
    assert again.side == "vehicle"


def test_without_vehicle_identities_the_side_is_unknown():
    s = Station()
    for _ in range(3):
        _session(s, 0)  # good sessions, but of which vehicle?
    _session(s, 13)
    (fault,) = s.raised("diode_fault")
    assert fault.side == "unknown" and "identity is not known" in fault.side_basis


def test_station_facts_come_from_providers():
    s = Station()
    facts: ManualFacts = s.engine.facts  # type: ignore[assignment]
    facts.set(disk_free_pct=3.0)
    s.run(12)
    (disk,) = s.raised("disk_nearly_full")
    assert disk.scope == "station" and disk.devices == [] and disk.connectors == [1]
    with pytest.raises(KeyError, match="unknown station fact"):
        facts.set(disk_full=True)


def test_next_due_tells_the_service_when_to_evaluate():
    s = Station()
    s.run(2)
    assert s.engine.next_due() is None  # nothing pending
    s.volts(200)
    s.run(2)  # under-voltage true for 2 s of its 5 s raise_after
    assert s.engine.next_due() == pytest.approx(3.0, abs=0.5)
    s.run(4)
    assert len(s.raised("undervoltage")) == 1
    s.volts(230)
    s.run(1)  # now it is the clear that is pending (10 s)
    assert s.engine.next_due() == pytest.approx(9.0, abs=0.5)


def test_next_wake_at_a_look_back_windows_edge_between_polls():
    s = Station()
    s.meter.update(current_l1=16.0, power_w=3680.0)
    s.evse["cp_state"] = "C"
    for _ in range(20):  # charging: the register advances
        s.energy += 1
        s.run(1.0)
    s.run(29.0)  # frozen: delta over 30 s reaches 0 at the last change + 30 s, between polls
    assert s.raised("energy_register_frozen") == []
    wake = s.engine.next_wake()
    assert wake is not None and 0 < wake <= 1.0
    assert s.engine.next_due() is None  # nothing pending: only the window's edge
    s.t += timedelta(seconds=wake)
    s.events.extend(s.engine.evaluate())  # no new readings: time alone turns it true
    assert [f.rule for f in s.events if isinstance(f, FaultRaised)] == ["energy_register_frozen"]


def test_next_wake_when_a_value_has_been_unavailable_long_enough():
    s = Station()
    s.run(2)
    s.meter_quality = Quality.NOT_AVAILABLE
    s.run(30)  # not available since the first bad poll: 29.5 s now
    wake = s.engine.next_wake()
    assert wake is not None and 0.5 <= wake <= 0.51
    s.t += timedelta(seconds=wake)
    s.events.extend(s.engine.evaluate())
    assert rules_of(s.events) == ["meter_value_unavailable"]
