"""Availability KPIs (issue 11, item 6) over a scripted month in virtual time: NEVI uptime
with its exclusions, attempts, first-try success, sessions ended by a fault."""

from __future__ import annotations

import pytest
from kpi_helpers import NOW, scripted_month

from agent.kpi import intervals as iv
from agent.kpi.config import KpiConfig
from agent.kpi.uptime import build_kpis, month_bounds
from agent.sessions.store import SessionStore


def _report(tmp_path, cfg: KpiConfig | None = None, months: int = 1):
    path = tmp_path / "evedge.db"
    ids = scripted_month(path)
    cfg = cfg or KpiConfig(months=months)
    with SessionStore(path, readonly=True) as st, st.reading() as c:
        rep = build_kpis(c, station="KPI-1", connectors=[1, 2], tz="UTC", now=NOW, cfg=cfg)
    return rep, ids


def test_scripted_month_counts_charger_outages_and_excludes_the_rest(tmp_path):
    rep, _ = _report(tmp_path)
    c1, c2 = rep.connectors
    (march,) = c1.months
    assert march.month == "2026-03" and march.minutes == 31 * 24 * 60
    assert march.outage_min == 120 + 90 + 30 + 120 + 240 + 45
    by = march.excluded_by
    assert (by.grid, by.vehicle, by.maintenance, by.csms) == (90, 30, 120, 240)
    assert march.excluded_min == 480
    net = 120 + 45  # the welded contactor and the Unavailable time without a window
    assert march.uptime_pct == round((44_640 - net) / 44_640 * 100, 3)
    assert march.uptime_12m_pct == c1.uptime_12m_pct == round((525_600 - net) / 525_600 * 100, 3)
    # Connector 2 only saw the CSMS away while it could charge: counted, then excluded.
    (m2,) = c2.months
    assert (m2.outage_min, m2.excluded_min, m2.uptime_pct) == (240, 240, 100.0)


def test_attempts_first_try_success_and_fault_codes(tmp_path):
    rep, ids = _report(tmp_path)
    c1 = rep.connectors[0]
    (march,) = c1.months
    assert (march.attempts, march.successful, march.fault_ended) == (5, 3, 1)
    # Visits: A ok, B failed, C failed then retried, D ok: 2 of 4 first tries succeeded.
    assert march.first_try_success_pct == 50.0
    (ended,) = c1.fault_sessions
    assert ended.session_id == ids["fault_session"] and ended.stop_reason == "EmergencyStop"
    assert [(f.fault_id, f.rule, f.mrec, f.ocpp) for f in ended.faults] == [
        (ids["welded"], "welded_contactor", "CX017", "PowerSwitchFailure")
    ]
    assert c1.fault_codes == {"CX017/PowerSwitchFailure": 1}


def test_exclusions_follow_the_config(tmp_path):
    cfg = KpiConfig(months=1, grid_rules=(), exclude_vehicle_side=False,
                    exclude_maintenance=False, csms_rules=())  # fmt: skip
    rep, _ = _report(tmp_path, cfg)
    (march,) = rep.connectors[0].months
    # Nothing excluded; the CSMS outage is no outage at all without csms_rules.
    assert march.excluded_min == 0 and march.outage_min == 120 + 90 + 30 + 120 + 45
    assert rep.connectors[1].months[0].outage_min == 0


def test_twelve_months_trail_and_months_without_data_count_as_up(tmp_path):
    rep, _ = _report(tmp_path, months=13)
    months = rep.connectors[0].months
    assert [m.month for m in months][:2] == ["2025-03", "2025-04"] and months[-1].month == "2026-03"
    assert all(m.outage_min == 0 and m.uptime_12m_pct == 100.0 for m in months[:-1])
    assert rep.data_since is not None and rep.data_since.month == 3


def test_month_bounds_in_the_station_timezone():
    from datetime import UTC, datetime

    months = month_bounds(datetime(2026, 3, 15, 12, tzinfo=UTC), "Europe/Berlin", 2)
    assert [m.label for m in months] == ["2026-02", "2026-03"]
    # March starts at midnight Berlin time (23:00 UTC on Feb 28).
    assert datetime.fromtimestamp(months[1].start_us / 1e6, UTC).hour == 23


@pytest.mark.parametrize(
    ("a", "b", "both", "minus"),
    [
        ([(0, 10)], [(5, 15)], [(5, 10)], [(0, 5)]),
        ([(0, 10), (20, 30)], [(5, 25)], [(5, 10), (20, 25)], [(0, 5), (25, 30)]),
        ([(0, 10)], [(2, 3), (5, 6)], [(2, 3), (5, 6)], [(0, 2), (3, 5), (6, 10)]),
        ([(0, 10)], [], [], [(0, 10)]),
    ],
)
def test_intervals(a, b, both, minus):
    assert iv.intersect(a, b) == both
    assert iv.subtract(a, b) == minus
    assert iv.length(a) == iv.length(both) + iv.length(minus)


def test_config_refuses_what_is_not_a_rule_id():
    with pytest.raises(ValueError, match="not a rule id"):
        KpiConfig(grid_rules=("Supply Outage",))


def test_kpi_section_of_the_station_config():
    from pathlib import Path

    from conftest import station_config

    from agent.config import ConfigError

    example = (Path(__file__).parents[1] / "config" / "station.example.toml").read_text()
    section = example[example.index("# [kpi]") :].split("\n\n", 1)[0]  # up to a blank line
    block = "\n".join(ln[2:] for ln in section.splitlines())
    assert station_config(extra=block).kpi == KpiConfig()  # the documented defaults
    with pytest.raises(ConfigError, match=r"kpi\.months"):
        station_config(extra="[kpi]\nmonths = 0\n")
    with pytest.raises(ConfigError, match=r"kpi\.grid_rule"):
        station_config(extra="[kpi]\ngrid_rule = ['supply_outage']\n")  # a typo: refused
