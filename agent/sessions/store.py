"""Session, sample, charge-record and authorization tables of the store (schema: migration
"sessions, charge records, billing state" in agent/store/migrations.py).

`SessionStore` owns one connection to the store file (WAL, synchronous=FULL; the readings
writer has its own). Every write is one `BEGIN IMMEDIATE` transaction: a session's state
change, its meter samples and its events commit together or not at all. Call it from a
worker thread (asyncio.to_thread): a commit waits for an fsync.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.store.db import open_db, open_readonly, transaction


@dataclass
class SessionRow:
    """One row of `sessions`."""

    id: str
    connector: int
    state: str  # active | closed
    status: str
    started_ts: int
    charging_end_ts: int | None
    ended_ts: int | None
    auth_method: str
    id_token: str
    id_token_type: str
    meter_device: str
    meter_serial: str | None
    start_wh: int
    billed_wh: int
    tariff_id: str | None
    tariff_json: str | None
    limits_json: str
    payment_json: str | None
    ocmf_begin: str | None
    tracker_json: str
    stop_reason: str | None
    updated_ts: int


@dataclass
class SampleRow:
    """One row of `meter_samples`: a register reading kept with its session."""

    session_id: str
    ts: int
    kind: str  # begin | periodic | clock | tariff | gap | anomaly | end | resume
    register_wh: int
    session_wh: int
    tx: str | None = None  # the OCMF reason when the sample is a signed reading
    measurands: str = "{}"
    id: int | None = None


@dataclass
class RecordRow:
    """One row of `charge_records` (the body is the chained JSON text)."""

    seq: int
    id: str
    session_id: str
    prev_hash: str
    hash: str
    body: str
    connector: int
    started_ts: int
    ended_ts: int
    energy_wh: int
    currency: str | None
    total_excl_vat: str | None
    total_incl_vat: str | None
    review: int
    created_ts: int
    delivered_ts: int | None

    @property
    def data(self) -> dict[str, Any]:
        """The body parsed (amounts stay strings: they are Decimal text)."""
        return json.loads(self.body)


def _cols(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _rows(cur: sqlite3.Cursor, cls: type) -> list:
    return [cls(*r) for r in cur.fetchall()]


class SessionStore:
    """Synchronous, thread-safe access to the session tables."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """`readonly`: for the CLI; never creates or migrates the file (see open_readonly)."""
        self.path = Path(path)
        self._conn = open_readonly(self.path) if readonly else open_db(self.path)
        self._lock = threading.RLock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock, transaction(self._conn, billing=True):
            yield self._conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, under the lock."""
        with self._lock:
            yield self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads

    def session(self, session_id: str) -> SessionRow | None:
        """The session with this id (or a unique prefix of it), or None."""
        with self.reading() as c:
            rows = _rows(
                c.execute(
                    f"SELECT {_cols(SessionRow)} FROM sessions WHERE id = ? OR id LIKE ? LIMIT 2",
                    (session_id, session_id.replace("%", "") + "%"),
                ),
                SessionRow,
            )
        exact = [r for r in rows if r.id == session_id]
        return exact[0] if exact else (rows[0] if len(rows) == 1 else None)

    def active_sessions(self) -> list[SessionRow]:
        """Sessions not closed yet (at most one per connector)."""
        with self.reading() as c:
            return _rows(
                c.execute(f"SELECT {_cols(SessionRow)} FROM sessions WHERE state = 'active'"),
                SessionRow,
            )

    def sessions(
        self, since_us: int | None = None, until_us: int | None = None, limit: int = 1000
    ) -> list[SessionRow]:
        """Sessions started in [since, until), newest first."""
        with self.reading() as c:
            return _rows(
                c.execute(
                    f"SELECT {_cols(SessionRow)} FROM sessions WHERE started_ts >= ? "
                    "AND started_ts < ? ORDER BY started_ts DESC LIMIT ?",
                    (since_us or 0, until_us or 2**62, limit),
                ),
                SessionRow,
            )

    def samples(self, session_id: str) -> list[SampleRow]:
        """The session's meter samples, oldest first."""
        with self.reading() as c:
            return _rows(
                c.execute(
                    f"SELECT {_cols(SampleRow)} FROM meter_samples WHERE session_id = ? "
                    "ORDER BY ts, id",
                    (session_id,),
                ),
                SampleRow,
            )

    def events(self, session_id: str) -> list[tuple[int, str, str, str]]:
        """(ts, status, kind, detail) of the session's events, oldest first."""
        with self.reading() as c:
            return c.execute(
                "SELECT ts, status, kind, detail FROM session_events WHERE session_id = ? "
                "ORDER BY id",
                (session_id,),
            ).fetchall()

    def records(self, since_us: int | None = None, until_us: int | None = None) -> list[RecordRow]:
        """Charge records in chain order (optionally those whose session started in range)."""
        with self.reading() as c:
            return _rows(
                c.execute(
                    f"SELECT {_cols(RecordRow)} FROM charge_records WHERE started_ts >= ? "
                    "AND started_ts < ? ORDER BY seq",
                    (since_us or 0, until_us or 2**62),
                ),
                RecordRow,
            )

    def record_of(self, session_id: str) -> RecordRow | None:
        """The charge record of a session, or None."""
        with self.reading() as c:
            rows = _rows(
                c.execute(
                    f"SELECT {_cols(RecordRow)} FROM charge_records WHERE session_id = ?",
                    (session_id,),
                ),
                RecordRow,
            )
        return rows[0] if rows else None

    def closed_without_record(self) -> list[str]:
        """Ids of closed sessions that have no charge record (must be none)."""
        with self.reading() as c:
            return [
                r[0]
                for r in c.execute(
                    "SELECT s.id FROM sessions s LEFT JOIN charge_records r ON r.session_id = s.id "
                    "WHERE s.state = 'closed' AND r.seq IS NULL ORDER BY s.started_ts"
                )
            ]

    def state(self, key: str) -> str | None:
        """A value of `billing_state`."""
        with self.reading() as c:
            return get_state(c, key)

    def table_exists(self, name: str) -> bool:
        """Whether the store has a table called `name` (e.g. another feature's `faults`)."""
        with self.reading() as c:
            row = c.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ outbox

    def mark_delivered(self, record_id: str, at_us: int) -> bool:
        """The cloud confirmed a record: set its delivered marker (once)."""
        with self.tx() as c:
            cur = c.execute(
                "UPDATE charge_records SET delivered_ts = ? WHERE id = ? AND delivered_ts IS NULL",
                (at_us, record_id),
            )
            return cur.rowcount == 1

    def undelivered(self, limit: int = 100) -> list[RecordRow]:
        """Records the cloud has not confirmed, in chain order (the outbox)."""
        with self.reading() as c:
            return _rows(
                c.execute(
                    f"SELECT {_cols(RecordRow)} FROM charge_records WHERE delivered_ts IS NULL "
                    "ORDER BY seq LIMIT ?",
                    (limit,),
                ),
                RecordRow,
            )


# ---------------------------------------------------------------------- SQL helpers


def get_state(c: sqlite3.Connection, key: str) -> str | None:
    """A value of `billing_state` (pagination counter, chain anchor, …)."""
    row = c.execute("SELECT value FROM billing_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def set_state(c: sqlite3.Connection, key: str, value: str) -> None:
    """Set a value of `billing_state` (inside the caller's transaction)."""
    c.execute(
        "INSERT INTO billing_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def insert_session(c: sqlite3.Connection, row: SessionRow) -> None:
    """Insert a new active session (the unique index refuses a second on one connector)."""
    names = [f.name for f in fields(SessionRow)]
    c.execute(
        f"INSERT INTO sessions ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [getattr(row, n) for n in names],
    )


def update_session(c: sqlite3.Connection, session_id: str, **values: Any) -> None:
    """Update columns of an active session; raises if it is not active (already closed)."""
    sets = ", ".join(f"{k} = ?" for k in values)
    cur = c.execute(
        f"UPDATE sessions SET {sets} WHERE id = ? AND state = 'active'",
        [*values.values(), session_id],
    )
    if cur.rowcount != 1:
        raise sqlite3.IntegrityError(f"session {session_id} is not active")


def insert_sample(c: sqlite3.Connection, s: SampleRow) -> None:
    """Keep a meter sample with its session."""
    c.execute(
        "INSERT INTO meter_samples (session_id, ts, kind, register_wh, session_wh, tx, "
        "measurands) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (s.session_id, s.ts, s.kind, s.register_wh, s.session_wh, s.tx, s.measurands),
    )


def insert_event(
    c: sqlite3.Connection,
    session_id: str | None,
    connector: int,
    ts: int,
    status: str,
    kind: str,
    detail: str = "",
) -> None:
    """Log a status transition or session event."""
    c.execute(
        "INSERT INTO session_events (session_id, connector, ts, status, kind, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (session_id, connector, ts, status, kind, detail),
    )


def chain_head(c: sqlite3.Connection) -> tuple[int, str] | None:
    """(seq, hash) of the newest record, or the anchor left by retention pruning."""
    row = c.execute("SELECT seq, hash FROM charge_records ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None:
        return int(row[0]), row[1]
    anchor = get_state(c, "chain_anchor")
    if anchor is None:
        return None
    seq, h = anchor.split(":")
    return int(seq), h


def insert_record(c: sqlite3.Connection, r: RecordRow) -> None:
    """Append a charge record (the unique session_id refuses a second record)."""
    names = [f.name for f in fields(RecordRow)]
    c.execute(
        f"INSERT INTO charge_records ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [getattr(r, n) for n in names],
    )
