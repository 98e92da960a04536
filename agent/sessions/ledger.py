"""Every durable write of the session engine, each one transaction.

A session's state change, its meter samples, its events, its signed OCMF records and its
charge record commit together or not at all; on kill -9 the store holds either the state
before or the state after, never half of a session. The close transaction signs the end
record, chains the charge record to its predecessor, marks the session closed and appends
the record: a session therefore ends with exactly one record (the unique index on
charge_records.session_id and the `state = 'active'` guard make a second impossible).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from agent.billing import chain
from agent.sessions.signing import AgentSigner, SignRequest
from agent.sessions.store import (
    RecordRow,
    SampleRow,
    SessionRow,
    SessionStore,
    chain_head,
    get_state,
    insert_event,
    insert_record,
    insert_sample,
    insert_session,
    set_state,
    update_session,
)
from agent.sessions.times import US, to_us

if TYPE_CHECKING:
    from agent.sessions.integrity import Integrity

DAY_US = 86_400 * US


def plain(value: Any) -> Any:
    """JSON-ready copy for a chained body: Decimal and datetime become text; floats refused
    (chain.canonical_bytes refuses them too: a bill is never computed on a float)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def body_text(body: Mapping[str, Any]) -> str:
    """The stored text of a record body (sorted keys, compact)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Closing:
    """What closes a session: its final row values, end sample, record body and signing."""

    session_id: str
    connector: int
    status: str
    stop_reason: str
    ended_us: int
    charging_end_us: int
    billed_wh: int
    tracker_json: str
    end_sample: SampleRow
    body: dict[str, Any]  # everything but id, seq and the OCMF end record
    sign: SignRequest | None = None  # the agent signs the end record in the transaction
    ocmf_end: str | None = None  # or the meter already did
    detail: str = ""


class LedgerHook(Protocol):
    """Writes more rows inside a session's own open/close transaction (e.g. the OCPP
    outbox: agent/ocpp/txjournal.py), so they commit together with the session or not at all.
    """

    def opened(self, c: sqlite3.Connection, row: SessionRow, sample: SampleRow) -> None:
        """The session row and its begin sample were just inserted."""
        ...

    def closed(self, c: sqlite3.Connection, x: Closing, record: RecordRow) -> None:
        """The session was just closed and its charge record inserted."""
        ...


class Ledger:
    """The session engine's writer. Sync: call through asyncio.to_thread."""

    def __init__(self, store: SessionStore, station_id: str, signer: AgentSigner | None):
        self.store = store
        self.station_id = station_id
        self.signer = signer
        self.hooks: list[LedgerHook] = []
        # Keeps the signed chain checkpoint in step with the records (None: no checkpoint).
        self.integrity: Integrity | None = None

    def _sign(self, c: sqlite3.Connection, req: SignRequest | None, text: str | None) -> str:
        if text is not None:
            return text
        if self.signer is None or req is None:
            raise ValueError("no OCMF record: neither an agent signer nor a meter record")
        return self.signer.sign(c, req)

    # ------------------------------------------------------------------ sessions

    def open(
        self,
        row: SessionRow,
        sample: SampleRow,
        sign: SignRequest | None,
        ocmf_begin: str | None = None,
        payment_ref: str | None = None,
        detail: str = "",
    ) -> str:
        """Start a session: row, begin sample and signed begin record. Returns that record."""
        with self.store.tx() as c:
            row.ocmf_begin = self._sign(c, sign, ocmf_begin)
            insert_session(c, row)
            insert_sample(c, sample)
            insert_event(c, row.id, row.connector, row.started_ts, row.status, "started", detail)
            if payment_ref is not None:
                c.execute(
                    "UPDATE payments SET session_id = ?, status = 'in_session', updated_ts = ? "
                    "WHERE ref = ?",
                    (row.id, row.started_ts, payment_ref),
                )
            for hook in self.hooks:
                hook.opened(c, row, sample)
            return row.ocmf_begin

    def transition(
        self,
        connector: int,
        session_id: str | None,
        status: str,
        kind: str,
        at_us: int,
        detail: str = "",
        **updates: Any,
    ) -> None:
        """Record a status change (and the session's new column values) in one transaction."""
        with self.store.tx() as c:
            if session_id is not None:
                update_session(c, session_id, status=status, updated_ts=at_us, **updates)
            insert_event(c, session_id, connector, at_us, status, kind, detail)

    def sample(
        self, sample: SampleRow, billed_wh: int, tracker_json: str, event: str | None = None
    ) -> None:
        """Keep a meter sample and the session's running totals together."""
        with self.store.tx() as c:
            insert_sample(c, sample)
            update_session(
                c,
                sample.session_id,
                billed_wh=billed_wh,
                tracker_json=tracker_json,
                updated_ts=sample.ts,
            )
            if event is not None:
                row = c.execute(
                    "SELECT connector, status FROM sessions WHERE id = ?", (sample.session_id,)
                ).fetchone()
                insert_event(c, sample.session_id, row[0], sample.ts, row[1], sample.kind, event)

    def checkpoint(self, session_id: str, billed_wh: int, tracker_json: str, at_us: int) -> None:
        """Persist the running totals (what a restart resumes from)."""
        with self.store.tx() as c:
            update_session(
                c, session_id, billed_wh=billed_wh, tracker_json=tracker_json, updated_ts=at_us
            )

    def close(self, x: Closing) -> RecordRow:
        """End a session with its one charge record, signed and chained."""
        with self.store.tx() as c:
            ocmf_end = self._sign(c, x.sign, x.ocmf_end)
            head = chain_head(c)
            seq, prev = (head[0] + 1, head[1]) if head else (1, chain.GENESIS)
            record_id = f"{self.station_id}-{seq:06d}"
            body = dict(x.body)
            body["id"] = record_id
            body["ocmf"] = {**body.get("ocmf", {}), "end": ocmf_end}
            linked = chain.ChainedRecord(seq=seq, prev_hash=prev, body=body)
            digest = chain.record_hash(linked)
            insert_sample(c, x.end_sample)
            update_session(
                c,
                x.session_id,
                state="closed",
                status=x.status,
                ended_ts=x.ended_us,
                charging_end_ts=x.charging_end_us,
                stop_reason=x.stop_reason,
                billed_wh=x.billed_wh,
                tracker_json=x.tracker_json,
                updated_ts=x.ended_us,
            )
            cost = body.get("cost") or {}
            rec = RecordRow(
                seq=seq,
                id=record_id,
                session_id=x.session_id,
                prev_hash=prev,
                hash=digest,
                body=body_text(body),
                connector=x.connector,
                started_ts=to_us(datetime.fromisoformat(body["start"])),
                ended_ts=x.ended_us,
                energy_wh=body["energy_wh"],
                currency=cost.get("currency"),
                total_excl_vat=cost.get("total_excl_vat"),
                total_incl_vat=cost.get("total_incl_vat"),
                review=int(bool(body["review"]["required"])),
                created_ts=x.ended_us,
                delivered_ts=None,
            )
            insert_record(c, rec)
            insert_event(c, x.session_id, x.connector, x.ended_us, x.status, "stopped", x.detail)
            for hook in self.hooks:
                hook.closed(c, x, rec)
            c.execute(
                "UPDATE payments SET status = 'capture_pending', captured = ?, updated_ts = ? "
                "WHERE session_id = ? AND status = 'in_session'",
                (
                    cost.get("total_incl_vat") or cost.get("total_excl_vat"),
                    x.ended_us,
                    x.session_id,
                ),
            )
        if self.integrity is not None:
            self.integrity.record_written()  # after the commit: a crash leaves it behind
        return rec

    # ------------------------------------------------------------------ connectors

    def set_available(self, connector: int, available: bool, at_us: int) -> None:
        """Persist a connector's operative/inoperative setting (ChangeAvailability)."""
        with self.store.tx() as c:
            set_state(c, f"connector.{connector}.available", "1" if available else "0")
            insert_event(
                c,
                None,
                connector,
                at_us,
                "Available" if available else "Unavailable",
                "availability",
            )

    def set_limit(self, connector: int, source: str, amps: float | None, at_us: int) -> None:
        """Persist (or with None drop) one source's current limit of a connector."""
        key = f"connector.{connector}.limit.{source}"
        with self.store.tx() as c:
            if amps is None:
                c.execute("DELETE FROM billing_state WHERE key = ?", (key,))
            else:
                set_state(c, key, repr(float(amps)))
            detail = f"{source} limit {'cleared' if amps is None else f'{amps:g} A'}"
            insert_event(c, None, connector, at_us, "", "limit", detail)

    def limits(self, connector: int) -> dict[str, float]:
        """The persisted current limits of a connector, per source."""
        prefix = f"connector.{connector}.limit."
        with self.store.reading() as c:
            rows = c.execute(
                "SELECT key, value FROM billing_state WHERE key LIKE ?", (prefix + "%",)
            ).fetchall()
        return {k[len(prefix) :]: float(v) for k, v in rows}

    def set_reservation(self, connector: int, reservation: Any, at_us: int) -> None:
        """Persist a connector's reservation (None: it ended)."""
        key = f"connector.{connector}.reservation"
        with self.store.tx() as c:
            if reservation is None:
                c.execute("DELETE FROM billing_state WHERE key = ?", (key,))
            else:
                set_state(c, key, reservation.to_json())

    def reservation(self, connector: int) -> str | None:
        """The persisted reservation of a connector (JSON), if any."""
        with self.store.reading() as c:
            return get_state(c, f"connector.{connector}.reservation")

    def available(self, connector: int) -> bool:
        """The persisted availability of a connector (default: available)."""
        with self.store.reading() as c:
            return get_state(c, f"connector.{connector}.available") != "0"

    # ------------------------------------------------------------------ payments

    def payment(self, ref: str, connector: int, amount: Decimal, currency: str, at_us: int) -> None:
        """A pre-authorization about to be requested from the terminal."""
        with self.store.tx() as c:
            c.execute(
                "INSERT INTO payments (ref, connector, session_id, currency, authorized, "
                "captured, status, detail, updated_ts) VALUES (?, ?, NULL, ?, ?, NULL, "
                "'requested', '', ?)",
                (ref, connector, currency, str(amount), at_us),
            )

    def payment_done(self, ref: str, status: str, at_us: int, detail: str = "") -> None:
        """The terminal captured or voided (or failed to)."""
        with self.store.tx() as c:
            c.execute(
                "UPDATE payments SET status = ?, detail = ?, updated_ts = ? WHERE ref = ?",
                (status, detail, at_us, ref),
            )

    def open_payments(self) -> list[tuple[str, int, str | None, str, str, str | None, str]]:
        """(ref, connector, session_id, currency, authorized, captured, status) of payments
        still to capture or void (after a restart: finish what the crash interrupted)."""
        with self.store.reading() as c:
            return c.execute(
                "SELECT ref, connector, session_id, currency, authorized, captured, status "
                "FROM payments WHERE status IN ('requested', 'authorized', 'capture_pending', "
                "'in_session')"
            ).fetchall()

    # ------------------------------------------------------------------ retention

    def prune(self, now_us: int, retention_days: int) -> int:
        """Delete records the cloud confirmed more than `retention_days` after their session
        ended, oldest first and only as an unbroken prefix of the chain (the last one deleted
        becomes the chain's anchor). Unconfirmed records are never deleted, whatever the
        disk says. Returns how many records went."""
        cutoff = now_us - retention_days * DAY_US
        with self.store.tx() as c:
            rows = c.execute(
                "SELECT seq, hash, session_id, ended_ts, delivered_ts FROM charge_records "
                "ORDER BY seq"
            ).fetchall()
            gone: list[tuple[int, str, str]] = []
            for seq, digest, sid, ended, delivered in rows:
                if delivered is None or ended >= cutoff:
                    break
                gone.append((seq, digest, sid))
            for seq, _, sid in gone:
                c.execute("DELETE FROM charge_records WHERE seq = ?", (seq,))
                for table in ("meter_samples", "session_events", "payments"):
                    c.execute(f"DELETE FROM {table} WHERE session_id = ?", (sid,))
                c.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            if gone:
                set_state(c, "chain_anchor", f"{gone[-1][0]}:{gone[-1][1]}")
                if self.integrity is not None:
                    self.integrity.pruned(c)  # before the commit: see Integrity.pruned
            return len(gone)
