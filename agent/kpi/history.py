"""What the store remembers about faults, connector statuses and sessions, read for the
availability KPIs and for the billing review's `FaultsDuring` port (agent/sessions/reviews.py).

Read only; every function takes an open connection (`Store.reading()` or
`SessionStore.reading()`), so the service and the CLI share it. A fault's payload is the
FaultRaised JSON as the diagnosis stored it; it is read loosely (fields it may gain later
are ignored, missing ones take safe defaults) because old rows outlive schema changes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from agent.bus import EventBus
from agent.events import FaultCleared, FaultRaised
from agent.sessions.reviews import FaultRef
from agent.sessions.times import US, to_us

RECENT_US = 3600 * US  # cleared faults kept in memory this long (the store has them)

Reading = Callable[[], AbstractContextManager[sqlite3.Connection]]


@dataclass(frozen=True)
class FaultSpan:
    """One stored fault: when it was active, where, and how it is coded."""

    fault_id: str
    rule: str
    scope: str  # connector:1, device:meter1, bus:rs485, station
    raised_us: int
    cleared_us: int | None
    connectors: tuple[int, ...]
    devices: tuple[str, ...]
    faulted: bool  # it made its connectors Faulted
    side: str  # charger | vehicle | unknown
    component: str  # OCPP 2.0.1 component
    error_code: str  # OCPP 1.6 ChargePointErrorCode
    mrec: str | None  # ChargeX MREC code
    title: str

    def covers(self, connector: int, device: str | None = None) -> bool:
        """True when the fault is on `connector` (or on `device`)."""
        return connector in self.connectors or (device is not None and device in self.devices)

    def affects(self, connector: int) -> bool:
        """True when the fault is on `connector` or station-wide (the CSMS unreachable)."""
        return self.covers(connector) or self.scope == "station"

    def ref(self) -> FaultRef:
        """The fault as the billing review names it."""
        return FaultRef(
            self.fault_id, self.rule, self.component, self.title, self.raised_us, self.cleared_us
        )


def _span(payload: str, raised_us: int, cleared_us: int | None) -> FaultSpan:
    p = json.loads(payload)
    codes = p.get("codes") or {}
    title = p.get("title") or {}
    return FaultSpan(
        fault_id=str(p.get("fault_id", "")),
        rule=str(p.get("rule", "")),
        scope=str(p.get("scope", "")),
        raised_us=raised_us,
        cleared_us=cleared_us,
        connectors=tuple(int(c) for c in p.get("connectors") or ()),
        devices=tuple(str(d) for d in p.get("devices") or ()),
        faulted=bool(p.get("faulted", False)),
        side=str(p.get("side") or "unknown"),
        component=str(codes.get("component", "")),
        error_code=str(codes.get("error_code", "")),
        mrec=codes.get("mrec"),
        title=str(title.get("en") or next(iter(title.values()), "")),
    )


def has_table(c: sqlite3.Connection, name: str) -> bool:
    """True when the store has table `name` (an older schema may not)."""
    row = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def fault_spans(c: sqlite3.Connection, t0_us: int, t1_us: int) -> list[FaultSpan]:
    """Faults active at any time in [t0_us, t1_us], oldest first."""
    if not has_table(c, "faults"):
        return []
    rows = c.execute(
        "SELECT payload, raised_ts, cleared_ts FROM faults WHERE raised_ts <= ? "
        "AND (cleared_ts IS NULL OR cleared_ts >= ?) ORDER BY raised_ts, fault_id",
        (t1_us, t0_us),
    ).fetchall()
    return [_span(p, r, cl) for p, r, cl in rows]


@dataclass(frozen=True)
class SessionFact:
    """A closed session as the KPIs count it."""

    id: str
    connector: int
    started_us: int
    ended_us: int
    token: str
    energy_wh: int
    stop_reason: str


def closed_sessions(c: sqlite3.Connection, t0_us: int, t1_us: int) -> list[SessionFact]:
    """Sessions started in [t0_us, t1_us) and closed, oldest first."""
    if not has_table(c, "sessions"):
        return []
    rows = c.execute(
        "SELECT id, connector, started_ts, ended_ts, id_token, billed_wh, "
        "COALESCE(stop_reason, '') FROM sessions WHERE state = 'closed' AND started_ts >= ? "
        "AND started_ts < ? ORDER BY started_ts, id",
        (t0_us, t1_us),
    ).fetchall()
    return [SessionFact(*r) for r in rows]


def status_spans(
    c: sqlite3.Connection, connector: int, t0_us: int, t1_us: int
) -> list[tuple[int, int, str]]:
    """(start, end, status) of the connector within [t0_us, t1_us), from the status the
    session engine recorded with each transition; the last one lasts until t1_us. Time
    before the first recorded status is left out (unknown, not counted as an outage)."""
    if not has_table(c, "session_events"):
        return []
    before = c.execute(
        "SELECT ts, status FROM session_events WHERE connector = ? AND status != '' AND ts < ? "
        "ORDER BY ts DESC, id DESC LIMIT 1",
        (connector, t0_us),
    ).fetchall()
    rows = c.execute(
        "SELECT ts, status FROM session_events WHERE connector = ? AND status != '' "
        "AND ts >= ? AND ts < ? ORDER BY ts, id",
        (connector, t0_us, t1_us),
    ).fetchall()
    points = [(max(ts, t0_us), st) for ts, st in [*before, *rows]]
    out = []
    for (ts, st), nxt in zip(points, [*points[1:], (t1_us, "")], strict=True):
        if nxt[0] > ts:
            out.append((ts, nxt[0], st))
    return out


class FaultHistory:
    """The `FaultsDuring` port (the runtime plugs it into the session engine): the store's
    fault history plus the faults on the bus not yet committed to it.

    The diagnosis publishes a fault before its worker thread stores it, and a session
    stopped by that fault closes within the same moment: the store alone may not have it
    yet. The bus offers an event to every subscription when it is published, so by the
    time the session engine acts on a FaultRaised it waits in this port's queue too.
    """

    def __init__(self, reading: Reading, bus: EventBus | None = None):
        self.reading = reading
        # Faults are rare (a few a day): a small queue, drained at every call.
        self._sub = (
            None
            if bus is None
            else bus.subscribe(FaultRaised, FaultCleared, maxsize=1000, watch=False)
        )
        self._recent: dict[str, FaultSpan] = {}

    async def __call__(self, connector: int, meter: str, t0_us: int, t1_us: int) -> list[FaultRef]:
        """Faults on `connector` or on device `meter`, active in [t0_us, t1_us]."""
        self._drain(t0_us)
        spans = {s.fault_id: s for s in await asyncio.to_thread(self._stored, t0_us, t1_us)}
        for s in self._recent.values():
            if s.raised_us <= t1_us and (s.cleared_us is None or s.cleared_us >= t0_us):
                spans.setdefault(s.fault_id, s)
        return [s.ref() for s in spans.values() if s.covers(connector, meter)]

    def _stored(self, t0_us: int, t1_us: int) -> list[FaultSpan]:
        with self.reading() as c:
            return fault_spans(c, t0_us, t1_us)

    def _drain(self, keep_after_us: int) -> None:
        """Take the bus' fault events; forget those cleared before `keep_after_us` (the
        store has them by now)."""
        while self._sub is not None and (ev := self._sub.get_nowait()) is not None:
            if isinstance(ev, FaultRaised):
                self._recent[ev.fault_id] = _span(ev.model_dump_json(), to_us(ev.ts), None)
            elif isinstance(ev, FaultCleared) and ev.fault_id in self._recent:
                s = self._recent[ev.fault_id]
                self._recent[ev.fault_id] = replace(s, cleared_us=to_us(ev.ts))
        for fid, s in list(self._recent.items()):
            if s.cleared_us is not None and s.cleared_us < keep_after_us - RECENT_US:
                del self._recent[fid]

    def close(self) -> None:
        """Stop receiving fault events."""
        if self._sub is not None:
            self._sub.close()
