"""What the chaos test (tests/test_chaos.py) checks at the end of a run: that every charge
record reached the CSMS over OCPP and the backend over MQTT exactly once (after removing
retries by their message id), in order, and equal to what the store holds.

Each check returns `Findings`: the problems found (empty: all good) and counts for the
run's summary, so a failing run still prints what it saw. The store is read read-only, so
the readers also work while an agent is running.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocpp_helpers import TX_ACTIONS, energy, signed

from agent.ocpp.metervalues import signed_record_of
from agent.sessions.store import RecordRow
from hil.csms import Received, TestCsms

MQTT_STREAMS = ("billing/records", "sessions/events")


@dataclass
class Findings:
    """Problems found by a check and the figures it counted."""

    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------- the store


def _query(db: Path, sql: str) -> list[tuple]:
    """Rows of `sql`, read-only ([] while the table does not exist yet)."""
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return c.execute(sql).fetchall()
    except sqlite3.OperationalError:  # schema not there yet
        return []
    finally:
        c.close()


def record_hashes(db: Path) -> dict[str, str]:
    """Charge record id -> hash."""
    return dict(_query(db, "SELECT id, hash FROM charge_records"))


def ocpp_undelivered(db: Path) -> int:
    """OCPP transaction messages not confirmed by the CSMS yet."""
    rows = _query(db, "SELECT count(*) FROM ocpp_outbox WHERE delivered_ts IS NULL")
    return rows[0][0] if rows else 0


def mqtt_undelivered(db: Path) -> int:
    """MQTT messages not acknowledged by the broker yet (acknowledged ones are deleted)."""
    rows = _query(db, "SELECT count(*) FROM mqtt_outbox")
    return rows[0][0] if rows else 0


def records_unacknowledged(db: Path) -> int:
    """Charge records whose MQTT message the broker has not acknowledged yet."""
    rows = _query(db, "SELECT count(*) FROM charge_records WHERE delivered_ts IS NULL")
    return rows[0][0] if rows else 0


def ocpp_outbox(db: Path) -> dict[str, tuple[str, str, bool]]:
    """OCPP message id -> (session id, action, delivered) of every queued transaction
    message (security event notifications, session id '', are not the chaos test's)."""
    rows = _query(
        db, "SELECT seq, session_id, action, delivered_ts FROM ocpp_outbox WHERE session_id != ''"
    )
    return {f"tx-{seq}": (sid, action, ts is not None) for seq, sid, action, ts in rows}


def mqtt_last_seqs(db: Path) -> dict[str, int]:
    """Stream -> the last seq the agent numbered."""
    rows = _query(db, "SELECT substr(key, 5), value FROM mqtt_state WHERE key LIKE 'seq:%'")
    return dict(rows)


# ---------------------------------------------------------------------- the CSMS side


def start_key(payload: dict[str, Any]) -> str:
    """A StartTransaction's identity: a retry carries the very same payload."""
    return json.dumps(payload, sort_keys=True)


class TransactionIds:
    """A CSMS StartTransaction responder that gives a fresh id to every StartTransaction it
    answers (retries included, like TestCsms itself) and remembers which ids it gave for
    which StartTransaction, in order."""

    def __init__(self, csms: TestCsms):
        self.csms = csms
        self.given: dict[str, list[int]] = {}
        csms.responders["StartTransaction"] = self

    def __call__(self, _cp_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        tx = self.csms.next_transaction_id
        self.csms.next_transaction_id += 1
        self.given.setdefault(start_key(payload), []).append(tx)
        return {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}

    def last(self, payload: dict[str, Any]) -> int | None:
        """The id the CSMS gave last to this StartTransaction: the one the agent kept."""
        ids = self.given.get(start_key(payload))
        return ids[-1] if ids else None


def check_ocpp(
    received: Iterable[Received],
    outbox: dict[str, tuple[str, str, bool]],
    ids: TransactionIds,
    records: list[RecordRow],
) -> Findings:
    """Every record's transaction reached the CSMS once per message id, in order, with the
    CSMS's transaction id, the record's energy and the record's signed OCMF data."""
    f = Findings()
    calls = [r for r in received if r.action in TX_ACTIONS]
    first: dict[str, int] = {}  # message id -> index of its first arrival
    last: dict[str, int] = {}
    payload_of: dict[str, str] = {}
    for i, r in enumerate(calls):
        body = json.dumps(r.payload, sort_keys=True)
        if r.unique_id in payload_of and payload_of[r.unique_id] != body:
            f.problems.append(f"{r.unique_id} arrived twice with different payloads")
        payload_of.setdefault(r.unique_id, body)
        first.setdefault(r.unique_id, i)
        last[r.unique_id] = i
    msgs = {calls[i].unique_id: calls[i] for i in first.values()}
    f.counts = {
        "tx_messages_received": len(calls),
        "distinct_message_ids": len(msgs),
        "duplicates_by_same_id": len(calls) - len(msgs),
        **{f"distinct_{a}": sum(m.action == a for m in msgs.values()) for a in TX_ACTIONS},
    }

    # The arrivals against the agent's queue: nothing unknown, nothing undelivered, in order.
    unknown = sorted(set(msgs) - set(outbox))
    if unknown:
        f.problems.append(f"the CSMS got messages the agent never queued: {unknown[:5]}")
    missing = sorted(set(outbox) - set(msgs))
    if missing:
        f.problems.append(f"queued messages that never reached the CSMS: {missing[:5]}")
    undelivered = sorted(k for k, (_, _, done) in outbox.items() if not done)
    if undelivered:
        f.problems.append(f"messages not confirmed in the outbox: {undelivered[:5]}")
    order = [int(k.removeprefix("tx-")) for k in sorted(msgs, key=first.__getitem__)]
    if order != sorted(order):
        f.problems.append("messages first arrived out of queue order")

    by_session: dict[str, dict[str, list[str]]] = {}
    for mid, (sid, action, _) in outbox.items():
        by_session.setdefault(sid, {a: [] for a in TX_ACTIONS})[action].append(mid)
    by_record = {r.session_id: r for r in records}
    if set(by_session) != set(by_record):
        f.problems.append(
            f"sessions with OCPP messages {len(by_session)} != sessions with a record "
            f"{len(by_record)}: {sorted(set(by_session) ^ set(by_record))[:5]}"
        )
    for sid, rec in by_record.items():
        got = by_session.get(sid)
        if got is not None:
            f.problems += _check_transaction(sid, got, rec, msgs, first, last, ids)
    return f


def _check_transaction(
    sid: str,
    got: dict[str, list[str]],
    rec: RecordRow,
    msgs: dict[str, Received],
    first: dict[str, int],
    last: dict[str, int],
    ids: TransactionIds,
) -> list[str]:
    """One session's transaction: one start, one stop, ordered, right id, energy and OCMF."""
    s = sid[:8]
    starts, values, stops = (got[a] for a in TX_ACTIONS)
    if len(starts) != 1 or len(stops) != 1:
        return [f"{s}: {len(starts)} StartTransaction and {len(stops)} StopTransaction ids"]
    if starts[0] not in msgs or stops[0] not in msgs:
        return []  # reported as missing above
    start, stop = msgs[starts[0]], msgs[stops[0]]
    out = []
    # Every copy of the start before any later message; every copy of a value before the stop.
    if any(first[m] < last[starts[0]] for m in values + stops if m in first):
        out.append(f"{s}: a message arrived before (a copy of) its StartTransaction")
    if any(last[m] > first[stops[0]] for m in values if m in last):
        out.append(f"{s}: a MeterValues arrived after its StopTransaction")
    tx_id = ids.last(start.payload)
    wrong = [m for m in values + stops if m in msgs and msgs[m].payload["transactionId"] != tx_id]
    if tx_id is None or wrong:
        out.append(f"{s}: transactionId not the CSMS's {tx_id}: {wrong[:3]}")
    metered = stop.payload["meterStop"] - start.payload["meterStart"]
    if metered != rec.energy_wh:
        out.append(f"{s}: meterStop - meterStart = {metered} Wh, record {rec.energy_wh} Wh")
    if energy(stop, "Transaction.End") not in (None, stop.payload["meterStop"]):
        out.append(f"{s}: Transaction.End register differs from meterStop")
    ocmf = json.loads(rec.body).get("ocmf") or {}
    sent = {sv["context"]: signed_record_of(sv)[0] for sv in signed(stop)}
    want = {"Transaction.Begin": ocmf.get("begin"), "Transaction.End": ocmf.get("end")}
    if sent != want:
        out.append(f"{s}: StopTransaction's signed data is not the record's OCMF")
    return out


# ---------------------------------------------------------------------- the MQTT side


def check_mqtt(
    messages: Iterable[tuple[str, bytes]],
    last_seqs: dict[str, int],
    records: list[RecordRow],
) -> Findings:
    """`messages`: (topic, payload) of everything the backend got. Per stream, distinct
    message ids are exactly the seqs 1..last (nothing missing, no seq under two ids);
    billing/records holds every record once, equal to the store's."""
    f = Findings()
    by_stream: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in MQTT_STREAMS}
    copies: Counter[str] = Counter()
    for topic, payload in messages:
        stream = topic.split("/", 3)[-1]
        if stream not in by_stream:
            continue
        msg = json.loads(payload)
        copies[stream] += 1
        seen = by_stream[stream].setdefault(msg["msg_id"], msg)
        if seen != msg:
            f.problems.append(f"{stream}: {msg['msg_id']} arrived twice with different content")
    for stream, msgs in by_stream.items():
        key = stream.replace("/", "_")
        f.counts[f"{key}_received"] = copies[stream]
        f.counts[f"{key}_distinct"] = len(msgs)
        f.counts[f"{key}_duplicates_by_same_id"] = copies[stream] - len(msgs)
        seqs = sorted(m["seq"] for m in msgs.values())
        want = list(range(1, last_seqs.get(stream, 0) + 1))
        if seqs != want:
            gaps = sorted(set(want) - set(seqs))[:5]
            twice = [q for q, n in Counter(seqs).items() if n > 1][:5]
            f.problems.append(
                f"{stream}: seqs 1..{len(want)} expected; missing {gaps}, under two ids {twice}"
            )
    got = {m["record_id"]: m for m in by_stream["billing/records"].values()}
    if len(by_stream["billing/records"]) != len(records) or set(got) != {r.id for r in records}:
        f.problems.append(f"billing/records: {len(got)} distinct records, store {len(records)}")
    for r in records:
        m = got.get(r.id)
        if m is None:
            continue
        if (m["record_seq"], m["hash"], m["prev_hash"]) != (r.seq, r.hash, r.prev_hash):
            f.problems.append(f"billing/records: record {r.seq} differs in seq or hash chain")
        if m["body"] != json.loads(r.body):
            f.problems.append(f"billing/records: record {r.seq} body (OCMF) differs")
    return f
