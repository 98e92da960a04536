"""Usage reports from the charge records: per day, week or month, optionally per connector
or per token — sessions, energy, revenue, idle (parking) time, utilization, fault downtime.

A session counts in the bucket its start falls in (energy, revenue, idle time); utilization
is the plugged-in time that overlaps the bucket, over the bucket's length times the
connectors it covers. Fault downtime is the time connectors spent in status Faulted, from
the status transitions the session engine records. Buckets are local days / ISO weeks
(Monday) / months in the station's timezone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from agent.sessions.store import SessionStore
from agent.sessions.times import US, from_us, to_us

Period = Literal["day", "week", "month"]
By = Literal["connector", "token"] | None
DEFAULT_SPAN = {"day": 30, "week": 12, "month": 12}  # buckets shown without --from


class ReportError(ValueError):
    """The report cannot be made as asked (bad range, mixed currencies, …)."""


@dataclass
class ReportRow:
    """One bucket (and group) of the report."""

    period: str  # label: 2025-03-01, 2025-W09, 2025-03
    start: datetime
    end: datetime
    group: str | None
    sessions: int = 0
    energy_wh: int = 0
    revenue_excl_vat: Decimal = Decimal(0)
    revenue_incl_vat: Decimal | None = Decimal(0)
    idle_s: Decimal = Decimal(0)
    plugged_s: Decimal = Decimal(0)
    utilization_pct: Decimal = Decimal(0)
    fault_downtime_s: Decimal = Decimal(0)
    review: int = 0  # sessions flagged for review
    currency: str | None = None

    def to_json(self) -> dict:
        """JSON-ready (Decimals as strings)."""
        return {
            "period": self.period,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "group": self.group,
            "sessions": self.sessions,
            "energy_wh": self.energy_wh,
            "energy_kwh": str(Decimal(self.energy_wh).scaleb(-3)),
            "revenue_excl_vat": str(self.revenue_excl_vat),
            "revenue_incl_vat": None
            if self.revenue_incl_vat is None
            else str(self.revenue_incl_vat),
            "currency": self.currency,
            "idle_s": str(self.idle_s),
            "utilization_pct": str(self.utilization_pct),
            "fault_downtime_s": str(self.fault_downtime_s),
            "review": self.review,
        }


def bucket_start(d: date, period: Period) -> date:
    """The first day of the bucket containing `d`."""
    if period == "week":
        return d - timedelta(days=d.weekday())
    if period == "month":
        return d.replace(day=1)
    return d


def next_bucket(d: date, period: Period) -> date:
    """The first day of the bucket after the one starting at `d`."""
    if period == "day":
        return d + timedelta(days=1)
    if period == "week":
        return d + timedelta(days=7)
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


def label(d: date, period: Period) -> str:
    """How a bucket is named."""
    if period == "week":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    if period == "month":
        return f"{d:%Y-%m}"
    return d.isoformat()


def default_range(period: Period, today: date) -> tuple[date, date]:
    """The last DEFAULT_SPAN buckets up to and including today's (end exclusive)."""
    try:
        start = bucket_start(today, period)
        for _ in range(DEFAULT_SPAN[period] - 1):
            start = bucket_start(start - timedelta(days=1), period)
        return start, next_bucket(bucket_start(today, period), period)
    except OverflowError:
        raise ReportError(f"{today} is too close to the calendar's edge for a report") from None


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def _faulted_intervals(store: SessionStore, until_us: int) -> dict[int, list[tuple[int, int]]]:
    """Per connector, the [start, end) µs intervals it spent in status Faulted."""
    with store.reading() as c:
        rows = c.execute(
            "SELECT connector, ts, status FROM session_events ORDER BY connector, ts, id"
        ).fetchall()
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    since: dict[int, int] = {}
    for conn, ts, status in rows:
        if status == "Faulted":
            since.setdefault(conn, ts)
        elif conn in since:
            out[conn].append((since.pop(conn), ts))
    for conn, ts in since.items():
        out[conn].append((ts, until_us))
    return out


def day_after(last: date) -> date:
    """The exclusive end of a range whose last (inclusive) day is `last`."""
    if last == date.max:
        raise ReportError(f"--to: {last} is the last date there is; give an earlier one")
    return last + timedelta(days=1)


MAX_BUCKETS = 10_000  # rows per group: a report, not a memory exhaustion
PERIOD_DAYS = {"day": 1, "week": 7, "month": 28}  # shortest length: the bucket count's bound


def build_report(
    store: SessionStore,
    *,
    period: Period,
    start: date,
    end: date,
    tz: str,
    connectors: list[int],
    by: By = None,
    now: datetime | None = None,
) -> list[ReportRow]:
    """Report rows for buckets from `start` (inclusive) to `end` (exclusive), local dates."""
    if end <= start:
        raise ReportError(f"--to must not be before --from ({start} .. {end})")
    buckets = (end - start).days // PERIOD_DAYS[period]
    if buckets > MAX_BUCKETS:
        raise ReportError(
            f"{start} .. {end} makes about {buckets} {period}s (at most {MAX_BUCKETS}): "
            "narrow --from/--to or use a longer --period"
        )
    zone = ZoneInfo(tz)
    try:
        edges: list[date] = [bucket_start(start, period)]
        while edges[-1] < end:
            edges.append(next_bucket(edges[-1], period))
        bounds = [to_us(datetime.combine(d, time(0), tzinfo=zone)) for d in edges]
        from_us(bounds[0]), from_us(bounds[-1])  # the rows' datetimes, in UTC
    except OverflowError:  # a bucket edge before 0001-01-01 or after 9999-12-31 (UTC)
        raise ReportError(
            f"{start} .. {end}: the {period}s reach outside 0001-01-01 .. 9999-12-31 (UTC)"
        ) from None
    now_us = to_us(now) if now else 2**62
    records = store.records(bounds[0], bounds[-1])
    currencies = {r.currency for r in records if r.currency}
    if len(currencies) > 1:
        raise ReportError(f"records in several currencies ({', '.join(sorted(currencies))})")
    currency = currencies.pop() if currencies else None
    faulted = _faulted_intervals(store, min(now_us, bounds[-1]))
    groups: list[str | None]
    if by == "connector":
        # The config's connectors, and any a record names (a connector since removed).
        groups = [str(c) for c in sorted(set(connectors) | {r.connector for r in records})]
    elif by == "token":
        groups = sorted({r.data["auth"]["token"] for r in records})
    else:
        groups = [None]
    rows: dict[tuple[int, str | None], ReportRow] = {}
    for i in range(len(edges) - 1):
        for g in groups:
            rows[(i, g)] = ReportRow(
                label(edges[i], period),
                from_us(bounds[i]),
                from_us(bounds[i + 1]),
                g,
                currency=currency,
            )
    for r in records:
        body = r.data
        g = None
        if by == "connector":
            g = str(r.connector)
        elif by == "token":
            g = body["auth"]["token"]
        i = next(k for k in range(len(bounds) - 1) if bounds[k] <= r.started_ts < bounds[k + 1])
        row = rows[(i, g)]
        row.sessions += 1
        row.energy_wh += r.energy_wh
        row.review += r.review
        if r.total_excl_vat is not None:
            row.revenue_excl_vat += Decimal(r.total_excl_vat)
        if r.total_incl_vat is None and r.total_excl_vat is not None:
            row.revenue_incl_vat = None  # some session's VAT is unknown
        elif row.revenue_incl_vat is not None and r.total_incl_vat is not None:
            row.revenue_incl_vat += Decimal(r.total_incl_vat)
        row.idle_s += Decimal(body.get("parking_s") or 0)
        for k in range(len(bounds) - 1):
            part = _overlap(r.started_ts, r.ended_ts, bounds[k], bounds[k + 1])
            if part:
                rows[(k, g)].plugged_s += Decimal(part) / US
    for (i, g), row in rows.items():
        covered = connectors if g is None or by == "token" else [int(g)]
        if not covered and g is None:
            covered = sorted({r.connector for r in records})
        span_us = min(bounds[i + 1], now_us) - bounds[i]
        if by != "token":
            row.fault_downtime_s = (
                Decimal(
                    sum(
                        _overlap(a, b, bounds[i], bounds[i + 1])
                        for c in covered
                        for a, b in faulted.get(c, [])
                    )
                )
                / US
            )
        if span_us > 0 and covered:
            pct = row.plugged_s * 100 * US / (span_us * len(covered))
            row.utilization_pct = pct.quantize(Decimal("0.1"), ROUND_HALF_UP)
        row.idle_s = row.idle_s.quantize(Decimal(1), ROUND_HALF_UP)
        row.fault_downtime_s = row.fault_downtime_s.quantize(Decimal(1), ROUND_HALF_UP)
    return list(rows.values())
