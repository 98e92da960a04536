"""Charger- or vehicle-side from evidence about vehicles (agent/diagnosis/sides.py)."""

from __future__ import annotations

from agent.diagnosis.sides import ConnectorSessions


def _cycle(c: ConnectorSessions, vehicle: str | None, fault: str | None, charge: bool = True):
    """One plug-in cycle: B, (C), the fault marked, back to A."""
    assert c.on_cp("B") == "started"
    if vehicle:
        c.note_vehicle(vehicle)
    if charge:
        c.on_cp("C")
    if fault:
        c.mark(fault)
    assert c.on_cp("A") == "ended"


def _now(c: ConnectorSessions, vehicle: str | None) -> None:
    c.on_cp("B")
    if vehicle:
        c.note_vehicle(vehicle)


def test_every_earlier_session_the_same_car_is_unknown():
    c = ConnectorSessions()
    for _ in range(5):
        _cycle(c, "car-A", None)
    _now(c, "car-A")
    side, why = c.verdict("contactor_fails_to_close")
    assert side == "unknown", why


def test_another_car_that_charged_without_it_makes_it_the_vehicle():
    c = ConnectorSessions()
    _cycle(c, "car-B", None)
    _now(c, "car-A")
    assert c.verdict("residual_current")[0] == "vehicle"


def test_another_car_that_only_plugged_in_proves_nothing():
    c = ConnectorSessions()
    _cycle(c, "car-B", None, charge=False)  # never charged: the contactor was not tried
    _now(c, "car-A")
    assert c.verdict("contactor_fails_to_close")[0] == "unknown"


def test_the_same_fault_with_another_car_is_the_charger():
    c = ConnectorSessions()
    _cycle(c, "car-C", None)
    _cycle(c, "car-B", "connector_lock_failure")
    _now(c, "car-A")
    side, why = c.verdict("connector_lock_failure")
    assert side == "charger" and "1 other vehicle" in why


def test_unnamed_sessions_count_for_neither_side():
    c = ConnectorSessions()
    _cycle(c, None, "cp_state_e")
    _cycle(c, None, None)
    _now(c, "car-A")
    assert c.verdict("cp_state_e")[0] == "unknown"
    _now(d := ConnectorSessions(), None)
    assert d.verdict("cp_state_e") == ("unknown", "the vehicle's identity is not known")


def test_a_fault_that_moves_with_the_vehicle_is_the_vehicle():
    one, two = ConnectorSessions(), ConnectorSessions()
    _cycle(one, "car-A", "cp_state_e")
    _now(two, "car-A")
    side, why = two.verdict("cp_state_e", [one])
    assert side == "vehicle" and "another connector" in why
    # Another car's fault elsewhere says nothing about this one.
    _now(three := ConnectorSessions(), "car-Z")
    assert three.verdict("cp_state_e", [one])[0] == "unknown"
