"""The durable MQTT outbox (schema: migration 7 in agent/store/migrations.py).

A message is validated, numbered and committed here before anything is published; the
publisher deletes it only after the broker's PUBACK. Charge records are copied in from
`charge_records` by a cursor in the same transaction that advances it, so a crash can
neither skip nor double-enqueue one.

Retention policy: when the outbox holds more than `max_rows` messages, or the store's disk
has less than `min_free_mb` free, the oldest half of the telemetry backlog is thinned (every
second message dropped, so old data gets coarser rather than vanish in one block), then
health, until the outbox is back under 90 % of `max_rows` (or no bulk message is left).
Faults, sessions, charge records, replies, display messages and tickets are never dropped.
Thinned messages leave gaps in `seq`; the count per stream is kept in `mqtt_state`.

Disk syncs (flash wear, issue 16): a commit that enqueues only live streams, each message
superseded by the next (`LIVE_STREAMS`), and every acknowledgement (the delete after PUBACK)
commit with `synchronous = NORMAL`: not synced by themselves, only by the next FULL commit on
the store file or the next WAL checkpoint. A power cut may lose the last of those live
messages (their `seq` may then be reused by new messages with a new `msg_id`) and may
forget an acknowledgement, so that message is published again (at-least-once, same `msg_id`).
Everything else (faults, sessions, charge records, tickets, replies) commits with FULL.

Synchronous and thread-safe: call it from worker threads.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from agent.events import utcnow
from agent.mqtt.payloads import MESSAGES, Envelope
from agent.mqtt.topics import BULK_STREAMS, RETAINED_STREAMS, Stream, Topics
from agent.sessions.times import to_us
from agent.store.db import open_db, transaction

log = structlog.get_logger(__name__)

BILLING_CURSOR = "cursor:billing"
BILLING_BATCH = 200
# Superseded by their next message: a lost one after a power cut costs nothing lasting.
LIVE_STREAMS: frozenset[Stream] = frozenset(
    {Stream.TELEMETRY, Stream.HEALTH, Stream.DISPLAY, Stream.KPI}
)
# Tables whose delivered_ts marks what the broker acknowledged (their outbox rows' ref).
_MARKED = (("charge_records", Stream.BILLING_RECORDS), ("tickets", Stream.TICKETS))


@dataclass(frozen=True)
class Outgoing:
    """A message to enqueue: its stream, the model's fields without the envelope, and
    (display, replies) the topic and correlation data."""

    stream: Stream
    data: dict[str, Any]
    topic: str | None = None
    correlation: bytes | None = None
    ref: str | None = None  # charge record / ticket id: its delivered_ts is set on PUBACK


@dataclass(frozen=True)
class Row:
    """One committed, not yet acknowledged message."""

    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None


@dataclass(frozen=True)
class Retention:
    """When the outbox counts as short of room (see the module docstring)."""

    max_rows: int
    min_free_mb: float


class Outbox:
    """The outbox tables of the store, on their own connection."""

    def __init__(self, path: str | Path, topics: Topics, retention: Retention):
        self.path = Path(path)
        self.topics = topics
        self.retention = retention
        self._conn = open_db(self.path)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ writing

    def add(self, items: Sequence[Outgoing], now: datetime | None = None) -> list[Envelope]:
        """Validate, number and commit `items` in one transaction; returns the messages."""
        if not items:
            return []
        now = now or utcnow()
        durable = any(it.stream not in LIVE_STREAMS for it in items)
        with self._lock, self._tx(durable) as c:
            return [self._insert(c, it, now) for it in items]

    @contextmanager
    def _tx(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """A transaction committed with `synchronous` FULL (durable) or NORMAL (see the module
        docstring). Call with the lock held."""
        # The setting applies per connection to the following commits; set it outside the
        # transaction and restore FULL so every other commit stays synced.
        if not durable:
            self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with transaction(self._conn) as c:
                yield c
        finally:
            if not durable:
                self._conn.execute("PRAGMA synchronous = FULL")

    def _insert(self, c: sqlite3.Connection, item: Outgoing, now: datetime) -> Envelope:
        stream = item.stream
        key = f"seq:{stream.value}"
        row = c.execute("SELECT value FROM mqtt_state WHERE key = ?", (key,)).fetchone()
        seq = (row[0] if row else 0) + 1
        msg = MESSAGES[stream.value](
            msg_id=uuid.uuid4().hex,
            seq=seq,
            station=self.topics.station,
            ts=now,
            **item.data,
        )
        topic = item.topic or self.topics.stream(stream)
        kind = "bulk" if stream in BULK_STREAMS else "keep"
        c.execute(
            "INSERT INTO mqtt_outbox (stream, seq, msg_id, topic, payload, retain, correlation, "
            "kind, ref, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stream.value,
                seq,
                msg.msg_id,
                topic,
                msg.model_dump_json().encode(),
                int(stream in RETAINED_STREAMS),
                item.correlation,
                kind,
                item.ref,
                to_us(now),
            ),
        )
        _set(c, key, seq)
        return msg

    def add_charge_records(self, limit: int = BILLING_BATCH) -> int:
        """Enqueue charge records after the cursor, in chain order; returns how many."""
        with self._lock, transaction(self._conn) as c:
            cursor = _get(c, BILLING_CURSOR)
            rows = c.execute(
                "SELECT seq, id, session_id, connector, prev_hash, hash, body "
                "FROM charge_records WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, limit),
            ).fetchall()
            now = utcnow()
            for seq, rid, sid, conn, prev, h, body in rows:
                data = dict(
                    record_seq=seq,
                    record_id=rid,
                    session_id=sid,
                    connector=conn,
                    prev_hash=prev,
                    hash=h,
                    body=json.loads(body),
                )
                self._insert(c, Outgoing(Stream.BILLING_RECORDS, data, ref=rid), now)
            if rows:
                _set(c, BILLING_CURSOR, rows[-1][0])
        return len(rows)

    def add_tickets(self, limit: int = BILLING_BATCH) -> int:
        """Enqueue tickets not yet delivered nor enqueued, oldest first; returns how many."""
        with self._lock, transaction(self._conn) as c:
            rows = c.execute(
                "SELECT id, body FROM tickets t WHERE delivered_ts IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM mqtt_outbox o WHERE o.stream = ? AND o.ref = t.id) "
                "ORDER BY created_ts, id LIMIT ?",
                (Stream.TICKETS.value, limit),
            ).fetchall()
            now = utcnow()
            for tid, body in rows:
                data = {"ticket": json.loads(body)}
                self._insert(c, Outgoing(Stream.TICKETS, data, ref=tid), now)
        return len(rows)

    def next_seq(self, stream: Stream, count: int = 1) -> int:
        """Reserve `count` numbers of a stream that bypasses the outbox (status); returns the
        first."""
        with self._lock, transaction(self._conn) as c:
            key = f"seq:{stream.value}"
            first = _get(c, key) + 1
            _set(c, key, first + count - 1)
            return first

    # ------------------------------------------------------------------ publishing side

    def pending(self, after_id: int, limit: int) -> list[Row]:
        """Undelivered messages with id > after_id, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, stream, seq, topic, payload, retain, correlation FROM mqtt_outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Row(i, s, q, t, bytes(p), bool(r), c) for i, s, q, t, p, r, c in rows]

    def delivered(self, ids: Iterable[int]) -> int:
        """The broker acknowledged these messages: delete them. Returns rows deleted."""
        ids = list(ids)
        if not ids:
            return 0
        n = 0
        now = to_us(utcnow())
        # Not synced: a lost delete only publishes the message once more (same msg_id).
        with self._lock, self._tx(durable=False) as c:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for table, stream in _MARKED:
                    c.execute(
                        f"UPDATE {table} SET delivered_ts = ? WHERE delivered_ts IS NULL AND id IN "
                        f"(SELECT ref FROM mqtt_outbox WHERE stream = ? AND id IN ({marks}))",
                        (now, stream.value, *chunk),
                    )
                n += c.execute(f"DELETE FROM mqtt_outbox WHERE id IN ({marks})", chunk).rowcount
        return n

    def discard(self, row_id: int) -> None:
        """Delete a message no broker could ever accept (logged by the caller)."""
        with self._lock, transaction(self._conn) as c:
            c.execute("DELETE FROM mqtt_outbox WHERE id = ?", (row_id,))

    # ------------------------------------------------------------------ state

    def backlog(self) -> dict[str, int]:
        """Undelivered messages per stream."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stream, COUNT(*) FROM mqtt_outbox GROUP BY stream"
            ).fetchall()
        return dict(rows)

    def last_id(self) -> int:
        """The newest message's id (0 when empty)."""
        with self._lock:
            return self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM mqtt_outbox").fetchone()[0]

    def remaining(self, upto_id: int) -> int:
        """Messages with id <= upto_id not yet acknowledged."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM mqtt_outbox WHERE id <= ?", (upto_id,)
            ).fetchone()
        return row[0]

    def oldest_us(self) -> int | None:
        """When the oldest undelivered message was committed (µs since the epoch)."""
        with self._lock:
            row = self._conn.execute("SELECT MIN(created_ts) FROM mqtt_outbox").fetchone()
        return row[0]

    def thinned(self) -> dict[str, int]:
        """Messages dropped by the retention policy, per stream, since the store was made."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT substr(key, 9), value FROM mqtt_state WHERE key LIKE 'thinned:%'"
            ).fetchall()
        return dict(rows)

    # ------------------------------------------------------------------ retention

    def short_of_room(self) -> bool:
        """Whether the retention policy must thin (too many rows, or too little free disk)."""
        free_mb = shutil.disk_usage(self.path.parent).free / 1e6
        if free_mb < self.retention.min_free_mb:
            return True
        with self._lock:
            n = self._conn.execute("SELECT COUNT(*) FROM mqtt_outbox").fetchone()[0]
        return n > self.retention.max_rows

    def thin(self) -> dict[str, int]:
        """Apply the retention policy once; returns messages dropped per stream."""
        dropped: dict[str, int] = {}
        if not self.short_of_room():
            return dropped
        target = int(self.retention.max_rows * 0.9)
        while True:
            with self._lock, transaction(self._conn) as c:
                total = c.execute("SELECT COUNT(*) FROM mqtt_outbox").fetchone()[0]
                if total <= target and not self._disk_short():
                    break
                stream, n = _thin_one(c, max(total - target, 1))
                if stream is None:
                    break  # only kept messages left: they are never dropped
                _set(c, f"thinned:{stream}", _get(c, f"thinned:{stream}") + n)
            dropped[stream] = dropped.get(stream, 0) + n
        if dropped:
            log.warning("mqtt.outbox.thinned", dropped=dropped, policy="oldest telemetry first")
        return dropped

    def _disk_short(self) -> bool:
        return shutil.disk_usage(self.path.parent).free / 1e6 < self.retention.min_free_mb

    # ------------------------------------------------------------------ commands

    def first_sight(self, command_id: str, name: str, expires_us: int) -> bool:
        """Record a command id; False if it was seen before (a replay). Also forgets ids whose
        commands expired (they are refused as expired anyway)."""
        now = to_us(utcnow())
        # Not synced: a lost delete only publishes the message once more (same msg_id).
        with self._lock, self._tx(durable=False) as c:
            c.execute("DELETE FROM mqtt_seen_commands WHERE expires_ts < ?", (now,))
            cur = c.execute(
                "INSERT OR IGNORE INTO mqtt_seen_commands (id, name, received_ts, expires_ts) "
                "VALUES (?, ?, ?, ?)",
                (command_id, name, now, expires_us),
            )
            return cur.rowcount == 1


def _get(c: sqlite3.Connection, key: str) -> int:
    row = c.execute("SELECT value FROM mqtt_state WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _set(c: sqlite3.Connection, key: str, value: int) -> None:
    c.execute(
        "INSERT INTO mqtt_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _thin_one(c: sqlite3.Connection, want: int) -> tuple[str | None, int]:
    """Drop every second message of the oldest half (at most 2*want rows) of the first bulk
    stream that has any; a single message left is dropped whole."""
    for stream in BULK_STREAMS:
        n = c.execute(
            "SELECT COUNT(*) FROM mqtt_outbox WHERE kind = 'bulk' AND stream = ?",
            (stream.value,),
        ).fetchone()[0]
        if not n:
            continue
        window = max(min(n // 2, 2 * want), 1)
        cur = c.execute(
            "DELETE FROM mqtt_outbox WHERE id IN (SELECT id FROM (SELECT id, row_number() "
            "OVER (ORDER BY id) AS rn FROM mqtt_outbox WHERE kind = 'bulk' AND stream = ? "
            "ORDER BY id LIMIT ?) WHERE rn % 2 = 0 OR ? = 1)",
            (stream.value, window, window),
        )
        return stream.value, cur.rowcount
    return None, 0
