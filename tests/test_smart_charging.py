"""Smart charging, pure logic: profile checks, stacking, recurrence, relative, W → A, composite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ocpp.smart_charging import (
    NOMINAL_VOLTAGE_V,
    ConnectorSpec,
    Installed,
    Limits,
    Purpose,
    RateUnit,
    Station,
    Tx,
    check_profile,
    limit_timeline,
    matches_clear,
    normalized,
    parse_profile,
    schedule_periods,
)

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday
STATION = Station({1: ConnectorSpec(3, 32.0), 2: ConnectorSpec(1, 16.0)}, {})


def profile(
    pid: int = 1,
    *,
    purpose: str = "TxDefaultProfile",
    kind: str = "Absolute",
    stack: int = 0,
    periods: tuple[tuple[int, float], ...] = ((0, 16.0),),
    unit: str = "A",
    start: datetime | None = T0,
    duration: int | None = None,
    **extra,
) -> dict:
    """A ChargingProfile in wire form (camelCase)."""
    sched: dict = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": v} for s, v in periods],
    }
    if start is not None:
        sched["startSchedule"] = start.isoformat()
    if duration is not None:
        sched["duration"] = duration
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": sched,
        **extra,
    }


def inst(connector: int = 1, **kw) -> Installed:
    return Installed(connector, parse_profile(profile(**kw)))


def amps_at(profiles, connector, t, station=STATION):
    """The limit in force at t (what the live limiter applies)."""
    return limit_timeline(profiles, connector, t, t + timedelta(hours=1), station)[0].amps


def test_wire_round_trip_and_snake_case_from_the_library():
    p = parse_profile(profile(validFrom="2025-03-03T00:00:00Z"))
    assert parse_profile(p.wire()) == p
    snake = {
        "charging_profile_id": 1,
        "stack_level": 0,
        "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute",
        "valid_from": "2025-03-03T00:00:00Z",
        "charging_schedule": {
            "start_schedule": T0.isoformat(),
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": 16.0}],
        },
    }
    assert parse_profile(snake) == p


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (profile(periods=((10, 6.0),)), "startPeriod 0"),
        (profile(periods=((0, 6.0), (60, 8.0), (30, 7.0))), "must increase"),
        (profile(kind="Recurring"), "recurrencyKind"),
        (profile(kind="Relative"), "no startSchedule"),
        (profile(transactionId=5), "only a TxProfile"),
        (profile(kind="Recurring", recurrencyKind="Daily", duration=90_000), "exceeds"),
        (profile(unit="kW"), "chargingRateUnit"),
        (profile(validFrom="2025-03-04T00:00:00Z", validTo="2025-03-03T00:00:00Z"), "validTo"),
    ],
)
def test_invalid_profiles_are_refused_with_a_reason(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_profile(data)


def test_station_checks():
    lim = Limits(max_stack_level=3, allowed_units=frozenset({RateUnit.AMPS}), max_periods=2,
                 max_installed=2)  # fmt: skip
    p = parse_profile
    assert check_profile(p(profile()), 1, [], STATION, lim) is None
    assert "connector 0 only" in check_profile(
        p(profile(purpose="ChargePointMaxProfile")), 1, [], STATION, lim
    )
    assert "no connector 7" in check_profile(p(profile()), 7, [], STATION, lim)
    assert "needs a transaction" in check_profile(p(profile(purpose="TxProfile")), 1, [],
                                                  STATION, lim)  # fmt: skip
    with_tx = Station(STATION.connectors, {1: Tx(1, T0, 42)})
    assert (
        check_profile(p(profile(purpose="TxProfile", transactionId=42)), 1, [], with_tx, lim)
        is None
    )
    assert "not the transaction" in check_profile(
        p(profile(purpose="TxProfile", transactionId=41)), 1, [], with_tx, lim
    )
    assert "ChargeProfileMaxStackLevel" in check_profile(p(profile(stack=4)), 1, [], STATION, lim)
    assert "AllowedChargingRateUnit" in check_profile(p(profile(unit="W")), 1, [], STATION, lim)
    three = profile(periods=((0, 6.0), (10, 7.0), (20, 8.0)))
    assert "ChargingScheduleMaxPeriods" in check_profile(p(three), 1, [], STATION, lim)
    full = [inst(pid=1, stack=0), inst(pid=2, stack=1)]
    assert "MaxChargingProfilesInstalled" in check_profile(p(profile(pid=3, stack=2)), 1, full,
                                                           STATION, lim)  # fmt: skip
    # Replacing one (same id, or same purpose + stack level on the connector) is not one more.
    assert check_profile(p(profile(pid=2, stack=2)), 1, full, STATION, lim) is None
    assert check_profile(p(profile(pid=9, stack=1)), 1, full, STATION, lim) is None


def test_highest_stack_level_wins_and_lower_one_fills_the_gap():
    low = inst(pid=1, stack=0, periods=((0, 20.0),))
    high = inst(pid=2, stack=1, periods=((0, 10.0),), duration=3600)
    assert amps_at([low, high], 1, T0) == 10.0
    # After the high profile's schedule ends, the lower stack level prevails again.
    assert amps_at([low, high], 1, T0 + timedelta(hours=1)) == 20.0
    steps = limit_timeline([low, high], 1, T0, T0 + timedelta(hours=2), STATION)
    assert [(s.at - T0, s.amps) for s in steps] == [
        (timedelta(0), 10.0),
        (timedelta(hours=1), 20.0),
    ]


def test_validity_window():
    p = inst(validFrom=(T0 + timedelta(minutes=30)).isoformat(),
             validTo=(T0 + timedelta(minutes=90)).isoformat())  # fmt: skip
    assert amps_at([p], 1, T0) is None
    assert amps_at([p], 1, T0 + timedelta(minutes=30)) == 16.0
    assert amps_at([p], 1, T0 + timedelta(minutes=90)) is None


def test_connector_default_beats_station_default_on_equal_level():
    everywhere = inst(0, pid=1, periods=((0, 20.0),))
    mine = inst(1, pid=2, periods=((0, 12.0),))
    assert amps_at([everywhere, mine], 1, T0) == 12.0
    assert amps_at([everywhere, mine], 2, T0) == 20.0


def test_tx_profile_over_default_only_during_its_transaction():
    default = inst(1, pid=1, periods=((0, 20.0),))
    txp = inst(1, pid=2, purpose="TxProfile", stack=0, transactionId=7, periods=((0, 8.0),))
    running = Station(STATION.connectors, {1: Tx(1, T0, 7)})
    other = Station(STATION.connectors, {1: Tx(1, T0, 8)})
    assert amps_at([default, txp], 1, T0, running) == 8.0
    assert amps_at([default, txp], 1, T0, other) == 20.0
    assert amps_at([default, txp], 1, T0, STATION) == 20.0


def test_charge_point_max_is_shared_by_the_connectors_in_a_transaction():
    cp = inst(0, purpose="ChargePointMaxProfile", periods=((0, 40.0),))
    default = inst(0, pid=2, periods=((0, 32.0),))
    idle = STATION
    both = Station(STATION.connectors, {1: Tx(1, T0), 2: Tx(2, T0)})
    assert amps_at([cp, default], 1, T0, idle) == 32.0  # 40 A alone: the default caps
    assert amps_at([cp, default], 1, T0, both) == 20.0  # 40 A shared by two
    # Connector 0: min(station max, sum of connector limits).
    assert amps_at([cp, default], 0, T0, idle) == 40.0
    assert amps_at([default], 0, T0, idle) == 32.0 + 16.0  # connector 2's rating caps it


def test_watts_to_amps_with_the_connector_phases():
    w = inst(unit="W", periods=((0, 11040.0),))  # 16 A × 3 × 230 V
    assert amps_at([w], 1, T0) == pytest.approx(16.0)
    assert amps_at([inst(2, unit="W", periods=((0, 3680.0),))], 2, T0) == pytest.approx(16.0)
    one_phase = Installed(1, parse_profile(profile(unit="W", periods=((0, 3680.0),))))
    data = profile(unit="W")
    data["chargingSchedule"]["chargingSchedulePeriod"] = [
        {"startPeriod": 0, "limit": 3680.0, "numberPhases": 1}
    ]
    assert amps_at([Installed(1, parse_profile(data))], 1, T0) == pytest.approx(16.0)
    assert amps_at([one_phase], 1, T0) == pytest.approx(3680 / (3 * NOMINAL_VOLTAGE_V))


def test_daily_recurring_profile_repeats():
    night = inst(kind="Recurring", recurrencyKind="Daily", start=T0.replace(hour=22),
                 periods=((0, 32.0), (8 * 3600, 6.0)))  # fmt: skip
    day2 = T0 + timedelta(days=1)
    assert amps_at([night], 1, T0) is None  # before its first start
    assert amps_at([night], 1, day2.replace(hour=23)) == 32.0
    assert amps_at([night], 1, day2.replace(hour=5)) == 32.0  # 22:00 + 7 h
    assert amps_at([night], 1, day2.replace(hour=7)) == 6.0  # 22:00 + 9 h
    steps = limit_timeline([night], 1, day2, day2 + timedelta(days=1), STATION)
    assert [(s.at.hour, s.amps) for s in steps] == [(8, 6.0), (22, 32.0), (6, 6.0)]


def test_weekly_recurring_profile_repeats_after_seven_days():
    p = inst(kind="Recurring", recurrencyKind="Weekly", duration=3600, periods=((0, 10.0),))
    assert amps_at([p], 1, T0 + timedelta(days=7, minutes=5)) == 10.0
    assert amps_at([p], 1, T0 + timedelta(days=6, minutes=5)) is None


def test_relative_profile_starts_with_the_transaction():
    rel = inst(kind="Relative", start=None, periods=((0, 6.0), (600, 16.0)))
    started = T0 - timedelta(minutes=15)
    running = Station(STATION.connectors, {1: Tx(1, started, 3)})
    assert amps_at([rel], 1, T0, running) == 16.0  # 15 min into the session
    steps = limit_timeline([rel], 1, T0, T0 + timedelta(hours=1), STATION)
    assert [(int((s.at - T0).total_seconds()), s.amps) for s in steps] == [(0, 6.0), (600, 16.0)]


def test_absolute_without_start_starts_when_received():
    p = normalized(parse_profile(profile(start=None, duration=60)), T0)
    assert p.charging_schedule.start_schedule == T0
    assert amps_at([Installed(1, p)], 1, T0 + timedelta(seconds=59)) == 16.0
    assert amps_at([Installed(1, p)], 1, T0 + timedelta(seconds=60)) is None


def test_clear_filters():
    a = inst(1, pid=1, stack=0)
    b = inst(0, pid=2, stack=1, purpose="ChargePointMaxProfile")
    assert matches_clear(a, 1, 0, None, None)  # the id alone decides
    assert not matches_clear(b, 1, None, None, None)
    assert matches_clear(b, None, 0, Purpose.CHARGE_POINT_MAX, 1)
    assert not matches_clear(a, None, None, Purpose.TX_DEFAULT, 1)
    assert matches_clear(a, None, None, None, None)


def test_schedule_periods_in_amps_and_watts():
    steps = limit_timeline(
        [inst(periods=((0, 10.0), (300, 40.0)), duration=900)], 1, T0, T0 + timedelta(hours=1),
        STATION,
    )  # fmt: skip
    assert schedule_periods(steps, RateUnit.AMPS, 32.0, 3) == [
        {"start_period": 0, "limit": 10.0, "number_phases": 3},
        {"start_period": 300, "limit": 32.0, "number_phases": 3},  # capped by the rating
    ]
    watts = schedule_periods(steps, RateUnit.WATTS, 32.0, 3)
    assert watts[0] == {"start_period": 0, "limit": 6900.0, "number_phases": 3}
    assert len(watts) == 2  # 40 A capped to 32 A from 300 s on, and no profile after 900 s


limits = st.floats(min_value=0, max_value=80, allow_nan=False).map(lambda x: round(x, 1))


@settings(deadline=None)  # a shared CI machine: no per-example deadline
@given(
    levels=st.lists(
        st.tuples(st.integers(0, 5), limits, st.integers(1, 7200)),
        min_size=1,
        max_size=5,
        unique_by=lambda x: x[0],
    ),
    at=st.integers(0, 8000),
)
def test_prevailing_limit_is_the_highest_running_stack_level(levels, at):
    profiles = [
        inst(pid=i, stack=s, periods=((0, v),), duration=d) for i, (s, v, d) in enumerate(levels)
    ]
    running = [(s, v) for s, v, d in levels if at < d]
    want = max(running)[1] if running else None
    t = T0 + timedelta(seconds=at)
    assert amps_at(profiles, 1, t) == want
    # The timeline agrees with point evaluation at each of its steps.
    for step in limit_timeline(profiles, 1, T0, T0 + timedelta(hours=3), STATION):
        assert amps_at(profiles, 1, step.at) == step.amps
