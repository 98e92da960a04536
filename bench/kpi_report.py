"""Benchmark: the availability KPI report over a year of a busy station.

A store with `--connectors` connectors and a year of history: `--per-day` sessions per
connector and day (each with its status transitions), a fault every `--fault-every-h`
hours (charger side, grid, vehicle side in turn), a CSMS outage a week and a maintenance
window a month. Figures: the time `build_kpis` takes for the 12-month report (what the
daily MQTT publish, the API and `evedge report --kpi` pay), against a baseline measured in
the same run on the same store: reading the same rows bare (one SELECT per table, no
arithmetic). Median of `--reps` runs each.

Usage: .venv/bin/python bench/kpi_report.py [--connectors 4] [--per-day 12] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from agent import events
from agent.kpi.config import KpiConfig
from agent.kpi.maintenance import add_window
from agent.kpi.uptime import build_kpis
from agent.sessions.store import insert_event
from agent.sessions.times import to_us
from agent.store.db import Store

NOW = datetime(2026, 4, 1, tzinfo=UTC)
START = NOW - timedelta(days=365)
RULES = [("welded_contactor", "charger"), ("supply_outage", "charger"), ("diode_fault", "vehicle")]


def _scope(connectors: list[int]) -> str:
    return f"connector:{connectors[0]}" if connectors else "station"


def _fault(i: int, t0: datetime, minutes: int, connectors: list[int], rule: str, side: str):
    codes = events.FaultCodes(error_code="OtherError", vendor_id="b", vendor_error_code="",
                              info="", component="Connector", variable="Problem")  # fmt: skip
    raised = events.FaultRaised(
        ts=t0, fault_id=f"F{i}", rule=rule, scope=_scope(connectors),
        title={"en": rule}, root_cause={}, severity="error", connectors=connectors, devices=[],
        evidence=[], confidence=0.9, codes=codes, faulted=rule != "cloud_unreachable",
        driver_message={}, technician_steps={}, side=side,
    )  # fmt: skip
    return raised, t0 + timedelta(minutes=minutes)


def build_store(path: Path, connectors: int, per_day: int, fault_every_h: float) -> dict:
    """Write the year; returns the row counts."""
    Store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    n_sessions = n_faults = 0
    day = START
    while day < NOW:
        for c in range(1, connectors + 1):
            for k in range(per_day):
                t0 = day + timedelta(hours=6 + k)
                t1 = t0 + timedelta(minutes=45)
                sid = f"s{n_sessions}"
                conn.execute(
                    "INSERT INTO sessions (id, connector, state, status, started_ts, "
                    "charging_end_ts, ended_ts, auth_method, id_token, id_token_type, "
                    "meter_device, start_wh, billed_wh, tracker_json, stop_reason, updated_ts) "
                    "VALUES (?, ?, 'closed', 'Finishing', ?, ?, ?, 'LocalList', ?, 'LOCAL', "
                    "'meter1', 0, ?, '{}', ?, ?)",
                    (sid, c, to_us(t0), to_us(t1), to_us(t1), f"T{k % 7}",
                     0 if k % 9 == 0 else 9000, "EVDisconnected", to_us(t1)),
                )  # fmt: skip
                for st, t in (("Preparing", t0), ("Charging", t0), ("Finishing", t1),
                              ("Available", t1 + timedelta(minutes=5))):  # fmt: skip
                    insert_event(conn, sid, c, to_us(t), st, "status")
                n_sessions += 1
        day += timedelta(days=1)
    rows = []
    t = START
    while t < NOW:
        rule, side = RULES[n_faults % len(RULES)]
        rows.append(_fault(n_faults, t, 40, [1 + n_faults % connectors], rule, side))
        n_faults += 1
        t += timedelta(hours=fault_every_h)
    t = START
    while t < NOW:
        rows.append(_fault(n_faults, t, 180, [], "cloud_unreachable", "unknown"))
        n_faults += 1
        add_window(conn, t + timedelta(days=2), t + timedelta(days=2, hours=2), None, "", t)
        t += timedelta(days=7)
    for raised, cleared in rows:
        conn.execute(
            "INSERT INTO faults (fault_id, rule, scope, severity, raised_ts, cleared_ts, "
            "clear_reason, payload, cleared) VALUES (?, ?, ?, 'error', ?, ?, 'resolved', ?, '{}')",
            (raised.fault_id, raised.rule, raised.scope, to_us(raised.ts), to_us(cleared),
             raised.model_dump_json()),
        )  # fmt: skip
    conn.execute("COMMIT")
    conn.close()
    return {"sessions": n_sessions, "status_events": n_sessions * 4, "faults": n_faults}


def bare_read(c: sqlite3.Connection) -> int:
    """The baseline: the same rows, read and dropped."""
    n = 0
    for sql in ("SELECT payload, raised_ts, cleared_ts FROM faults",
                "SELECT id, connector, started_ts, ended_ts, id_token, billed_wh, stop_reason "
                "FROM sessions", "SELECT connector, ts, status FROM session_events",
                "SELECT * FROM kpi_maintenance"):  # fmt: skip
        n += len(c.execute(sql).fetchall())
    return n


def timed(fn, reps: int) -> float:
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connectors", type=int, default=4)
    ap.add_argument("--per-day", type=int, default=12)
    ap.add_argument("--fault-every-h", type=float, default=12)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "evedge.db"
        counts = build_store(path, a.connectors, a.per_day, a.fault_every_h)
        with Store(path) as store, store.reading() as c:
            conns = list(range(1, a.connectors + 1))
            base = timed(lambda: bare_read(c), a.reps)
            kpi = timed(lambda: build_kpis(c, station="B", connectors=conns, tz="Europe/Berlin",
                                           now=NOW, cfg=KpiConfig()), a.reps)  # fmt: skip
            rep = build_kpis(c, station="B", connectors=conns, tz="Europe/Berlin", now=NOW,
                             cfg=KpiConfig())  # fmt: skip
    print(json.dumps(counts))
    print(f"bare read of the same rows (baseline): {base * 1000:.0f} ms")
    print(f"12-month KPI report, {a.connectors} connectors: {kpi * 1000:.0f} ms "
          f"({kpi / base:.1f}x the bare read)")  # fmt: skip
    print(f"connector 1: uptime_12m {rep.connectors[0].uptime_12m_pct} %, "
          f"{sum(m.attempts for m in rep.connectors[0].months)} attempts")  # fmt: skip


if __name__ == "__main__":
    main()
