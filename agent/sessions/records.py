"""Charge records (OCPI CDR-like): what goes into one, and how `billing verify` checks them.

A record body is plain JSON (Decimal amounts as text, times ISO 8601 UTC, energy integer
Wh). Example (abridged):

    {"id": "DEMO-0001-000042", "station": "DEMO-0001", "connector": 1,
     "session_id": "5f0c…", "start": "2025-03-01T10:00:00.120000+00:00",
     "charging_end": "…", "end": "…", "charging_s": "40.2", "parking_s": "6.1",
     "auth": {"method": "LocalList", "token": "DEMO-0042", "token_type": "LOCAL"},
     "meter": {"device": "meter1", "serial": "71234567", "start_wh": 1234567,
               "end_wh": 1234808, "start_time": "…", "end_time": "…"},
     "energy_wh": 241, "tariff_id": "EVEDGE-EPF-040",
     "charging_periods": [{"start": "…", "end": "…", "charging": true, "energy_wh": 241,
                           "lines": [{"dimension": "ENERGY", …}]}, …],
     "cost": {"currency": "EUR", "dimensions": […], "total_excl_vat": "2.00",
              "total_incl_vat": "2.38", "vat_amount": "0.38", "limit_excl": "min_price", …},
     "stop": {"reason": "EVDisconnected", "by": "ev", "detail": ""},
     "energy_estimate": {"wh": 240, "covered_s": "40.2", "basis": "…"},
     "gaps": [], "review": {"required": false, "reasons": [], "faults": []}, "notes": [],
     "ocmf": {"signer": "agent", "public_key": "3059…", "begin": "OCMF|…", "end": "OCMF|…"},
     "payment": null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from agent.billing import chain, ocmf
from agent.billing.checkpoint import checkpoint_path
from agent.billing.pricing import CostResult
from agent.sessions import integrity
from agent.sessions.ledger import plain
from agent.sessions.metering import EnergyTracker
from agent.sessions.reviews import FaultRef
from agent.sessions.reviews import reason as review_reason
from agent.sessions.store import RecordRow, SessionRow, SessionStore, get_state
from agent.sessions.times import from_us, to_us

RECORD_VERSION = 1
ROUNDING_RULE = (
    "per dimension: sum of lines rounded half-up to the currency's minor unit, VAT per "
    "component; min/max price bound excl. and incl. totals independently"
)


def _seconds(us: int) -> str:
    return str(Decimal(us).scaleb(-6).normalize()) if us else "0"


def cost_json(cost: CostResult) -> dict[str, Any]:
    """The cost breakdown kept in a record (periods go to charging_periods)."""
    d = cost.to_json()
    d.pop("periods", None)
    vat = None
    if cost.total_incl_vat is not None:
        vat = str(cost.total_incl_vat - cost.total_excl_vat)
    d["vat_amount"] = vat
    d["rounding"] = ROUNDING_RULE
    return d


@dataclass
class RecordInput:
    """Everything a charge record is made of, gathered at the close of a session."""

    station_id: str
    row: SessionRow
    ended_us: int
    charging_end_us: int
    stop_reason: str
    stopped_by: str
    stop_detail: str
    tracker: EnergyTracker
    end_wh: int
    end_reading_us: int
    cost: CostResult | None
    signer: str
    public_key_hex: str
    end_public_key_hex: str | None = None  # the agent's, when a signing meter failed at end
    payment: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    faults: tuple[FaultRef, ...] = ()  # diagnosis faults that put the energy in doubt


def build_body(x: RecordInput) -> dict[str, Any]:
    """The record body (without id and OCMF end record, which the close transaction adds)."""
    r = x.row
    reasons = [*x.tracker.reviews, *(review_reason(f) for f in x.faults)]
    periods = [] if x.cost is None else [p.to_json() for p in x.cost.periods]
    body = {
        "version": RECORD_VERSION,
        "station": x.station_id,
        "connector": r.connector,
        "session_id": r.id,
        "start": from_us(r.started_ts).isoformat(),
        "charging_end": from_us(x.charging_end_us).isoformat(),
        "end": from_us(x.ended_us).isoformat(),
        "charging_s": _seconds(x.charging_end_us - r.started_ts),
        "parking_s": _seconds(x.ended_us - x.charging_end_us),
        "auth": {"method": r.auth_method, "token": r.id_token, "token_type": r.id_token_type},
        "meter": {
            "device": r.meter_device,
            "serial": x.tracker.serial or r.meter_serial,
            "start_wh": r.start_wh,
            "end_wh": x.end_wh,
            "start_time": from_us(x.tracker.start_us).isoformat(),
            "end_time": from_us(x.end_reading_us).isoformat(),
        },
        "energy_wh": x.tracker.billed_wh,
        "tariff_id": r.tariff_id,
        "charging_periods": periods,
        "cost": None if x.cost is None else cost_json(x.cost),
        "stop": {"reason": x.stop_reason, "by": x.stopped_by, "detail": x.stop_detail},
        "energy_estimate": _estimate(x.tracker),
        "gaps": [g.to_json() for g in x.tracker.gaps],
        "review": {
            "required": bool(reasons),
            "reasons": reasons,
            "faults": [f.to_json() for f in x.faults],
        },
        "notes": [*x.tracker.notes, *x.notes],
        "ocmf": {"signer": x.signer, "public_key": x.public_key_hex, "begin": r.ocmf_begin}
        | ({} if x.end_public_key_hex is None else {"end_public_key": x.end_public_key_hex}),
        "payment": x.payment,
    }
    out = plain(body)
    chain.canonical_bytes(chain.ChainedRecord(0, chain.GENESIS, out))  # refuses floats now
    return out


def _estimate(t: EnergyTracker) -> dict[str, Any] | None:
    """The power x time evidence (never billed); None when the meter gave no power."""
    if t.estimate_wh is None:
        return None
    return {
        "wh": t.estimate_wh,
        "covered_s": _seconds(t.estimate_us),
        "basis": "meter power readings x time between register readings; evidence, not billed",
    }


# ---------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the stored records, naming the record (seq, id) or session."""

    message: str
    seq: int | None = None
    record_id: str | None = None
    session_id: str | None = None

    def __str__(self) -> str:
        where = f"record {self.record_id} (seq {self.seq})" if self.seq is not None else ""
        if not where and self.session_id:
            where = f"session {self.session_id}"
        return f"{where}: {self.message}" if where else self.message


@dataclass
class VerifyReport:
    """What `verify_records` checked and found."""

    records: int
    signatures: int
    flagged: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def verify_records(
    store: SessionStore, agent_public_key: str | None, station: str | None = None
) -> VerifyReport:
    """Walk the hash chain and verify every OCMF signature and reading of every record.

    Checks: the store's guard triggers and its head and anchor against the signed checkpoint
    (agent/sessions/integrity.py: the newest records deleted, the anchor rewritten, the chain
    rebuilt); chain links (an edited, removed or reordered record is named); each stored hash;
    every column copied from the body (energy, totals, times, review, …) and the session
    row's billed energy and times against the hashed body;
    each record's begin and end OCMF records against its signer's key (the agent's own
    records against `agent_public_key`, when given); that the OCMF readings are the record's
    meter readings and — unless the record is flagged for review — that the energy billed
    is their difference; that no PG number is used twice; and that every closed session
    has its record.
    """
    rows = store.records()
    with store.reading() as c:
        anchor = get_state(c, "chain_anchor")
        found = integrity.trigger_problems(c) + integrity.checkpoint_problems(
            c, checkpoint_path(store.path), station, agent_public_key
        )
        sessions = {r[0]: r[1:] for r in c.execute(SESSION_COLUMNS)}
    problems = [Problem(m) for m in found]
    prev, first = chain.GENESIS, 1
    if anchor is not None:
        seq, prev = anchor.split(":")
        first = int(seq) + 1
    linked: list[chain.ChainedRecord] = []
    bodies: list[dict[str, Any] | None] = []
    for row in rows:
        try:
            body = json.loads(row.body)
        except json.JSONDecodeError as e:
            problems.append(_p(row, f"body is not valid JSON ({e}): edited"))
            body = None
        bodies.append(body)
        linked.append(chain.ChainedRecord(row.seq, row.prev_hash, body or {}))
        if body is not None and chain.record_hash(linked[-1]) != row.hash:
            problems.append(_p(row, "does not hash to its stored hash: edited"))
    try:
        chain.verify_chain(linked, prev_hash=prev, first_seq=first)
    except chain.ChainBroken as e:
        row = rows[e.index]
        problems.append(_p(row, f"hash chain broken ({e.kind}): {str(e).split(': ', 1)[-1]}"))
    signatures = flagged = 0
    pages: dict[int, str] = {}
    for row, body in zip(rows, bodies, strict=True):
        if body is None:
            continue
        flagged += bool(body.get("review", {}).get("required"))
        n, wrong = _check_record(row, body, agent_public_key, pages)
        signatures += n
        problems.extend(wrong)
        problems.extend(_p(row, m) for m in derived_mismatches(row, body, sessions))
    for sid in store.closed_without_record():
        problems.append(Problem("closed but has no charge record: deleted?", session_id=sid))
    return VerifyReport(len(rows), signatures, flagged, problems)


SESSION_COLUMNS = (
    "SELECT id, started_ts, charging_end_ts, ended_ts, billed_wh FROM sessions "
    "WHERE state = 'closed'"
)


def _us(text: Any) -> int | None:
    try:
        return to_us(datetime.fromisoformat(text))
    except (TypeError, ValueError):
        return None


def derived_mismatches(
    row: RecordRow, body: dict[str, Any], sessions: dict[str, tuple]
) -> list[str]:
    """Each column of the record row, and of its session row, that is not what the hashed
    body says (reports and lists read those columns: an edit there must not go unseen)."""
    cost = body.get("cost") or {}
    review = body.get("review") or {}
    expected = {
        "id": body.get("id"),
        "session_id": body.get("session_id"),
        "connector": body.get("connector"),
        "started_ts": _us(body.get("start")),
        "ended_ts": _us(body.get("end")),
        "created_ts": _us(body.get("end")),
        "energy_wh": body.get("energy_wh"),
        "currency": cost.get("currency"),
        "total_excl_vat": cost.get("total_excl_vat"),
        "total_incl_vat": cost.get("total_incl_vat"),
        "review": int(bool(review.get("required"))),
    }
    out = [
        f"column {name} is {getattr(row, name)!r}, the signed body says {want!r}: edited"
        for name, want in expected.items()
        if getattr(row, name) != want
    ]
    s = sessions.get(row.session_id)
    if s is None:
        return out
    names = ("started_ts", "charging_end_ts", "ended_ts", "billed_wh")
    wants = (expected["started_ts"], _us(body.get("charging_end")), expected["ended_ts"])
    for name, got, want in zip(names, s, (*wants, body.get("energy_wh")), strict=True):
        if got != want:
            out.append(f"session column {name} is {got!r}, the signed body says {want!r}: edited")
    return out


def _p(row: RecordRow, message: str) -> Problem:
    return Problem(message, row.seq, row.id, row.session_id)


def _check_record(
    row: RecordRow, body: dict[str, Any], agent_key: str | None, pages: dict[int, str]
) -> tuple[int, list[Problem]]:
    out: list[Problem] = []
    sig = body.get("ocmf") or {}
    key = sig.get("public_key")
    if sig.get("signer") == "agent" and agent_key is not None and key != agent_key:
        out.append(_p(row, "signed with a key other than this station's OCMF key"))
    verified = []
    for which in ("begin", "end"):
        text = sig.get(which)
        try:
            k = sig.get("end_public_key", key) if which == "end" else key
            verified.append(ocmf.verify(text, k).record)
        except (ocmf.OcmfError, ValueError, TypeError) as e:
            out.append(_p(row, f"OCMF {which} record does not verify: {e}"))
    if len(verified) < 2:
        return len(verified), out
    begin, end = verified
    if sig.get("signer") == "agent":
        for rec in (begin, end):
            _, n = rec.pagination
            if n in pages and pages[n] != row.id:
                out.append(_p(row, f"OCMF PG T{n} is also used by record {pages[n]}"))
            pages[n] = row.id
    meter = body.get("meter", {})
    try:
        b_wh = begin.readings[0].energy_wh
        e_wh = end.readings[-1].energy_wh
    except (ocmf.OcmfError, IndexError) as e:
        out.append(_p(row, f"OCMF readings unreadable: {e}"))
        return 2, out
    if b_wh != meter.get("start_wh") or e_wh != meter.get("end_wh"):
        out.append(
            _p(
                row,
                f"OCMF readings {b_wh}..{e_wh} Wh are not the record's meter readings "
                f"{meter.get('start_wh')}..{meter.get('end_wh')} Wh",
            )
        )
    reviewed = (body.get("review") or {}).get("required")
    if not reviewed and body.get("energy_wh") != e_wh - b_wh:
        out.append(
            _p(
                row,
                f"energy billed {body.get('energy_wh')} Wh is not the signed register "
                f"difference {e_wh - b_wh} Wh, and the record is not flagged for review",
            )
        )
    if body.get("energy_wh", 0) < 0:
        out.append(_p(row, "negative energy"))
    return 2, out
