"""Versioned schema of the store. Adding a migration = appending one `Migration` to `MIGRATIONS`.

Rules: never edit or reorder a migration that has shipped (devices in the field already ran
it); versions are 1, 2, 3, ... without gaps; each migration runs inside one transaction
together with the `PRAGMA user_version` bump, so a crash leaves the database at either the
old or the new version, never in between.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: `sql` (one or more statements) brings version-1 to `version`."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "readings ring and device health",
        """
        -- ts is integer microseconds since the Unix epoch, UTC: exact to the microsecond,
        -- orders numerically whatever offset the producer used, and is cheap to range-scan.
        -- vtype keeps the Python type: SQLite alone cannot tell bool from int, or 1.0 from 1.
        -- value_num has no declared type on purpose: no affinity, so ints stay INTEGER and
        -- floats stay REAL exactly as bound. A float NaN is stored as NULL (SQLite has no NaN);
        -- an int beyond 64 bits is stored in value_text as decimal digits.
        CREATE TABLE readings (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            device TEXT NOT NULL,
            quantity TEXT NOT NULL,
            vtype TEXT NOT NULL CHECK (vtype IN ('none', 'bool', 'int', 'float', 'str')),
            value_num,
            value_text TEXT,
            unit TEXT NOT NULL DEFAULT '',
            quality TEXT NOT NULL,
            CHECK (
                (vtype = 'none' AND value_num IS NULL AND value_text IS NULL)
                OR (vtype = 'bool' AND typeof(value_num) = 'integer' AND value_num IN (0, 1)
                    AND value_text IS NULL)
                OR (vtype = 'int' AND typeof(value_num) = 'integer' AND value_text IS NULL)
                OR (vtype = 'int' AND value_num IS NULL AND value_text IS NOT NULL)
                OR (vtype = 'float' AND typeof(value_num) IN ('real', 'null')
                    AND value_text IS NULL)
                OR (vtype = 'str' AND value_num IS NULL AND value_text IS NOT NULL)
            )
        );
        CREATE INDEX readings_device_quantity_ts ON readings (device, quantity, ts);
        CREATE INDEX readings_ts ON readings (ts);

        -- The latest DeviceHealth per device, as the event's own JSON (it is small and only
        -- ever read whole); ts duplicates the event's ts so a late, older event cannot win.
        CREATE TABLE device_health (
            device TEXT PRIMARY KEY,
            health TEXT NOT NULL,
            ts INTEGER NOT NULL
        );
        """,
    ),
)

LATEST_VERSION: int = MIGRATIONS[-1].version


def statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (triggers' BEGIN...END included).

    `executescript` would commit any open transaction first, so migrations run statement by
    statement inside our own transaction instead.
    """
    out: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip() and not _only_comments(current):
        raise ValueError(f"incomplete SQL statement at end of migration: {current.strip()!r}")
    return out


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.strip().startswith("--") for ln in text.splitlines())
