"""The simulator's physics: IEC 61851 states, contactor, meter integration, supply noise."""

from __future__ import annotations

import random

import pytest

from hil.models import (
    EV,
    EV_DRAW_RATIO,
    OVERCURRENT_TRIP_S,
    Evse,
    Meter,
    Supply,
    charge_step,
    electrical_values,
)

V = [230.0, 230.0, 230.0]


def _charging() -> tuple[Evse, EV]:
    return Evse(enabled=True, offered_current_a=16.0), EV(plugged=True)


def test_states_a_b_c_d():
    evse, ev = Evse(enabled=True, offered_current_a=16.0), EV()
    assert charge_step(evse, ev, V, 0.1) == [0, 0, 0]
    assert evse.cp_state == "A"
    ev.plugged = True
    evse.enabled = False
    charge_step(evse, ev, V, 0.1)
    assert (evse.cp_state, evse.contactor_closed) == ("B", False)
    evse.enabled = True
    currents = charge_step(evse, ev, V, 0.1)
    assert (evse.cp_state, evse.contactor_closed) == ("C", True)
    assert currents == [round(16 * EV_DRAW_RATIO, 2)] * 3
    ev.ventilation = True
    charge_step(evse, ev, V, 0.1)
    assert evse.cp_state == "D"


@pytest.mark.parametrize("offered", [0.0, 5.9])
def test_no_charging_below_six_amps(offered):
    evse, ev = Evse(enabled=True, offered_current_a=offered), EV(plugged=True)
    assert charge_step(evse, ev, V, 0.1) == [0, 0, 0]
    assert evse.cp_state == "B"


def test_ev_limits_and_phases():
    evse, ev = Evse(enabled=True, offered_current_a=32.0), EV(plugged=True, max_current_a=10)
    ev.phases = 1
    currents = charge_step(evse, ev, V, 0.1)
    assert currents == [round(10 * EV_DRAW_RATIO, 2), 0.0, 0.0]


def test_suspended_ev_goes_to_b():
    evse, ev = _charging()
    ev.suspended = True
    assert charge_step(evse, ev, V, 0.1) == [0, 0, 0]
    assert evse.cp_state == "B"


def test_welded_contactor_keeps_current_when_commanded_open():
    evse, ev = _charging()
    before = charge_step(evse, ev, V, 0.1)
    evse.faults.welded = True
    evse.enabled = False
    after = charge_step(evse, ev, V, 0.1)
    # The car's supply never went away: it keeps S2 closed (C without PWM) and draws on.
    assert evse.cp_state == "C" and not evse.pwm_on()
    assert (evse.contactor_commanded, evse.contactor_closed) == (False, True)
    assert after == before
    assert evse.error == "contactor_fault"  # seen through the auxiliary contact


def test_a_welded_contactor_is_invisible_to_a_controller_without_feedback():
    evse, ev = _charging()
    evse.contactor_feedback = False
    charge_step(evse, ev, V, 0.1)
    evse.faults.welded = True
    evse.enabled = False
    assert max(charge_step(evse, ev, V, 0.1)) > 15
    assert evse.error == "none"


def test_a_car_that_obeys_the_pwm_stops_drawing_through_a_welded_contactor():
    evse, ev = _charging()
    charge_step(evse, ev, V, 0.1)
    evse.faults.welded, evse.faults.ev_keeps_drawing = True, False
    evse.enabled = False
    assert charge_step(evse, ev, V, 0.1) == [0, 0, 0]
    assert evse.cp_state == "B" and evse.contactor_closed


def test_a_missing_diode_shows_as_state_f_once_the_pwm_starts():
    evse, ev = Evse(), EV(plugged=True)
    evse.faults.diode_fault = True
    charge_step(evse, ev, V, 0.1)
    assert evse.cp_state == "B"  # plugged, nothing offered yet
    evse.enabled, evse.offered_current_a = True, 16.0
    assert charge_step(evse, ev, V, 0.1) == [0, 0, 0]
    assert (evse.cp_state, evse.error) == ("F", "diode_missing")


def test_stuck_open_contactor():
    evse, ev = _charging()
    evse.faults.stuck_open = True
    assert charge_step(evse, ev, V, 0.1) == [0, 0, 0]
    assert evse.cp_state == "C"
    assert evse.error == "contactor_fault"


def test_ev_overcurrent_trips_after_a_while():
    evse, ev = _charging()
    evse.faults.ev_overcurrent_a = 20.0
    assert charge_step(evse, ev, V, 1.0) == [20.0] * 3
    assert evse.error == "overcurrent"
    for _ in range(int(OVERCURRENT_TRIP_S)):
        charge_step(evse, ev, V, 1.0)
    assert charge_step(evse, ev, V, 1.0) == [0, 0, 0]
    assert evse.tripped and evse.error == "overcurrent"


def test_lost_phase_carries_no_current():
    evse, ev = _charging()
    assert charge_step(evse, ev, [230.0, 0.0, 230.0], 0.1)[1] == 0.0


def test_temperature_rises_with_current():
    evse, ev = _charging()
    evse.offered_current_a = 32.0
    for _ in range(60):
        charge_step(evse, ev, V, 60.0)
    assert 40 < evse.temperature_c < 46  # 25 + 0.02 × 31.36²


def test_meter_integrates_exact_integer_wh():
    meter = Meter()
    values = electrical_values([230.0] * 3, [16.0] * 3, 1.0, 50.0)
    assert values["power_w"] == 11040.0
    for _ in range(36000):  # one hour at 10 Hz
        meter.integrate(values, 0.1)
    assert meter.import_wh == 11040
    assert meter.phase_wh == [3680, 3680, 3680]


def test_meter_keeps_sub_wh_remainder():
    meter = Meter()
    values = electrical_values([230.0, 0, 0], [0.01, 0, 0], 1.0, 50.0)  # 2.3 W
    for _ in range(9000):  # 30 min in 0.2 s steps: 1.15 Wh
        meter.integrate(values, 0.2)
    assert meter.import_wh == 1
    for _ in range(9000):
        meter.integrate(values, 0.2)
    assert meter.import_wh == 2  # 2.3 Wh, nothing lost


def test_supply_noise_is_deterministic_and_small():
    a, b = Supply(230.0, random.Random(7)), Supply(230.0, random.Random(7))
    seq_a, seq_b = [], []
    for _ in range(1000):
        a.advance()
        b.advance()
        seq_a.append(a.voltages([0, 0, 0]))
        seq_b.append(b.voltages([0, 0, 0]))
    assert seq_a == seq_b
    flat = [v for vs in seq_a for v in vs]
    assert min(flat) >= 228.0 and max(flat) <= 232.0
    assert len(set(flat)) > 5  # it does move


def test_line_voltage_and_neutral_current():
    values = electrical_values([230.0] * 3, [10.0, 10.0, 0.0], 0.99, 50.0)
    assert values["voltage_l1_l2"] == pytest.approx(398.4, abs=0.1)
    assert values["current_n"] == 10.0
