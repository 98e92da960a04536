"""Availability KPIs from what the store keeps: per connector and calendar month, NEVI uptime
(23 CFR 680.116(b)), charge attempts, successful sessions, first-try success, sessions ended
by a fault with their MREC/OCPP codes.

Outage (T_outage) is the union of: the connector's recorded status Faulted or Unavailable,
a fault that faults it (also while the agent's session engine did not run), and the CSMS
unreachable (`[kpi] csms_rules`: the network saw the port as down). Excluded (T_excluded):
outage minutes also covered by a grid fault (`grid_rules`), a scheduled maintenance window,
a vehicle-side fault, or a CSMS outage while the port itself was not down (it could charge).
Nothing is known before the store's first fact (`data_since`): that time counts as up.
Pure and synchronous: `build_kpis` takes an open connection and the time `now`, so tests
script a month in virtual time.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from agent.kpi import intervals as iv
from agent.kpi.config import KpiConfig
from agent.kpi.history import (
    FaultSpan,
    SessionFact,
    closed_sessions,
    fault_spans,
    has_table,
    status_spans,
)
from agent.kpi.maintenance import Window, windows
from agent.kpi.model import (
    MINUTES_PER_YEAR,
    ConnectorKpi,
    Excluded,
    FaultCode,
    FaultEnded,
    KpiReport,
    MonthKpi,
)
from agent.sessions.times import US, from_us, to_us

DOWN_STATUSES = frozenset({"Faulted", "Unavailable"})
END_SLACK_US = 5 * US  # a fault raised this soon after a session's end still ended it
MINUTE_US = 60 * US
TRAILING = 12  # months in the NEVI figure


@dataclass(frozen=True)
class Month:
    """A calendar month in the station's timezone, [start_us, end_us); the current one ends
    at `now`."""

    label: str
    start_us: int
    end_us: int


def month_bounds(now: datetime, tz: str, n: int) -> list[Month]:
    """The last `n` months up to `now` (the current one partial), oldest first."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    y, m = local.year, local.month
    if local == datetime(y, m, 1, tzinfo=zone):  # at midnight on the 1st: the month before
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    firsts = []
    for _ in range(n):
        firsts.append(datetime(y, m, 1, tzinfo=zone))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    firsts.reverse()
    ends = [*firsts[1:], now]
    return [
        Month(f"{a:%Y-%m}", to_us(a), min(to_us(b), to_us(now)))
        for a, b in zip(firsts, ends, strict=True)
    ]


def _data_since(c: sqlite3.Connection) -> int | None:
    found = []
    for table, col in (
        ("session_events", "ts"),
        ("faults", "raised_ts"),
        ("sessions", "started_ts"),
    ):
        if has_table(c, table):
            found.append(c.execute(f"SELECT MIN({col}) FROM {table}").fetchone()[0])
    known = [t for t in found if t is not None]
    return min(known) if known else None


def build_kpis(
    c: sqlite3.Connection,
    *,
    station: str,
    connectors: Sequence[int],
    tz: str,
    now: datetime,
    cfg: KpiConfig,
) -> KpiReport:
    """The KPI report of the last `cfg.months` months up to `now`."""
    months = month_bounds(now, tz, cfg.months + TRAILING - 1)
    t0, t1 = months[0].start_us, to_us(now)
    faults = fault_spans(c, t0, t1)
    sessions = closed_sessions(c, t0, t1)
    maint = windows(c, t0, t1)
    since = _data_since(c)
    out = [
        _connector(cid, months, cfg, status_spans(c, cid, t0, t1), faults, sessions, maint, t1)
        for cid in connectors
    ]
    return KpiReport(
        station=station,
        generated_at=now,
        timezone=tz,
        data_since=None if since is None else from_us(since),
        connectors=out,
    )


def _minutes(us: int) -> float:
    return round(us / MINUTE_US, 2)


def _pct(up_min: float, of_min: float) -> float:
    return 100.0 if of_min <= 0 else round(max(0.0, min(100.0, up_min / of_min * 100)), 3)


def _outages(
    cid: int,
    cfg: KpiConfig,
    status: list[tuple[int, int, str]],
    faults: list[FaultSpan],
    maint: list[Window],
    t1: int,
) -> tuple[list[iv.Span], dict[str, list[iv.Span]]]:
    """The connector's outage spans, and the excluded spans per cause (disjoint, in the
    order of `Excluded`)."""
    here = [f for f in faults if f.affects(cid)]

    def spans(pick) -> list[iv.Span]:
        return iv.union((f.raised_us, f.cleared_us or t1) for f in here if pick(f))

    port_down = iv.union(
        [(a, b) for a, b, st in status if st in DOWN_STATUSES] + spans(lambda f: f.faulted)
    )
    csms = spans(lambda f: f.rule in cfg.csms_rules)
    outage = iv.union(port_down + csms)
    causes = {
        "grid": spans(lambda f: f.rule in cfg.grid_rules),
        "maintenance": iv.union((w.start_us, w.end_us) for w in maint if w.connector in (None, cid))
        if cfg.exclude_maintenance
        else [],
        "vehicle": spans(lambda f: f.side == "vehicle") if cfg.exclude_vehicle_side else [],
        "csms": iv.subtract(csms, port_down),  # the port itself could still charge
    }
    left, excluded = outage, {}
    for name, cover in causes.items():
        excluded[name] = iv.intersect(left, cover)
        left = iv.subtract(left, cover)
    return outage, excluded


def _connector(
    cid: int,
    months: list[Month],
    cfg: KpiConfig,
    status: list[tuple[int, int, str]],
    faults: list[FaultSpan],
    sessions: list[SessionFact],
    maint: list[Window],
    t1: int,
) -> ConnectorKpi:
    outage, excluded = _outages(cid, cfg, status, faults, maint, t1)
    mine = sorted((s for s in sessions if s.connector == cid), key=lambda s: s.started_us)
    starts = [s.started_us for s in mine]
    ok = {s.id: _succeeded(s, cfg) for s in mine}
    first_tries = _first_tries(mine, ok, cfg.retry_window_s * US)
    here = [f for f in faults if f.affects(cid) and f.faulted]
    ended = {
        s.id: _ending_faults(s, here) for s in mine if s.stop_reason in cfg.failed_stop_reasons
    }
    rows: list[MonthKpi] = []
    net: list[float] = []  # per month: outage - excluded, minutes
    for m in months:
        box = [(m.start_us, m.end_us)]
        out_min = _minutes(iv.length(iv.intersect(outage, box)))
        by = {k: _minutes(iv.length(iv.intersect(v, box))) for k, v in excluded.items()}
        excl_min = round(sum(by.values()), 2)
        net.append(out_min - excl_min)
        minutes = _minutes(m.end_us - m.start_us)
        trailing = sum(net[-TRAILING:])
        in_month = mine[bisect_left(starts, m.start_us) : bisect_left(starts, m.end_us)]
        visits = [first_tries[s.id] for s in in_month if s.id in first_tries]
        rows.append(
            MonthKpi(
                month=m.label,
                start=from_us(m.start_us),
                end=from_us(m.end_us),
                minutes=minutes,
                outage_min=out_min,
                excluded_min=excl_min,
                excluded_by=Excluded(**by),
                uptime_pct=_pct(minutes - (out_min - excl_min), minutes),
                uptime_12m_pct=_pct(MINUTES_PER_YEAR - trailing, MINUTES_PER_YEAR),
                attempts=len(in_month),
                successful=sum(ok[s.id] for s in in_month),
                first_try_success_pct=_pct(sum(visits), len(visits)) if visits else None,
                fault_ended=sum(s.id in ended for s in in_month),
            )
        )
    shown = rows[-cfg.months :]
    first_shown = months[-cfg.months].start_us
    fault_sessions = [
        FaultEnded(
            session_id=s.id,
            ended=from_us(s.ended_us),
            stop_reason=s.stop_reason,
            faults=ended[s.id],
        )
        for s in mine
        if s.id in ended and s.started_us >= first_shown
    ]
    codes: dict[str, int] = defaultdict(int)
    for fs in fault_sessions:
        for key in {f"{f.mrec or '-'}/{f.ocpp}" for f in fs.faults} or {"-/unknown"}:
            codes[key] += 1
    return ConnectorKpi(
        connector=cid,
        uptime_12m_pct=shown[-1].uptime_12m_pct,
        months=shown,
        fault_sessions=fault_sessions,
        fault_codes=dict(sorted(codes.items())),
    )


def _succeeded(s: SessionFact, cfg: KpiConfig) -> bool:
    return s.energy_wh >= cfg.min_energy_wh and s.stop_reason not in cfg.failed_stop_reasons


def _first_tries(
    sessions: list[SessionFact], ok: dict[str, bool], window_us: float
) -> dict[str, bool]:
    """Session id of each visit's first attempt -> whether that attempt succeeded. A session
    with the same token, started within `window_us` after a failed one ended, is a retry
    of the same visit."""
    out: dict[str, bool] = {}
    last: dict[str, SessionFact] = {}
    for s in sorted(sessions, key=lambda s: (s.started_us, s.id)):
        prev = last.get(s.token)
        retry = prev is not None and not ok[prev.id] and s.started_us - prev.ended_us <= window_us
        if not retry:
            out[s.id] = ok[s.id]
        last[s.token] = s
    return out


def _ending_faults(s: SessionFact, faults: list[FaultSpan]) -> list[FaultCode]:
    """The connector's faulting faults raised during the session (or just after its end)
    and still active when it ended."""
    end = s.ended_us
    return [
        FaultCode(fault_id=f.fault_id, rule=f.rule, mrec=f.mrec, ocpp=f.error_code)
        for f in faults
        if s.started_us <= f.raised_us <= end + END_SLACK_US
        and (f.cleared_us is None or f.cleared_us >= end)
    ]
