"""Cost engine: price a charging session against an OCPI 2.2.1 tariff.

Input is a session timeline: session start, end of charging, end of session (unplug) and the
meter samples (timestamp, energy register Wh, power W, current A). Charging is
[start, charging_end); parking is [charging_end, end).

Periods. The session is cut at every instant where the active tariff element of some dimension
can change: local time-of-day edges of every start_time/end_time (and local midnight, for
day_of_week/start_date/end_date), DST offset changes, start + min/max_duration, the instants
the session energy reaches each min_kwh/max_kwh threshold (linear between samples), the end of
charging, and — only when the tariff restricts power or current — every sample time. Each
piece is evaluated at its start (power/current hold their last sampled value); adjacent pieces
whose active elements are equal are merged into one period. Per dimension, only the first
element (in tariff order) whose restrictions all match is active; reservation elements never
match a charging session.

Quantities. ENERGY: Wh charged in the period (from the register, interpolated linearly
between samples, rounded down to whole Wh). TIME: seconds charging. PARKING_TIME: seconds not
charging. FLAT: 1, in the first period where a FLAT component is active.

step_size. Once per dimension, the session total is rounded up to whole steps of the
component of the last period with a non-zero quantity of that dimension, and the extra is
billed in that period at its price. TIME and PARKING_TIME share one rounding (OCPI: "step_size
is only taken into account for the total parking duration" when both are used, ocpi/ocpi PR
#423, issue #546): if any parking time is billed, only the parking total is rounded, else
the charging time total. step_size 0 means no rounding.

Rounding rule for money (OCPI states none). Amounts are exact (fractions) until the end.
Per dimension: excl. VAT = sum of its lines (quantity x price) rounded half-up to the
currency's minor unit; incl. VAT = sum of its lines x (1 + vat/100), i.e. VAT per component,
then rounded half-up the same way. Subtotals are sums of those rounded dimension amounts, so a
bill always adds up. min_price/max_price then bound the excl. and incl. totals independently
(OCPI: "they both apply"). A component without `vat` has no VAT applicable (OCPI 2.2.1:
"if omitted, no VAT is applicable"; shown as vat None, not 0 %): its incl. VAT is its excl.
amount. The incl. total is `None` only when an excl. bound applied and the tariff gave no
incl. bound. Per-line amounts are shown unrounded
(at most 6 decimals) and are informative only.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from itertools import pairwise
from math import ceil, floor
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

from agent.billing.tariff import Dimension, MatchState, Price, PriceComponent, Tariff

US = 1_000_000  # microseconds per second: internal times are integer µs since the epoch
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# ISO 4217 currencies whose minor unit is not 2 decimals; all others round to cents.
MINOR_UNITS = {"BHD": 3, "CLP": 0, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3}
MINOR_UNITS |= {"LYD": 3, "OMR": 3, "PYG": 0, "TND": 3, "UGX": 0, "VND": 0, "XAF": 0, "XOF": 0}
UNITS = {
    Dimension.ENERGY: ("Wh", "kWh", 1000),
    Dimension.TIME: ("s", "h", 3600),
    Dimension.PARKING_TIME: ("s", "h", 3600),
    Dimension.FLAT: ("session", "session", 1),
}


class PricingError(ValueError):
    """The session or the request cannot be priced (bad timeline, tariff not in force, …)."""


@dataclass(frozen=True)
class MeterSample:
    """One meter reading: `energy_wh` is the cumulative register, current summed over phases."""

    at: datetime
    energy_wh: int
    power_w: Decimal | int | None = None
    current_a: Decimal | int | None = None


@dataclass(frozen=True)
class Session:
    """A session timeline: charging [start, charging_end), parking [charging_end, end).

    Energy is taken from the register between start and charging_end; samples after
    charging_end only help interpolate the register there (parking has no energy by definition).
    """

    start: datetime
    charging_end: datetime
    end: datetime
    samples: Sequence[MeterSample] = ()


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> dict:
        """JSON-ready dict: Decimals as strings, datetimes as ISO 8601."""
        return self.model_dump(mode="json")


class PriceLine(_Out):
    """One dimension billed in one period. Quantities in Wh, s or sessions."""

    dimension: Dimension
    element: int  # index into tariff.elements
    quantity: Decimal
    billed_quantity: Decimal  # incl. this line's share of the step_size round-up
    unit_price: Decimal  # excl. VAT per kWh, per hour or per session
    vat: Decimal | None  # percent; None = omitted: no VAT applicable (incl. = excl.), not 0 %
    excl_vat: Decimal
    incl_vat: Decimal


class Period(_Out):
    tariff_id: str  # the tariff in force in this period (a mid-session change starts one)
    start: datetime
    end: datetime
    charging: bool
    energy_wh: int
    duration_s: Decimal
    elements: dict[Dimension, int]  # active element per billed dimension
    lines: list[PriceLine]


class DimensionCost(_Out):
    dimension: Dimension
    unit: str  # of quantity: Wh, s, session
    price_unit: str  # of unit_price: kWh, h, session
    quantity: Decimal
    billed_quantity: Decimal
    step_size: int | None  # the step that was applied, None if none
    unit_price: Decimal | None  # None when periods had different prices
    vat: Decimal | None  # None when omitted (no VAT applicable), or when vat_mixed
    vat_mixed: bool
    excl_vat: Decimal
    vat_amount: Decimal
    incl_vat: Decimal


class CostResult(_Out):
    tariff_id: str
    currency: str
    timezone: str
    start: datetime
    charging_end: datetime
    end: datetime
    energy_wh: int
    charging_s: Decimal
    parking_s: Decimal
    periods: list[Period]
    dimensions: list[DimensionCost]
    subtotal_excl_vat: Decimal
    subtotal_incl_vat: Decimal | None
    total_excl_vat: Decimal
    total_incl_vat: Decimal | None
    limit_excl: Literal["min_price", "max_price"] | None
    limit_incl: Literal["min_price", "max_price"] | None
    notes: list[str]


class DisplayPrice(_Out):
    dimension: Dimension
    element: int
    price_unit: str  # kWh, h or session
    excl_vat: Decimal
    vat: Decimal | None
    incl_vat: Decimal  # = excl_vat when the tariff gives no VAT for it (none applicable)
    incl_vat_per_minute: Decimal | None  # TIME and PARKING_TIME, 4 decimals half-up
    step_size: int


class DisplayPrices(_Out):
    """What a session started at `at` pays right now, for the driver-facing display."""

    tariff_id: str
    currency: str
    at: datetime
    energy: DisplayPrice | None  # per kWh
    time: DisplayPrice | None  # per hour charging
    parking: DisplayPrice | None  # per hour not charging
    flat: DisplayPrice | None  # session fee
    min_price: Price | None
    max_price: Price | None
    alt_text: dict[str, str]


# ---------------------------------------------------------------- small helpers


def _us(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise PricingError(f"naive datetime {dt.isoformat()}: times must be timezone-aware")
    d = dt - EPOCH
    return (d.days * 86400 + d.seconds) * US + d.microseconds


def _dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _zone(tz: str | tzinfo) -> tzinfo:
    if not isinstance(tz, str):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise PricingError(f"unknown timezone {tz!r}") from None


def _dec(x: Fraction | int, places: int = 6, keep: int = 0) -> Decimal:
    """Round half-up to `places` decimals, then drop trailing zeros down to `keep` decimals."""
    n = floor(Fraction(x) * 10**places + Fraction(1, 2))
    while places > keep and n % 10 == 0:
        n //= 10
        places -= 1
    return Decimal(n).scaleb(-places)


def round_money(amount: Fraction | Decimal, currency: str) -> Decimal:
    """Round half-up to the currency's minor unit (cents for most)."""
    places = MINOR_UNITS.get(currency, 2)
    n = floor(Fraction(amount) * 10**places + Fraction(1, 2))
    return Decimal(n).scaleb(-places) if places else Decimal(n)


def _seconds(us: int) -> Decimal:
    return _dec(Fraction(us, US))


# ---------------------------------------------------------------- the energy curve


class _Curve:
    """Energy register as a function of time, clamped at the end of charging.

    Linear between samples and rounded down to whole Wh: floor keeps "energy >= N" true from
    the exact crossing instant on and false before it, so thresholds split consistently.
    """

    def __init__(self, samples: Sequence[MeterSample], t0: int, t_ce: int):
        self.t = [_us(s.at) for s in samples]
        self.e = [int(s.energy_wh) for s in samples]
        self.p = [None if s.power_w is None else Decimal(s.power_w) for s in samples]
        self.c = [None if s.current_a is None else Decimal(s.current_a) for s in samples]
        self.t_ce = t_ce
        self.fixed: dict[int, int] = {}
        self.base = self.register(t0)

    def register(self, t: int) -> int:
        t = min(t, self.t_ce)
        if t in self.fixed:
            return self.fixed[t]
        if not self.t:
            return 0
        i = bisect.bisect_right(self.t, t)
        if i == 0:
            return self.e[0]
        if i == len(self.t):
            return self.e[-1]
        ta, tb, ea, eb = self.t[i - 1], self.t[i], self.e[i - 1], self.e[i]
        return ea + (eb - ea) * (t - ta) // (tb - ta)

    def session_wh(self, t: int) -> int:
        return self.register(t) - self.base

    def held(self, t: int) -> tuple[Decimal | None, Decimal | None]:
        """Power and current at t: the last sampled values (the first ones before any)."""
        if t >= self.t_ce:
            return Decimal(0), Decimal(0)
        if not self.t:
            return None, None
        i = max(bisect.bisect_right(self.t, t) - 1, 0)
        return self.p[i], self.c[i]

    def crossing(self, n_wh: int) -> int | None:
        """First instant the session energy reaches n_wh, or None if it never does."""
        target = self.base + n_wh
        if n_wh <= 0 or not self.t:
            return None
        j = bisect.bisect_left(self.e, target)
        if j == len(self.e) or j == 0:
            return None  # never reached, or already reached before the session started
        ta, tb, ea, eb = self.t[j - 1], self.t[j], self.e[j - 1], self.e[j]
        # Round the instant up so the floor-interpolated register there is >= target.
        t = ta + -(-(target - ea) * (tb - ta) // (eb - ea))
        if t > self.t_ce:
            return None
        self.fixed[t] = target
        return t


# ---------------------------------------------------------------- splitting into periods


def _offset_changes(tz: tzinfo, t0: int, t1: int) -> set[int]:
    """UTC instants (µs) in [t0, t1] where the zone's UTC offset changes (DST)."""
    out: set[int] = set()

    def off(t: int) -> timedelta | None:
        return _dt(t).astimezone(tz).utcoffset()

    step = 6 * 3600 * US  # zones change offset at most once in 6 h
    a = t0
    while a < t1:
        b = min(a + step, t1)
        if off(a) != off(b):
            lo, hi = a, b
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if off(mid) == off(a) else (lo, mid)
            out.add(hi)
        a = b
    return out


def _breakpoints(tariff: Tariff, tz: tzinfo, curve: _Curve, t0: int, t_ce: int, t1: int) -> list:
    pts = {t0, t_ce, t1}
    rs = [el.restrictions for el in tariff.elements if el.restrictions is not None]
    tods = {time(0)} | {t for r in rs for t in (r.start_time, r.end_time) if t is not None}
    day = _dt(t0).astimezone(tz).date() - timedelta(days=1)
    last: date = _dt(t1).astimezone(tz).date() + timedelta(days=1)
    while day <= last:
        for tod in tods:
            for fold in (0, 1):  # both readings of a local time repeated by a DST change
                pts.add(_us(datetime.combine(day, tod, tzinfo=tz).replace(fold=fold)))
        day += timedelta(days=1)
    # A local time that does not exist (spring forward) maps beside the jump: add the jump.
    pts |= _offset_changes(tz, t0, t1)
    for r in rs:
        for d in (r.min_duration, r.max_duration):
            if d is not None:
                pts.add(t0 + d * US)
        for kwh in (r.min_kwh, r.max_kwh):
            if kwh is not None:
                # Energies are whole Wh, so "energy >= 10.0005 kWh" is "energy >= 10001 Wh".
                t = curve.crossing(ceil(kwh * 1000))
                if t is not None:
                    pts.add(t)
    if any(r.needs_power for r in rs):
        pts.update(curve.t)
    return sorted(p for p in pts if t0 <= p <= t1)


def _active(tariff: Tariff, s: MatchState) -> dict[Dimension, tuple[int, PriceComponent]]:
    """Per dimension, the component of the first element that has it and matches."""
    out: dict[Dimension, tuple[int, PriceComponent]] = {}
    for i, el in enumerate(tariff.elements):
        new = [c for c in el.price_components if c.type not in out]
        if new and el.matches(s):
            for c in new:
                out.setdefault(c.type, (i, c))
    return out


@dataclass
class _Period:
    start: int
    end: int
    charging: bool
    active: dict[Dimension, tuple[int, PriceComponent]]
    tariff: int = 0  # index into the schedule
    energy_wh: int = 0


@dataclass
class _Line:
    period: int
    dim: Dimension
    element: int
    comp: PriceComponent
    qty: Fraction
    billed: Fraction


def _signature(p: _Period, ignore_flat: bool) -> tuple[bool, int, dict[Dimension, int]]:
    keep = {d: i for d, (i, _) in p.active.items() if not (ignore_flat and d == Dimension.FLAT)}
    return p.charging, p.tariff, keep


def _split(
    schedule: list[tuple[int, Tariff]], tz: tzinfo, curve: _Curve, t0: int, t_ce: int, t1: int
) -> list:
    """Cut the session into periods; `schedule` is (from µs, tariff), the first from t0."""
    starts = [at for at, _ in schedule]
    pts = sorted(
        {p for _, t in schedule for p in _breakpoints(t, tz, curve, t0, t_ce, t1)} | set(starts)
    )
    periods: list[_Period] = []
    flat_seen = False  # the flat fee is placed once; later FLAT changes cannot be billed
    for a, b in pairwise(pts):
        k = bisect.bisect_right(starts, a) - 1
        tariff = schedule[k][1]
        power, current = curve.held(a)
        state = MatchState(
            local=_dt(a).astimezone(tz),
            energy_wh=curve.session_wh(a),
            elapsed_s=Decimal(a - t0) / US,
            power_w=power,
            current_a=current,
        )
        charging = a < t_ce
        # Only what can be billed in this piece decides whether it starts a new period.
        dims = {Dimension.ENERGY, Dimension.TIME} if charging else {Dimension.PARKING_TIME}
        if not flat_seen:
            dims.add(Dimension.FLAT)
        active = {d: v for d, v in _active(tariff, state).items() if d in dims}
        piece = _Period(a, b, charging, active, k)
        prev = periods[-1] if periods else None
        if prev and _signature(prev, flat_seen) == _signature(piece, flat_seen):
            prev.end = b
        else:
            periods.append(piece)
        flat_seen = flat_seen or Dimension.FLAT in active
    for p in periods:
        p.energy_wh = curve.session_wh(p.end) - curve.session_wh(p.start)
    return periods


# ---------------------------------------------------------------- quantities and money


def _lines(periods: list[_Period]) -> list[_Line]:
    lines: list[_Line] = []
    for k, p in enumerate(periods):
        secs = Fraction(p.end - p.start, US)
        for dim, (i, comp) in p.active.items():
            if dim == Dimension.FLAT:
                qty = Fraction(1)  # _split leaves FLAT active in one period only
            elif dim == Dimension.ENERGY:
                qty = Fraction(p.energy_wh)
            else:  # TIME while charging, PARKING_TIME while not: _split kept only those
                qty = secs
            if qty > 0:
                lines.append(_Line(k, dim, i, comp, qty, qty))
    return lines


def _round_up(lines: list[_Line], dim: Dimension) -> int | None:
    """Round the dimension's total up to the step of its last line; the extra goes there."""
    mine = [ln for ln in lines if ln.dim == dim]
    if not mine or not mine[-1].comp.step_size:
        return None
    step = mine[-1].comp.step_size
    total = sum((ln.qty for ln in mine), Fraction(0))
    mine[-1].billed += ceil(total / step) * step - total
    return step


def _apply_steps(lines: list[_Line]) -> dict[Dimension, int | None]:
    steps = {Dimension.ENERGY: _round_up(lines, Dimension.ENERGY)}
    if any(ln.dim == Dimension.PARKING_TIME for ln in lines):
        steps[Dimension.PARKING_TIME] = _round_up(lines, Dimension.PARKING_TIME)
    else:
        steps[Dimension.TIME] = _round_up(lines, Dimension.TIME)
    return steps


def _excl(ln: _Line) -> Fraction:
    return Fraction(ln.comp.price) * ln.billed / UNITS[ln.dim][2]


def _incl(ln: _Line) -> Fraction:
    x = _excl(ln)
    if ln.comp.vat is None:
        return x  # OCPI 2.2.1: vat omitted = no VAT applicable to this component
    return x * (1 + Fraction(ln.comp.vat) / 100)


def _price_line(ln: _Line, cur: str) -> PriceLine:
    keep = MINOR_UNITS.get(cur, 2)
    return PriceLine(
        dimension=ln.dim,
        element=ln.element,
        quantity=_dec(ln.qty),
        billed_quantity=_dec(ln.billed),
        unit_price=ln.comp.price,
        vat=ln.comp.vat,
        excl_vat=_dec(_excl(ln), keep=keep),
        incl_vat=_dec(_incl(ln), keep=keep),
    )


def _dimension(dim: Dimension, lines: list[_Line], step: int | None, cur: str) -> DimensionCost:
    excl = round_money(sum((_excl(ln) for ln in lines), Fraction(0)), cur)
    incl = round_money(sum((_incl(ln) for ln in lines), Fraction(0)), cur)
    prices = {ln.comp.price for ln in lines}
    vats = {ln.comp.vat for ln in lines}
    return DimensionCost(
        dimension=dim,
        unit=UNITS[dim][0],
        price_unit=UNITS[dim][1],
        quantity=_dec(sum((ln.qty for ln in lines), Fraction(0))),
        billed_quantity=_dec(sum((ln.billed for ln in lines), Fraction(0))),
        step_size=step,
        unit_price=prices.pop() if len(prices) == 1 else None,
        vat=vats.pop() if len(vats) == 1 else None,
        vat_mixed=len(vats) > 1,
        excl_vat=excl,
        vat_amount=incl - excl,
        incl_vat=incl,
    )


def _bound(
    total: Decimal | None, lo: Decimal | None, hi: Decimal | None, cur: str
) -> tuple[Decimal | None, Literal["min_price", "max_price"] | None]:
    if total is None:
        return None, None
    if lo is not None and total < round_money(lo, cur):
        return round_money(lo, cur), "min_price"
    if hi is not None and total > round_money(hi, cur):
        return round_money(hi, cur), "max_price"
    return total, None


# ---------------------------------------------------------------- public API


def price_session(
    tariff: Tariff,
    session: Session,
    *,
    tz: str | tzinfo,
    changes: Sequence[tuple[datetime, Tariff]] = (),
    in_force_only: bool = True,
) -> CostResult:
    """Price a session timeline; `tz` is the station's timezone for local-time restrictions.

    `changes`: (from, tariff) when the station's tariff changed mid-session; each change
    starts a new period priced by the new tariff (step_size still once per dimension over the
    session, FLAT once, min/max price from the tariff the session started with).
    `in_force_only`: refuse a tariff whose validity period does not hold the session start
    (False: price by it anyway, e.g. the session engine, which flags the record)."""
    zone = _zone(tz)
    t0, t_ce, t1 = _us(session.start), _us(session.charging_end), _us(session.end)
    if not t0 <= t_ce <= t1:
        raise PricingError("need start <= charging_end <= end")
    _check_samples(session.samples)
    if in_force_only and not tariff.is_valid_at(session.start):
        raise PricingError(f"tariff {tariff.id} is not in force at {session.start.isoformat()}")
    schedule = [(t0, tariff)]
    for at, t in sorted(changes, key=lambda c: _us(c[0])):
        if t.currency != tariff.currency:
            raise PricingError(
                f"tariff {t.id} is in {t.currency}, the session in {tariff.currency}"
            )
        if t0 < _us(at) < t1:
            schedule.append((_us(at), t))
    curve = _Curve(session.samples, t0, t_ce)
    periods = _split(schedule, zone, curve, t0, t_ce, t1)
    lines = _lines(periods)
    steps = _apply_steps(lines)
    cur = tariff.currency
    dims = [
        _dimension(d, [ln for ln in lines if ln.dim == d], steps.get(d), cur)
        for d in (Dimension.ENERGY, Dimension.TIME, Dimension.PARKING_TIME, Dimension.FLAT)
        if any(ln.dim == d for ln in lines)
    ]
    sub_excl = sum((d.excl_vat for d in dims), round_money(0, cur))
    sub_incl: Decimal | None = sum((d.incl_vat for d in dims), round_money(0, cur))
    lo, hi = tariff.min_price, tariff.max_price
    total_excl, limit_excl = _bound(sub_excl, lo and lo.excl_vat, hi and hi.excl_vat, cur)
    total_incl, limit_incl = _bound(sub_incl, lo and lo.incl_vat, hi and hi.incl_vat, cur)
    notes = []
    if limit_excl and total_incl is not None and getattr(tariff, limit_excl).incl_vat is None:
        # The excl. total was bounded but there is no incl. bound to match it.
        total_incl = None
        notes.append(f"{limit_excl} applied but has no incl_vat: total incl. VAT unknown")
    if any(ln.comp.vat is None and _excl(ln) for ln in lines):
        notes.append("a billed price component has no vat: no VAT applicable to it (OCPI)")
    by_period: dict[int, list[PriceLine]] = {}
    for ln in lines:
        by_period.setdefault(ln.period, []).append(_price_line(ln, cur))
    return CostResult(
        tariff_id=tariff.id,
        currency=cur,
        timezone=str(zone),
        start=_dt(t0),
        charging_end=_dt(t_ce),
        end=_dt(t1),
        energy_wh=curve.session_wh(t_ce),
        charging_s=_seconds(t_ce - t0),
        parking_s=_seconds(t1 - t_ce),
        periods=[
            Period(
                tariff_id=schedule[p.tariff][1].id,
                start=_dt(p.start),
                end=_dt(p.end),
                charging=p.charging,
                energy_wh=p.energy_wh,
                duration_s=_seconds(p.end - p.start),
                elements={d: i for d, (i, _) in p.active.items()},
                lines=by_period.get(k, []),
            )
            for k, p in enumerate(periods)
        ],
        dimensions=dims,
        subtotal_excl_vat=sub_excl,
        subtotal_incl_vat=sub_incl,
        total_excl_vat=total_excl,
        total_incl_vat=total_incl,
        limit_excl=limit_excl,
        limit_incl=limit_incl,
        notes=notes,
    )


def _check_samples(samples: Sequence[MeterSample]) -> None:
    for k, (a, b) in enumerate(pairwise(samples), start=1):
        if _us(b.at) < _us(a.at):
            raise PricingError(f"sample {k} is earlier than sample {k - 1}")
        if b.energy_wh < a.energy_wh:
            # A register that goes back is a meter reset or swap: a person must look at it.
            raise PricingError(
                f"sample {k}: energy register went back ({b.energy_wh} < {a.energy_wh})"
            )


def running_cost(
    tariff: Tariff,
    start: datetime,
    samples: Sequence[MeterSample],
    *,
    tz: str | tzinfo,
    now: datetime | None = None,
    charging_end: datetime | None = None,
) -> CostResult:
    """Cost so far of an ongoing session, as if it ended `now` (default: the last sample).

    Step rounding applies as for a session ending now: this is what the driver would pay.
    Pass `charging_end` once the car has stopped charging, so the rest is billed as parking.
    """
    now = now or (samples[-1].at if samples else start)
    ce = now if charging_end is None else min(charging_end, now)
    return price_session(tariff, Session(start, ce, now, samples), tz=tz)


def quote(
    tariff: Tariff,
    energy_wh: int,
    start: datetime,
    end: datetime,
    parking_s: int | Decimal = 0,
    *,
    tz: str | tzinfo,
    max_power_w: Decimal | int | None = None,
    current_a: Decimal | int | None = None,
) -> CostResult:
    """Price a planned session: `energy_wh` delivered evenly over [start, end), then parking.

    Power-restricted elements are matched against `max_power_w` (held for the whole session)
    or, when not given, against the average power.
    """
    if energy_wh < 0 or parking_s < 0:
        raise PricingError("energy_wh and parking_s must not be negative")
    if end < start or (end == start and energy_wh > 0):
        raise PricingError("end must be after start")
    secs = Fraction(_us(end) - _us(start), US)
    if max_power_w is not None:
        power = Decimal(max_power_w)
    else:
        power = _dec(Fraction(energy_wh * 3600) / secs, 3) if secs else Decimal(0)
    samples = [
        MeterSample(start, 0, power, current_a),
        MeterSample(end, energy_wh, power, current_a),
    ]
    unplug = end + timedelta(microseconds=int(Decimal(parking_s) * US))
    return price_session(tariff, Session(start, end, unplug, samples), tz=tz)


def display_prices(
    tariff: Tariff,
    at: datetime,
    *,
    tz: str | tzinfo,
    power_w: Decimal | int | None = None,
    current_a: Decimal | int | None = None,
) -> DisplayPrices:
    """The prices that apply to a session starting at `at`, incl. VAT, for the display (AFIR).

    Each dimension shows its first matching element for a fresh session (0 kWh, 0 s elapsed)
    at `at`; prices that start later (after some kWh, at night) are not shown here.
    """
    state = MatchState(
        local=at.astimezone(_zone(tz)),
        energy_wh=0,
        elapsed_s=Decimal(0),
        power_w=None if power_w is None else Decimal(power_w),
        current_a=None if current_a is None else Decimal(current_a),
    )
    active = _active(tariff, state)

    def show(dim: Dimension) -> DisplayPrice | None:
        if dim not in active:
            return None
        i, c = active[dim]
        incl = c.price if c.vat is None else c.price * (1 + c.vat / 100)
        per_min = None
        if dim in (Dimension.TIME, Dimension.PARKING_TIME):
            per_min = (incl / 60).quantize(Decimal("0.0001"), ROUND_HALF_UP)
        return DisplayPrice(
            dimension=dim,
            element=i,
            price_unit=UNITS[dim][1],
            excl_vat=c.price,
            vat=c.vat,
            incl_vat=incl,
            incl_vat_per_minute=per_min,
            step_size=c.step_size,
        )

    return DisplayPrices(
        tariff_id=tariff.id,
        currency=tariff.currency,
        at=at.astimezone(UTC),
        energy=show(Dimension.ENERGY),
        time=show(Dimension.TIME),
        parking=show(Dimension.PARKING_TIME),
        flat=show(Dimension.FLAT),
        min_price=tariff.min_price,
        max_price=tariff.max_price,
        alt_text={t.language: t.text for t in tariff.tariff_alt_text},
    )
