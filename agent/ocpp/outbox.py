"""The durable, ordered outbox of OCPP transaction messages: billing data is never lost.

StartTransaction, MeterValues of a transaction and StopTransaction go through this queue
(table `ocpp_outbox`, migration 5, in the store: WAL, synchronous=FULL like the billing
tables). The rules:

- Committed before sent. A session's StartTransaction (and its Transaction.Begin MeterValues)
  and StopTransaction are inserted by `agent/ocpp/txjournal.py` inside the very SQLite
  transaction that opens / closes the session (a hook in agent/sessions/ledger.py), so a
  kill -9 between the session's commit and a separate enqueue cannot happen: both commit or
  neither. We chose this over reconciling at startup because a reconcile would need a
  watermark (a station that turns OCPP on must not replay two years of sessions) and a
  second derivation of every payload. Periodic and clock-aligned MeterValues are inserted
  when sampled, only while the session is still active in the same write transaction, so
  none can land behind its StopTransaction.
- Strict order, one at a time: the oldest undelivered row is sent, its answer awaited, the
  delivery committed, then the next. New messages wait for older ones. A message is
  re-sent with the same OCPP message id (`tx-<seq>`), so a central system can tell a retry
  from a new message; the only duplicate a crash can cause is the one message in flight
  when the agent died after the CSMS answered and before the delivery was committed.
- Batches (issue 16): MeterValues rows of one transaction that follow each other in the
  queue travel as one MeterValues.req whose `meterValue` list carries every row's entries
  in order, at most `batch_size()` entries (`[ocpp] meter_values_batch`; 1 sends each row
  alone). Its message id is `tx-<first seq>-<last seq>`; a failed batch counts the attempt
  on every row, and its retries are the same rows (same attempts and attempt time). After a
  reconnect a new round may batch differently, under a new id.
- Retries: a timeout or a CALLERROR answer (the `ocpp` library hides CALLERRORs unless
  asked; our link raises them) is a failed attempt; the next one waits
  TransactionMessageRetryInterval x attempts so far (OCPP 1.6 §4.10), up to
  TransactionMessageAttempts. Not being connected is not an attempt: the message waits.
- Exhausted: the message is never discarded (OCPP would drop it; a bill must not be). It is
  kept, `exhausted` counts the failed rounds, it is parked (skipped, so one poisoned message
  does not hold every later bill hostage), counted in `backlog()` (`evedge status`) and in
  the diagnosis fact `station.ocpp_tx_exhausted` (rule `ocpp_tx_undelivered` in
  agent/diagnosis/rules/station.toml: a rule rather than a FaultRaised published from here,
  so the fault is stored, listed by `evedge faults`, carries codes and guidance and clears
  by the diagnosis's own rules once the messages are delivered), and all parked messages
  get a new round after the next reconnect (`reconnected()`).
- Transaction ids: payloads are stored without transactionId; it is filled at send time
  from `ocpp_transactions`, which StartTransaction.conf sets. MeterValues and StopTransaction
  of a session whose StartTransaction is not confirmed yet wait behind it, so a transaction
  started offline is reported with the id the CSMS gives when it is back.
- The −1 fallback (OCPP 1.6 errata): only when the CSMS never confirmed a StartTransaction
  through START_FALLBACK_ROUNDS full rounds of attempts (each round on a new connection),
  its later messages are sent with transactionId −1 so the meter values and the stop still
  reach the CSMS. The StartTransaction itself stays kept and parked; if it is confirmed
  later, messages not sent yet use the real id.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import structlog
from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from agent.events import utcnow
from agent.ocpp.context import OcppCallError, OcppLink, OcppOffline
from agent.sessions.times import US, to_us
from agent.store.db import open_db, transaction

log = structlog.get_logger(__name__)

ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
# Messages of no transaction (agent/security/: session_id '', connector 0): sent in the same
# order and with the same retries and keeping, never waiting for a transaction id.
NOTICES = ("SecurityEventNotification",)
START_FALLBACK_ROUNDS = 2
FALLBACK_TRANSACTION_ID = -1
IDLE_POLL_S = 5.0  # backstop: a wake-up can be missed when a row commits in another thread
DELIVERED_KEEP_DAYS = 7  # delivered rows kept this long for `evedge status` / audits


@dataclass
class OutboxRow:
    """One queued transaction message (payload without transactionId)."""

    seq: int
    session_id: str
    connector: int
    action: str
    payload: dict[str, Any]
    attempts: int
    exhausted: int
    last_attempt_ts: int | None
    transaction_id: int | None  # of the session, when known

    @property
    def message_id(self) -> str:
        """The OCPP unique id this message is (re)sent with."""
        return f"tx-{self.seq}"


def enqueue_in(
    c: sqlite3.Connection,
    session_id: str,
    connector: int,
    action: str,
    payload: dict[str, Any],
    now_us: int,
) -> int:
    """Insert a message inside the caller's transaction (the session ledger's); its seq."""
    if action not in ACTIONS + NOTICES:
        raise ValueError(f"not an outbox message: {action}")
    cur = c.execute(
        "INSERT INTO ocpp_outbox (session_id, connector, action, payload, created_ts) "
        "VALUES (?, ?, ?, ?, ?)",
        (session_id, connector, action, json.dumps(payload, separators=(",", ":")), now_us),
    )
    return int(cur.lastrowid)


def begin_transaction_in(
    c: sqlite3.Connection, session_id: str, connector: int, started_us: int
) -> bool:
    """Register a session as an OCPP transaction inside the caller's transaction (False:
    it already was)."""
    cur = c.execute(
        "INSERT OR IGNORE INTO ocpp_transactions (session_id, connector, started_ts) "
        "VALUES (?, ?, ?)",
        (session_id, connector, started_us),
    )
    return cur.rowcount == 1


_COLUMNS = (
    "o.seq, o.session_id, o.connector, o.action, o.payload, o.attempts, o.exhausted, "
    "o.last_attempt_ts, t.transaction_id"
)


def _row(r: tuple) -> OutboxRow:
    return OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8])


def to_call(action: str, payload: dict[str, Any], transaction_id: int | None) -> Any:
    """The `ocpp` library payload for a stored message (transactionId filled in).

    MeterValues' entries stay as stored (camelCase): the library's snake-to-camel pass
    leaves their keys as they are, and converting every key of a batch of hundreds of
    sampled values there and back was a large part of a batched CALL's cost."""
    body = dict(payload)
    if action in ("MeterValues", "StopTransaction"):
        body["transactionId"] = transaction_id
    if action == "MeterValues":
        entries = body.pop("meterValue")
        return call.MeterValues(**camel_to_snake_case(body), meter_value=entries)
    return getattr(call, action)(**camel_to_snake_case(body))


class Outbox:
    """The queue and its sender; see the module docstring. Blocking methods run in threads."""

    def __init__(
        self,
        path: Any,
        attempts: Callable[[], int] = lambda: 3,
        retry_interval_s: Callable[[], float] = lambda: 60,
        batch_size: Callable[[], int] = lambda: 1,
    ):
        self._conn = open_db(path)
        self._lock = threading.RLock()
        self.attempts = attempts
        self.retry_interval_s = retry_interval_s
        self.batch_size = batch_size
        self.exhausted_now = 0  # undelivered messages that ran out of attempts (diagnosis)
        self.sent = 0  # rows delivered since start
        self.calls = 0  # CALLs that delivered them (fewer: batched MeterValues)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: OcppLink | None = None
        self._refresh_exhausted()

    # ------------------------------------------------------------------ storage

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._conn):
            yield self._conn

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def enqueue(
        self,
        session_id: str,
        connector: int,
        action: str,
        payload: dict[str, Any],
        *,
        while_active: bool = True,
    ) -> int | None:
        """Queue a message in its own transaction; with `while_active`, only if the session
        is still active (a sample must never land behind its StopTransaction) and is an OCPP
        transaction (its StartTransaction is queued ahead). Its seq, or None."""
        now = to_us(utcnow())
        with self._tx() as c:
            if while_active:
                row = c.execute(
                    "SELECT 1 FROM sessions s JOIN ocpp_transactions t ON t.session_id = s.id "
                    "WHERE s.id = ? AND s.state = 'active'",
                    (session_id,),
                ).fetchone()
                if row is None:
                    return None
            seq = enqueue_in(c, session_id, connector, action, payload, now)
        self.notify()
        return seq

    def enqueue_notice(self, action: str, payload: dict[str, Any]) -> int:
        """Queue a message of no transaction (NOTICES) in its own transaction; its seq."""
        if action not in NOTICES:
            raise ValueError(f"not a notice: {action}")
        with self._tx() as c:
            seq = enqueue_in(c, "", 0, action, payload, to_us(utcnow()))
        self.notify()
        return seq

    def head(self) -> OutboxRow | None:
        """The next message to send: the oldest undelivered, unparked one whose transaction
        id is known (or which is the StartTransaction that will give it)."""
        with self._lock:
            r = self._conn.execute(
                f"SELECT {_COLUMNS} FROM ocpp_outbox o "
                "LEFT JOIN ocpp_transactions t ON t.session_id = o.session_id "
                "WHERE o.delivered_ts IS NULL AND o.parked = 0 AND "
                "(o.action IN ('StartTransaction', 'SecurityEventNotification') "
                "OR t.transaction_id IS NOT NULL) ORDER BY o.seq LIMIT 1"
            ).fetchone()
        return None if r is None else _row(r)

    def next_batch(self) -> list[OutboxRow]:
        """The head and, when it is MeterValues, the rows right behind it that can travel
        with it (see the module docstring); empty when nothing is due."""
        head = self.head()
        if head is None:
            return []
        limit = self.batch_size()
        entries = len(head.payload.get("meterValue", ()))
        if head.action != "MeterValues" or entries >= limit:
            return [head]
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS}, o.parked FROM ocpp_outbox o "
                "LEFT JOIN ocpp_transactions t ON t.session_id = o.session_id "
                "WHERE o.delivered_ts IS NULL AND o.seq > ? ORDER BY o.seq LIMIT ?",
                (head.seq, limit),
            ).fetchall()
        batch = [head]
        for r in rows:
            row = _row(r)
            entries += len(row.payload.get("meterValue", ()))
            if (
                r[-1]  # parked
                or row.action != "MeterValues"
                or row.session_id != head.session_id
                or (row.attempts, row.last_attempt_ts) != (head.attempts, head.last_attempt_ts)
                or entries > limit
            ):
                break
            batch.append(row)
        return batch

    def delivered(self, rows: list[OutboxRow], result: Any, now_us: int) -> None:
        """The CSMS confirmed a message (one row, or a batch); a StartTransaction.conf gives
        the session its id."""
        row = rows[0]
        with self._tx() as c:
            c.executemany(
                "UPDATE ocpp_outbox SET delivered_ts = ? WHERE seq = ?",
                [(now_us, r.seq) for r in rows],
            )
            if row.action == "StartTransaction":
                info = getattr(result, "id_tag_info", None) or {}
                c.execute(
                    "UPDATE ocpp_transactions SET transaction_id = ?, id_tag_status = ? "
                    "WHERE session_id = ?",
                    (int(result.transaction_id), info.get("status"), row.session_id),
                )
        self.sent += len(rows)
        self.calls += 1
        if any(r.exhausted for r in rows):
            self._refresh_exhausted()

    def failed(self, rows: list[OutboxRow], error: str, now_us: int) -> bool:
        """A failed attempt of a message (one row, or a batch); True when it used the last
        one (the rows are then parked)."""
        row = rows[0]
        attempts = row.attempts + 1
        exhausted = attempts >= self.attempts()
        with self._tx() as c:
            c.executemany(
                "UPDATE ocpp_outbox SET attempts = ?, last_attempt_ts = ?, last_error = ?, "
                "exhausted = exhausted + ?, parked = ? WHERE seq = ?",
                [(attempts, now_us, error[:500], int(exhausted), int(exhausted), r.seq)
                 for r in rows],
            )  # fmt: skip
            if (
                exhausted
                and row.action == "StartTransaction"
                and row.exhausted + 1 >= START_FALLBACK_ROUNDS
            ):
                c.execute(
                    "UPDATE ocpp_transactions SET transaction_id = ? "
                    "WHERE session_id = ? AND transaction_id IS NULL",
                    (FALLBACK_TRANSACTION_ID, row.session_id),
                )
        if exhausted:
            self._refresh_exhausted()
        return exhausted

    def reconnected(self) -> int:
        """A new connection: every parked message gets a new round of attempts."""
        with self._tx() as c:
            n = c.execute(
                "UPDATE ocpp_outbox SET parked = 0, attempts = 0 "
                "WHERE delivered_ts IS NULL AND (parked = 1 OR attempts > 0)"
            ).rowcount
        self.notify()
        return n

    def session_of(self, transaction_id: int) -> tuple[str, int] | None:
        """(session id, connector) of a CSMS transaction id (RemoteStopTransaction)."""
        with self._lock:
            r = self._conn.execute(
                "SELECT session_id, connector FROM ocpp_transactions WHERE transaction_id = ? "
                "ORDER BY started_ts DESC LIMIT 1",
                (transaction_id,),
            ).fetchone()
        return None if r is None else (r[0], int(r[1]))

    def transaction_id(self, session_id: str) -> int | None:
        """The CSMS's id of a session's transaction (None: not confirmed yet)."""
        with self._lock:
            r = self._conn.execute(
                "SELECT transaction_id FROM ocpp_transactions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
        return None if r is None else r[0]

    def messages(self, session_id: str | None = None) -> list[tuple[int, str, str, int | None]]:
        """(seq, action, session_id, delivered_ts) of stored messages, in send order."""
        with self._lock:
            return self._conn.execute(
                "SELECT seq, action, session_id, delivered_ts FROM ocpp_outbox "
                "WHERE ? IS NULL OR session_id = ? ORDER BY seq",
                (session_id, session_id),
            ).fetchall()

    def backlog(self) -> dict[str, Any]:
        """What waits to be sent, for `evedge status` and the diagnosis."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT action, parked, exhausted, created_ts FROM ocpp_outbox "
                "WHERE delivered_ts IS NULL"
            ).fetchall()
            waiting_id = self._conn.execute(
                "SELECT count(*) FROM ocpp_transactions WHERE transaction_id IS NULL"
            ).fetchone()[0]
            fallback = self._conn.execute(
                "SELECT count(*) FROM ocpp_transactions WHERE transaction_id = ?",
                (FALLBACK_TRANSACTION_ID,),
            ).fetchone()[0]
        oldest = min((r[3] for r in rows), default=None)
        return {
            "pending": len(rows),
            "parked": sum(1 for r in rows if r[1]),
            "exhausted": sum(1 for r in rows if r[2]),
            "by_action": dict(Counter(r[0] for r in rows)),
            "oldest_age_s": None if oldest is None else round((to_us(utcnow()) - oldest) / US),
            "transactions_without_id": waiting_id,
            "transactions_with_fallback_id": fallback,
            "sent_since_start": self.sent,
        }

    def prune(self, now_us: int, keep_days: float = DELIVERED_KEEP_DAYS) -> int:
        """Delete delivered messages older than `keep_days` (undelivered ones never)."""
        cutoff = now_us - int(keep_days * 86400 * US)
        with self._tx() as c:
            return c.execute(
                "DELETE FROM ocpp_outbox WHERE delivered_ts IS NOT NULL AND delivered_ts < ?",
                (cutoff,),
            ).rowcount

    def _refresh_exhausted(self) -> None:
        with self._lock:
            self.exhausted_now = self._conn.execute(
                "SELECT count(*) FROM ocpp_outbox WHERE delivered_ts IS NULL AND exhausted > 0"
            ).fetchone()[0]

    # ------------------------------------------------------------------ sending

    def notify(self) -> None:
        """Something was queued (or unparked): wake the sender. Any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(wake.set)

    async def flush(self, timeout: float) -> None:
        """The agent is stopping: give the sender up to `timeout` s to empty the queue
        while connected; what is left stays queued for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self._link is not None and self._link.online.is_set():
            if await asyncio.to_thread(self.head) is None:
                return
            await asyncio.sleep(0.05)

    async def drain(
        self,
        link: OcppLink,
        on_delivered: Callable[[OutboxRow, Any], Awaitable[None]] | None = None,
    ) -> None:
        """Send queued messages while connected, in order, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._link = link
        while True:
            await link.online.wait()
            self._wake.clear()  # before looking: a row queued meanwhile wakes the wait below
            try:
                rows = await asyncio.to_thread(self.next_batch)
                if not rows:
                    await self._sleep(IDLE_POLL_S)
                    continue
                due = self._due_in(rows[0])
                if due > 0:
                    await self._sleep(due)
                    continue
                await self._send(link, rows, on_delivered)
            except Exception:  # e.g. the store busy or full: nothing is lost, try again
                log.exception("ocpp.outbox_error", hint="the queue is kept; retrying in 1 s")
                await asyncio.sleep(1.0)

    def _due_in(self, row: OutboxRow) -> float:
        """Seconds until a retried message may go again (interval x attempts so far)."""
        if not row.attempts or row.last_attempt_ts is None:
            return 0.0
        wait_us = int(self.retry_interval_s() * row.attempts * US)
        return max(0.0, (row.last_attempt_ts + wait_us - to_us(utcnow())) / US)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with suppress(TimeoutError):
            # asyncio.timeout: Python 3.11's wait_for may lose a cancel.
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _send(
        self,
        link: OcppLink,
        rows: list[OutboxRow],
        on_delivered: Callable[[OutboxRow, Any], Awaitable[None]] | None,
    ) -> None:
        row = rows[0]
        tx_id = row.transaction_id
        payload = row.payload
        message_id = row.message_id
        if len(rows) > 1:  # one MeterValues.req with every row's entries, in order
            entries = [e for r in rows for e in r.payload["meterValue"]]
            payload = {**row.payload, "meterValue": entries}
            message_id = f"tx-{row.seq}-{rows[-1].seq}"
        try:
            request = to_call(row.action, payload, tx_id)
            # Our own MeterValues skip the library's schema check (see OcppLink.call).
            result = await link.call(
                request, unique_id=message_id, validate=row.action != "MeterValues"
            )
        except OcppOffline:
            return  # not sent: no attempt used; the loop waits for the link
        except (OcppCallError, TimeoutError, OCPPError) as e:
            if isinstance(e, OcppCallError):
                why = f"CALLERROR {e.code}: {e.description}"
            elif isinstance(e, OCPPError):  # our own payload failed the schema: a bug, kept
                why = f"refused before sending ({type(e).__name__}): {e}"
            else:
                why = "no answer (timeout)"
            exhausted = await asyncio.to_thread(self.failed, rows, why, to_us(utcnow()))
            log_fn = log.error if exhausted else log.warning
            log_fn(
                "ocpp.tx_message_failed",
                action=row.action,
                seq=row.seq,
                rows=len(rows),
                session=row.session_id[:8],
                attempt=row.attempts + 1,
                of=self.attempts(),
                error=why,
                kept=True,
                hint=(
                    "kept and retried after the next reconnect; see `evedge status`"
                    if exhausted
                    else f"retrying in {self.retry_interval_s() * (row.attempts + 1):g} s"
                ),
            )
            return
        await asyncio.to_thread(self.delivered, rows, result, to_us(utcnow()))
        if on_delivered is not None:
            await on_delivered(row, result)
