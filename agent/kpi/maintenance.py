"""Scheduled maintenance windows a technician set (`evedge maintenance add`): outage time
inside one is excluded from the uptime (agent/kpi/uptime.py). Table kpi_maintenance
(migration 10); times are µs UTC, [start, end); connector None is the whole station."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from agent.kpi.history import has_table
from agent.sessions.times import from_us, to_us


@dataclass(frozen=True)
class Window:
    """One maintenance window."""

    id: int
    connector: int | None
    start_us: int
    end_us: int
    note: str

    def to_json(self) -> dict:
        """JSON-ready (times ISO 8601 UTC)."""
        return {
            "id": self.id,
            "connector": self.connector,
            "start": from_us(self.start_us).isoformat(),
            "end": from_us(self.end_us).isoformat(),
            "note": self.note,
        }


def add_window(
    c: sqlite3.Connection,
    start: datetime,
    end: datetime,
    connector: int | None,
    note: str,
    now: datetime,
) -> Window:
    """Store a window (inside the caller's transaction); refuses an empty or reversed one."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("maintenance window: give times with a UTC offset (…Z or +01:00)")
    if end <= start:
        raise ValueError(f"maintenance window: end {end.isoformat()} is not after its start")
    cur = c.execute(
        "INSERT INTO kpi_maintenance (connector, start_ts, end_ts, note, created_ts) "
        "VALUES (?, ?, ?, ?, ?)",
        (connector, to_us(start), to_us(end), note, to_us(now)),
    )
    return Window(int(cur.lastrowid or 0), connector, to_us(start), to_us(end), note)


def windows(c: sqlite3.Connection, t0_us: int, t1_us: int) -> list[Window]:
    """Windows overlapping [t0_us, t1_us), oldest first."""
    if not has_table(c, "kpi_maintenance"):
        return []
    rows = c.execute(
        "SELECT id, connector, start_ts, end_ts, note FROM kpi_maintenance "
        "WHERE start_ts < ? AND end_ts > ? ORDER BY start_ts, id",
        (t1_us, t0_us),
    ).fetchall()
    return [Window(*r) for r in rows]
