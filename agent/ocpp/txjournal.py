"""Committed session state -> queued OCPP transaction messages, in the session's own transaction.

`TxJournal` is a ledger hook (agent/sessions/ledger.py `LedgerHook`): when the session engine
opens a session it queues StartTransaction and a Transaction.Begin MeterValues; when it
closes one it queues StopTransaction with its transactionData. Both inserts run inside the
ledger's SQLite transaction, so a session and its OCPP messages commit together or not at
all (kill -9 safe; see agent/ocpp/outbox.py).

OCPP 1.6's StartTransaction carries no meter values, so the signed begin record (OCA
application note "Signed Meter Values in OCPP", 1.6 section) travels in the MeterValues with
context Transaction.Begin queued right behind it, and again in StopTransaction's
transactionData next to the signed end record: a CSMS can verify a bill from the
StopTransaction alone.

A building bug must never stop a session from being closed (its charge record is in the
same transaction): if the rich payload cannot be built, the minimal one is queued instead
and the error logged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog

from agent.ocpp import metervalues as mv
from agent.ocpp.outbox import begin_transaction_in, enqueue_in
from agent.sessions.ledger import Closing
from agent.sessions.model import StopReason
from agent.sessions.session import Reservation
from agent.sessions.store import RecordRow, SampleRow, SessionRow, get_state

log = structlog.get_logger(__name__)

ID_TAG_MAX = 20  # OCPP 1.6 IdToken is CiString20

# The session engine's stop reasons (OCPP 2.0.1 names) in OCPP 1.6's Reason enum. 1.6 has no
# limit reasons: energy, time and cost limits are "Other" (the record keeps the exact one).
REASONS: dict[str, str] = {
    StopReason.EV_DISCONNECTED: "EVDisconnected",
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.DEAUTHORIZED: "DeAuthorized",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.EMERGENCY_STOP: "EmergencyStop",
    StopReason.ENERGY_LIMIT: "Other",
    StopReason.TIME_LIMIT: "Other",
    StopReason.COST_LIMIT: "Other",
    StopReason.OTHER: "Other",
    # Reasons 1.6 has and other parts (Reset, UnlockConnector) may stop with.
    "HardReset": "HardReset",
    "SoftReset": "SoftReset",
    "Reboot": "Reboot",
    "UnlockCommand": "UnlockCommand",
}


def id_tag(token: str) -> str:
    """A token as 1.6 idTag (at most 20 characters; longer local tokens are cut, logged)."""
    if len(token) > ID_TAG_MAX:
        log.warning("ocpp.id_tag_truncated", length=len(token), max=ID_TAG_MAX)
    return token[:ID_TAG_MAX]


def _reservation_used(c: sqlite3.Connection, row: SessionRow) -> int | None:
    """The id of the connector's reservation this session uses: the engine drops the
    reservation right after the session opened, so it is still stored while the start is
    queued (a reservation of another token is not this session's)."""
    held = get_state(c, f"connector.{row.connector}.reservation")
    if held is None:
        return None
    r = Reservation.from_json(held)
    return r.id if r.token.id == row.id_token else None


class TxJournal:
    """The ledger hook; `keys` is the charge point's ConfigKeys, `public_key_hex(connector)`
    the key that verifies the connector's OCMF records (None: nothing is signed)."""

    def __init__(
        self,
        keys: Any,
        public_key_hex: Callable[[int], str | None],
        live_values: Callable[[int], dict[str, Any]] = lambda c: {},
    ):
        self.keys = keys
        self.public_key_hex = public_key_hex
        # The connector's current quantities: fill the Transaction.End measurands the
        # engine's end sample does not keep (it stores the billing measurands only).
        self.live_values = live_values

    # ------------------------------------------------------------------ hook

    def opened(self, c: sqlite3.Connection, row: SessionRow, sample: SampleRow) -> None:
        """Queue StartTransaction (with the reservation it used) and its Transaction.Begin
        MeterValues."""
        self._start(c, row, sample, _reservation_used(c, row))

    def closed(self, c: sqlite3.Connection, x: Closing, record: RecordRow) -> None:
        """Queue StopTransaction (and the start first, if the session was never adopted:
        see `adopt_active`)."""
        row = c.execute(
            "SELECT id, connector, started_ts, id_token, start_wh, ocmf_begin FROM sessions "
            "WHERE id = ?",
            (x.session_id,),
        ).fetchone()
        known = c.execute(
            "SELECT 1 FROM ocpp_transactions WHERE session_id = ?", (x.session_id,)
        ).fetchone()
        if known is None:
            self._start_late(c, x.session_id)
        payload = self._minimal_stop(row[3], x)
        try:
            payload["transactionData"] = self._transaction_data(c, row, x, record)
        except Exception:
            log.exception("ocpp.stop_data_failed", session=x.session_id[:8])
        enqueue_in(c, x.session_id, x.connector, "StopTransaction", payload, x.ended_us)
        c.execute(
            "UPDATE ocpp_transactions SET stopped_ts = ? WHERE session_id = ?",
            (x.ended_us, x.session_id),
        )

    def adopt_active(self, c: sqlite3.Connection) -> list[str]:
        """Queue StartTransaction for every active session that is no OCPP transaction yet
        (it began before OCPP was configured, e.g. enabled at a restart mid-session): the
        central system hears of it now, not when it stops. Closed sessions are history and
        are never replayed. Returns the adopted session ids."""
        ids = [
            r[0]
            for r in c.execute(
                "SELECT s.id FROM sessions s LEFT JOIN ocpp_transactions t "
                "ON t.session_id = s.id WHERE s.state = 'active' AND t.session_id IS NULL "
                "ORDER BY s.started_ts"
            ).fetchall()
        ]
        for sid in ids:
            self._start_late(c, sid)
        return ids

    # ------------------------------------------------------------------ start

    def _start(
        self,
        c: sqlite3.Connection,
        row: SessionRow,
        begin: SampleRow,
        reservation_id: int | None = None,
    ) -> None:
        if not begin_transaction_in(c, row.id, row.connector, row.started_ts):
            return
        payload = {
            "connectorId": row.connector,
            "idTag": id_tag(row.id_token),
            "meterStart": row.start_wh,
            "timestamp": mv.iso(row.started_ts),
        }
        if reservation_id is not None:
            payload["reservationId"] = reservation_id
        enqueue_in(c, row.id, row.connector, "StartTransaction", payload, row.started_ts)
        try:
            values = self._begin_values(row.connector, begin, row.ocmf_begin, with_key=True)
        except Exception:
            log.exception("ocpp.begin_values_failed", session=row.id[:8])
            return
        if values:
            mvp = {"connectorId": row.connector, "meterValue": [mv.meter_value(begin.ts, values)]}
            enqueue_in(c, row.id, row.connector, "MeterValues", mvp, row.started_ts)

    def _start_late(self, c: sqlite3.Connection, session_id: str) -> None:
        full = c.execute(
            "SELECT " + ", ".join(SessionRow.__dataclass_fields__) + " FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        begin = c.execute(
            "SELECT session_id, ts, kind, register_wh, session_wh, tx, measurands, id FROM "
            "meter_samples WHERE session_id = ? AND kind = 'begin' ORDER BY id LIMIT 1",
            (session_id,),
        ).fetchone()
        srow = SessionRow(*full)
        sample = (
            SampleRow(*begin)
            if begin
            else SampleRow(session_id, srow.started_ts, "begin", srow.start_wh, 0)
        )
        self._start(c, srow, sample)

    def _begin_values(
        self, connector: int, begin: SampleRow, ocmf_begin: str | None, with_key: bool
    ) -> list[dict[str, Any]]:
        values = {**json.loads(begin.measurands or "{}"), "energy_import_wh": begin.register_wh}
        out = mv.sampled_values(values, self._list("StartTxnSampledData"), mv.BEGIN)
        if ocmf_begin and self._bool("SampledDataSignReadings"):
            out.append(mv.signed_value(ocmf_begin, mv.BEGIN, self._key_for(connector, with_key)))
        return out

    # ------------------------------------------------------------------ stop

    def _minimal_stop(self, token: str, x: Closing) -> dict[str, Any]:
        return {
            "idTag": id_tag(token),
            "meterStop": x.end_sample.register_wh,
            "timestamp": mv.iso(x.ended_us),
            "reason": REASONS.get(x.stop_reason, "Other"),
        }

    def _transaction_data(
        self, c: sqlite3.Connection, row: tuple, x: Closing, record: RecordRow
    ) -> list[dict[str, Any]]:
        session_id, connector, _started, _token, _start_wh, ocmf_begin = row
        sampled = self._list("StopTxnSampledData")
        aligned = self._list("StopTxnAlignedData")
        sign = self._bool("SampledDataSignReadings")
        # The key travels once per transaction: with the Begin MeterValues when that was
        # signed, else here with the first signed value.
        key_sent = (
            c.execute(
                "SELECT 1 FROM ocpp_outbox WHERE session_id = ? AND action = 'MeterValues' "
                "AND payload LIKE '%SignedData%' LIMIT 1",
                (session_id,),
            ).fetchone()
            is not None
        )
        samples = c.execute(
            "SELECT ts, kind, register_wh, measurands FROM meter_samples WHERE session_id = ? "
            "AND kind IN ('begin', 'clock') ORDER BY ts, id",
            (session_id,),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for ts, kind, wh, meas in samples:
            values = {**json.loads(meas or "{}"), "energy_import_wh": wh}
            if kind == "begin":
                svs = mv.sampled_values(values, sampled, mv.BEGIN)
                if sign and ocmf_begin:
                    key = self._key_for(connector, not key_sent)
                    svs.append(mv.signed_value(ocmf_begin, mv.BEGIN, key))
                    key_sent = True
            else:
                svs = mv.sampled_values(values, aligned, mv.CLOCK)
            if svs:
                out.append(mv.meter_value(ts, svs))
        end = x.end_sample
        values = {
            **self.live_values(connector),
            **json.loads(end.measurands or "{}"),
            "energy_import_wh": end.register_wh,
        }
        svs = mv.sampled_values(values, sampled, mv.END)
        ocmf_end = (record.data.get("ocmf") or {}).get("end")
        if sign and ocmf_end:
            svs.append(mv.signed_value(ocmf_end, mv.END, self._key_for(connector, not key_sent)))
        if svs:
            out.append(mv.meter_value(end.ts, svs))
        return out

    # ------------------------------------------------------------------ keys

    def _key_for(self, connector: int, first: bool) -> str | None:
        mode = self.keys.get("PublicKeyWithSignedMeterValue") or "Never"
        if mode == "EveryMeterValue" or (mode == "OncePerTransaction" and first):
            return self.public_key_hex(connector)
        return None

    def _list(self, key: str) -> list[str]:
        return mv.parse_measurands(",".join(self.keys.get_list(key)))

    def _bool(self, key: str) -> bool:
        return bool(self.keys.get_bool(key))
