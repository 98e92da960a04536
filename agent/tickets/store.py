"""The `tickets` table (migration 8): tickets kept until the cloud confirmed them.

`TicketStore` owns one connection to the store file (WAL: it writes alongside the agent's
other writers, and the CLI reads while the service runs). Synchronous: call it from a worker
thread in the service, directly from the CLI.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.store.db import open_db, transaction
from agent.store.readings import ts_to_us, us_to_ts
from agent.tickets.model import Ticket


class DuplicateTicketId(Exception):
    """A ticket with this id exists already (ids are random: draw another)."""


@dataclass(frozen=True)
class StoredTicket:
    """A ticket and whether the cloud has it."""

    ticket: Ticket
    delivered: datetime | None

    def as_json(self) -> dict:
        """The ticket's JSON plus `delivered` (None: still queued for the cloud)."""
        return {
            **self.ticket.model_dump(mode="json"),
            "delivered": None if self.delivered is None else self.delivered.isoformat(),
        }


class TicketStore:
    """Insert, list and mark delivered; see the module docstring."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn = open_db(self.path)
        self._lock = threading.Lock()

    def insert(self, t: Ticket) -> None:
        """Commit a new ticket (DuplicateTicketId if its id is taken)."""
        try:
            with self._lock, transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO tickets (id, station, connector, created_ts, source, category, "
                    "body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        t.id,
                        t.station,
                        t.connector,
                        ts_to_us(t.created),
                        t.source,
                        t.category,
                        t.model_dump_json(),
                    ),
                )
        except sqlite3.IntegrityError as e:
            if "tickets.id" in str(e):
                raise DuplicateTicketId(t.id) from None
            raise

    def get(self, ticket_id: str) -> StoredTicket | None:
        """The ticket with this id (case-insensitive), or None."""
        return next(iter(self._select("WHERE id = ?", (ticket_id.strip().upper(),))), None)

    def list(self, limit: int = 50, *, undelivered: bool = False) -> list[StoredTicket]:
        """The newest `limit` tickets, newest first (only those the cloud lacks)."""
        where = "WHERE delivered_ts IS NULL" if undelivered else ""
        return self._select(f"{where} ORDER BY created_ts DESC, id LIMIT ?", (limit,))

    def undelivered(self, limit: int = 100) -> list[StoredTicket]:
        """Tickets the cloud has not confirmed, oldest first: what the sync sends next."""
        return self._select("WHERE delivered_ts IS NULL ORDER BY created_ts, id LIMIT ?", (limit,))

    def mark_delivered(self, ticket_id: str, at: datetime) -> bool:
        """The cloud confirmed the ticket; False if unknown or already marked."""
        with self._lock, transaction(self._conn):
            cur = self._conn.execute(
                "UPDATE tickets SET delivered_ts = ? WHERE id = ? AND delivered_ts IS NULL",
                (ts_to_us(at), ticket_id),
            )
        return cur.rowcount == 1

    def _select(self, tail: str, args: tuple) -> list[StoredTicket]:
        with self._lock:
            rows = self._conn.execute(f"SELECT body, delivered_ts FROM tickets {tail}", args)
            return [
                StoredTicket(Ticket.model_validate_json(body), None if d is None else us_to_ts(d))
                for body, d in rows.fetchall()
            ]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TicketStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
