"""Faults in the store: every raise and clear, with the full event, committed one by one.

`FaultLog` opens its own connection to the store database (WAL: it writes alongside the
readings writer, and the CLI reads while the service runs). Synchronous: the service calls
it from a worker thread, the CLI directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from agent.events import FaultCleared, FaultLatch, FaultRaised
from agent.store.db import open_db, open_readonly, schema_version, transaction
from agent.store.readings import ts_to_us

FAULTS_SCHEMA = 3  # the store schema version that brought the faults table
LATCH_SCHEMA = 9  # ... and the one that brought its latch column

FaultEvent = FaultRaised | FaultLatch | FaultCleared


@dataclass(frozen=True)
class FaultRecord:
    """One fault as stored: the raise, and the clear once it is over."""

    raised: FaultRaised
    cleared: FaultCleared | None = None
    latch: FaultLatch | None = None  # its last latch change (rules that latch)

    @property
    def active(self) -> bool:
        return self.cleared is None

    @property
    def latched(self) -> bool:
        """Active, its condition over, held until evidence or a technician clears it."""
        return self.active and self.latch is not None and self.latch.state != "active"

    def as_json(self) -> dict:
        """JSON-ready: the FaultRaised fields plus `active`, `latched`, `latch`, `cleared`."""
        return {
            **self.raised.model_dump(mode="json"),
            "active": self.active,
            "latched": self.latched,
            "latch": self.latch.model_dump(mode="json") if self.latch else None,
            "cleared": self.cleared.model_dump(mode="json") if self.cleared else None,
        }


class FaultLog:
    """The `faults` table of a store database."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """`readonly`: for the CLI; never creates or migrates the file (see open_readonly)."""
        self.path = Path(path)
        self._conn = open_readonly(self.path, FAULTS_SCHEMA) if readonly else open_db(self.path)
        # A reader of a store the service has not migrated yet sees no latch column.
        self._latch_col = "latch" if schema_version(self._conn) >= LATCH_SCHEMA else "NULL"
        self._lock = threading.Lock()

    def record(self, event: FaultEvent) -> None:
        """Store a raise (a new row), a latch change or a clear (update its row); idempotent."""
        with self._lock, transaction(self._conn):
            if isinstance(event, FaultRaised):
                self._conn.execute(
                    "INSERT OR IGNORE INTO faults (fault_id, rule, scope, severity, raised_ts, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        event.fault_id,
                        event.rule,
                        event.scope,
                        event.severity,
                        ts_to_us(event.ts),
                        event.model_dump_json(),
                    ),
                )
            elif isinstance(event, FaultLatch):
                self._conn.execute(
                    "UPDATE faults SET latch = ? WHERE fault_id = ? AND cleared_ts IS NULL",
                    (event.model_dump_json(), event.fault_id),
                )
            else:
                self._conn.execute(
                    "UPDATE faults SET cleared_ts = ?, clear_reason = ?, cleared = ? "
                    "WHERE fault_id = ? AND cleared_ts IS NULL",
                    (ts_to_us(event.ts), event.reason, event.model_dump_json(), event.fault_id),
                )

    def record_many(self, events: list[FaultEvent]) -> None:
        """record() each event, in order."""
        for e in events:
            self.record(e)

    def active(self) -> list[FaultRecord]:
        """Faults not cleared, oldest first."""
        return self._select("WHERE cleared_ts IS NULL ORDER BY raised_ts", ())

    def history(self, limit: int = 100) -> list[FaultRecord]:
        """The newest `limit` faults, active or not, newest first."""
        return self._select("ORDER BY raised_ts DESC LIMIT ?", (limit,))

    def get(self, fault_id: str) -> FaultRecord | None:
        """One fault by id."""
        rows = self._select("WHERE fault_id = ?", (fault_id,))
        return rows[0] if rows else None

    def _select(self, where: str, args: tuple) -> list[FaultRecord]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT payload, cleared, {self._latch_col} FROM faults {where}", args
            ).fetchall()
        return [
            FaultRecord(
                FaultRaised.model_validate_json(p),
                FaultCleared.model_validate_json(c) if c else None,
                FaultLatch.model_validate_json(latch) if latch else None,
            )
            for p, c, latch in rows
        ]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FaultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
