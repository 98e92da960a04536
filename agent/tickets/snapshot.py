"""The diagnostic snapshot of a ticket, read from the store: the connector's last status,
its active faults, the last readings and health of its devices, and its session (running,
or ended shortly before the report). Works the same in the service and from the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from agent.config import StationConfig
from agent.diagnosis.store import FaultLog
from agent.events import FaultRaised
from agent.sessions.model import mask
from agent.sessions.store import SessionRow, SessionStore
from agent.sessions.times import from_us, to_us
from agent.store.db import Store
from agent.tickets.model import SessionSnapshot, Snapshot

# A closed session counts as "the session" of a report made this soon after it ended.
RECENT_SESSION = timedelta(hours=1)


def _session(store: SessionStore, connector: int, now: datetime) -> SessionSnapshot | None:
    active = [s for s in store.active_sessions() if s.connector == connector]
    row: SessionRow | None = active[0] if active else None
    if row is None:
        since = to_us(now - RECENT_SESSION - timedelta(days=1))  # started before it ended
        recent = [
            s
            for s in store.sessions(since_us=since, limit=200)
            if s.connector == connector
            and s.ended_ts is not None
            and from_us(s.ended_ts) >= now - RECENT_SESSION
        ]
        row = recent[0] if recent else None
    if row is None:
        return None
    rec = store.record_of(row.id) if row.state == "closed" else None
    cost = (rec.data.get("cost") or {}) if rec else {}
    return SessionSnapshot(
        session_id=row.id,
        state=row.state,
        status=row.status,
        started=from_us(row.started_ts),
        ended=None if row.ended_ts is None else from_us(row.ended_ts),
        energy_wh=row.billed_wh,
        auth_method=row.auth_method,
        id_token=mask(row.id_token),
        stop_reason=row.stop_reason,
        record_id=None if rec is None else rec.id,
        total_incl_vat=cost.get("total_incl_vat"),
        total_excl_vat=cost.get("total_excl_vat"),
        currency=cost.get("currency"),
    )


def _last_status(store: SessionStore, connector: int) -> str | None:
    with store.reading() as c:
        row = c.execute(
            "SELECT status FROM session_events WHERE connector = ? ORDER BY id DESC LIMIT 1",
            (connector,),
        ).fetchone()
    return None if row is None else row[0]


def take_snapshot(
    cfg: StationConfig,
    connector: int,
    now: datetime,
    *,
    status: str | None = None,
    live_faults: Iterable[FaultRaised] = (),
) -> Snapshot:
    """What the store knows about `connector` at `now`. A caller in the service adds what it
    knows live: the `status`, and `live_faults` (the store may not have a fault raised a
    moment ago yet)."""
    conn_cfg = next(c for c in cfg.connector if c.id == connector)
    devices = sorted({d for d in (conn_cfg.evse, conn_cfg.meter) if d})
    with Store(cfg.store.path) as db:
        readings = [r for d in devices for r in db.latest(d)]
        health = [h for h in db.health() if h.device in devices]
    with FaultLog(cfg.store.path) as log:
        faults = {
            r.raised.fault_id: r.raised
            for r in log.active()
            if connector in r.raised.connectors or set(r.raised.devices) & set(devices)
        }
    for f in live_faults:
        faults.setdefault(f.fault_id, f)
    with SessionStore(cfg.store.path) as store:
        session = _session(store, connector, now)
        if status is None:
            status = _last_status(store, connector)
    return Snapshot(
        taken=now,
        status=status,
        faults=sorted(faults.values(), key=lambda f: (f.ts, f.fault_id)),
        readings=readings,
        health=health,
        session=session,
    )
