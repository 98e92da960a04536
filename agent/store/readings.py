"""Readings ring and device health: row codecs and the queries behind `Store`.

Functions here take an open connection and never commit; `Store` owns transactions.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from agent.events import DeviceHealth, Quality, Reading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

Value = float | int | str | bool | None


def ts_to_us(ts: datetime) -> int:
    """Aware datetime -> integer microseconds since the Unix epoch (exact, any offset)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts!r}: store timestamps must be timezone-aware")
    return (ts - _EPOCH) // _US


def us_to_ts(us: int) -> datetime:
    """Integer epoch microseconds -> aware UTC datetime (exact)."""
    return _EPOCH + timedelta(microseconds=us)


def encode_value(value: Value) -> tuple[str, int | float | None, str | None]:
    """Python value -> (vtype, value_num, value_text) so that decoding gives it back exactly."""
    # bool first: it is a subclass of int.
    if value is None:
        return "none", None, None
    if isinstance(value, bool):
        return "bool", int(value), None
    if isinstance(value, int):
        if _I64_MIN <= value <= _I64_MAX:
            return "int", value, None
        return "int", None, str(value)  # SQLite integers are 64-bit; keep big ones as digits
    if isinstance(value, float):
        return "float", (None if math.isnan(value) else value), None
    if isinstance(value, str):
        return "str", None, value
    raise TypeError(f"cannot store reading value of type {type(value).__name__}")


def decode_value(vtype: str, num: int | float | None, text: str | None) -> Value:
    """Inverse of `encode_value`."""
    if vtype == "none":
        return None
    if vtype == "bool":
        return bool(num)
    if vtype == "int":
        return int(text) if num is None else int(num)
    if vtype == "float":
        return math.nan if num is None else float(num)
    if vtype == "str":
        return text
    raise ValueError(f"unknown value type {vtype!r} in readings row")


_COLUMNS = "id, ts, device, quantity, vtype, value_num, value_text, unit, quality"


def _row_to_reading(row: sqlite3.Row | tuple) -> Reading:
    _id, ts, device, quantity, vtype, num, text, unit, quality = row
    return Reading(
        ts=us_to_ts(ts),
        device=device,
        quantity=quantity,
        value=decode_value(vtype, num, text),
        unit=unit,
        quality=Quality(quality),
    )


def insert_readings(conn: sqlite3.Connection, readings: Sequence[Reading]) -> int:
    """Insert `readings` (no commit). Returns the number of rows inserted."""
    rows = [
        (ts_to_us(r.ts), r.device, r.quantity, *encode_value(r.value), r.unit, str(r.quality))
        for r in readings
    ]
    conn.executemany(
        "INSERT INTO readings (ts, device, quantity, vtype, value_num, value_text, unit, quality)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def select_latest(conn: sqlite3.Connection, device: str | None = None) -> list[Reading]:
    """Newest reading per (device, quantity), ordered by device then quantity."""
    where, args = ("WHERE device = ?", (device,)) if device is not None else ("", ())
    # The GROUP BY walks the (device, quantity, ts) index; ties on ts go to the later insert.
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM readings WHERE id IN ("
        "  SELECT (SELECT r.id FROM readings r"
        "          WHERE r.device = g.device AND r.quantity = g.quantity"
        "          ORDER BY r.ts DESC, r.id DESC LIMIT 1)"
        f"  FROM (SELECT DISTINCT device, quantity FROM readings {where}) g"
        ") ORDER BY device, quantity",
        args,
    ).fetchall()
    return [_row_to_reading(r) for r in rows]


def select_history(
    conn: sqlite3.Connection,
    device: str,
    quantity: str,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[Reading]:
    """The newest `limit` readings of one quantity at or after `since`, oldest first."""
    since_us = ts_to_us(since) if since is not None else -(2**63)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM readings"
        " WHERE device = ? AND quantity = ? AND ts >= ?"
        " ORDER BY ts DESC, id DESC LIMIT ?",
        (device, quantity, since_us, limit),
    ).fetchall()
    return [_row_to_reading(r) for r in reversed(rows)]


def upsert_health(conn: sqlite3.Connection, h: DeviceHealth) -> None:
    """Store `h` as the device's latest health unless a newer one is already stored."""
    conn.execute(
        "INSERT INTO device_health (device, health, ts) VALUES (?, ?, ?)"
        " ON CONFLICT (device) DO UPDATE SET health = excluded.health, ts = excluded.ts"
        " WHERE excluded.ts >= device_health.ts",
        (h.device, h.model_dump_json(), ts_to_us(h.ts)),
    )


def select_health(conn: sqlite3.Connection) -> list[DeviceHealth]:
    """Latest health of every device, ordered by device."""
    rows = conn.execute("SELECT health FROM device_health ORDER BY device").fetchall()
    return [DeviceHealth.model_validate_json(r[0]) for r in rows]


def prune_readings(
    conn: sqlite3.Connection, max_rows: int, max_age_days: float, now: datetime
) -> int:
    """Delete readings older than `max_age_days` before `now`, then all but the newest
    `max_rows` (by ts, then insertion order). No commit. Returns the rows deleted."""
    cutoff = ts_to_us(now - timedelta(days=max_age_days))
    deleted = conn.execute("DELETE FROM readings WHERE ts < ?", (cutoff,)).rowcount
    if max_rows <= 0:
        return deleted + conn.execute("DELETE FROM readings").rowcount
    # The (ts, id) of the oldest row to keep; everything ordered before it goes.
    keep = conn.execute(
        "SELECT ts, id FROM readings ORDER BY ts DESC, id DESC LIMIT 1 OFFSET ?",
        (max_rows - 1,),
    ).fetchone()
    if keep is not None:
        deleted += conn.execute(
            "DELETE FROM readings WHERE ts < ? OR (ts = ? AND id < ?)", (keep[0], keep[0], keep[1])
        ).rowcount
    return deleted


def count_readings(conn: sqlite3.Connection) -> int:
    """Number of rows in the readings ring."""
    return conn.execute("SELECT count(*) FROM readings").fetchone()[0]
