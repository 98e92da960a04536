"""OCPP 1.6 smart charging, pure logic: charging profile models, checks and the limit computation.

One function, `composite_schedule`, turns the installed profiles into the limit over time of one
connector; GetCompositeSchedule answers with it and the live limiter (agent/ocpp/limiter.py
applies its first period to the EVSE), so what the CSMS is told is what the EVSE offers.

Interpretations (OCPP 1.6 edition 2, §3.13 "Smart Charging", §5.16 SetChargingProfile, §7.9ff):

- Stacking (§3.13.2): within one purpose, the profile with the highest stackLevel whose
  validity window (validFrom ≤ t < validTo) AND whose schedule (start … start + duration)
  cover t prevails; where its schedule has ended, the next stack level below takes over.
  TxDefaultProfiles of the connector and of connector 0 form one stack; on equal stackLevel
  the connector's own wins (§3.13.1 "replaced only for that specific connector").
- A TxProfile (only during a transaction, matching its transactionId when it names one)
  overrides the TxDefaultProfile (§3.13.1).
- ChargePointMaxProfile (connector 0 only) limits the whole charge point (§3.13.1 "limit the
  power or current to be shared by all connectors"): each connector gets an equal share, the
  station limit divided by the number of connectors in a transaction (counting the connector
  asked about). The connector limit is min(TxProfile or TxDefaultProfile, that share).
  For connector 0 the composite is min(ChargePointMax, the sum of every connector's limit).
- Recurring profiles restart every 24 h (Daily) or 7 × 24 h (Weekly) from startSchedule.
- Relative profiles start with the transaction; without one, at the start of the requested
  window (what a transaction starting now would get).
- W → A: amps per phase = W / (230 V × phases), 230 V being the IEC 60038 nominal phase
  voltage of LV grids; phases = the period's numberPhases (default 3, §7.13) capped by the
  connector's configured phases. A → W for GetCompositeSchedule in W the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

NOMINAL_VOLTAGE_V = 230.0
DEFAULT_PHASES = 3  # OCPP 1.6 §7.13 ChargingSchedulePeriod.numberPhases: absent = 3
_RECURRENCE = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}


class Purpose(StrEnum):
    """ChargingProfilePurposeType."""

    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(StrEnum):
    """ChargingProfileKindType."""

    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    """RecurrencyKindType."""

    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    """ChargingRateUnitType."""

    AMPS = "A"
    WATTS = "W"


def _utc(v: datetime | None) -> datetime | None:
    # A time without an offset is taken as UTC (OCPP times are UTC).
    if v is None or v.tzinfo is not None:
        return v.astimezone(UTC) if v is not None else None
    return v.replace(tzinfo=UTC)


UtcTime = Annotated[datetime, AfterValidator(_utc)]


class _Wire(BaseModel):
    # camelCase on the wire and in the store; the `ocpp` library hands handlers snake_case.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


#: The largest limit a profile may set, A or W (a CSMS's number before any arithmetic): 10 MW
#: covers a site's ChargePointMaxProfile; anything above is a broken or hostile CSMS.
MAX_RATE = 10_000_000
#: The longest schedule (s): ten years keeps every date computed from it inside datetime.
MAX_SCHEDULE_S = 10 * 366 * 86_400
#: Ids are stored as SQLite integers (64-bit signed).
MAX_ID = 2**63 - 1


class SchedulePeriod(_Wire):
    """ChargingSchedulePeriod: from `start_period` seconds after the schedule's start."""

    start_period: int = Field(ge=0, le=MAX_SCHEDULE_S)
    limit: float = Field(ge=0, le=MAX_RATE, allow_inf_nan=False)
    number_phases: int | None = Field(default=None, ge=1, le=3)


class ChargingSchedule(_Wire):
    """ChargingSchedule."""

    duration: int | None = Field(default=None, ge=0, le=MAX_SCHEDULE_S)
    start_schedule: UtcTime | None = None
    charging_rate_unit: RateUnit
    charging_schedule_period: list[SchedulePeriod] = Field(min_length=1)
    min_charging_rate: float | None = Field(default=None, ge=0, le=MAX_RATE, allow_inf_nan=False)

    @model_validator(mode="after")
    def _periods_in_order(self) -> ChargingSchedule:
        starts = [p.start_period for p in self.charging_schedule_period]
        if starts[0] != 0:
            raise ValueError("the first chargingSchedulePeriod must have startPeriod 0")
        if any(b <= a for a, b in pairwise(starts)):
            raise ValueError("chargingSchedulePeriod startPeriod values must increase")
        return self


class ChargingProfile(_Wire):
    """ChargingProfile (csChargingProfiles of SetChargingProfile)."""

    charging_profile_id: int = Field(ge=-MAX_ID, le=MAX_ID)
    transaction_id: int | None = Field(default=None, ge=-MAX_ID, le=MAX_ID)
    stack_level: int = Field(ge=0, le=MAX_ID)
    charging_profile_purpose: Purpose
    charging_profile_kind: Kind
    recurrency_kind: Recurrency | None = None
    valid_from: UtcTime | None = None
    valid_to: UtcTime | None = None
    charging_schedule: ChargingSchedule

    @model_validator(mode="after")
    def _consistent(self) -> ChargingProfile:
        kind, sched = self.charging_profile_kind, self.charging_schedule
        if kind == Kind.RECURRING and (self.recurrency_kind is None or not sched.start_schedule):
            raise ValueError("a Recurring profile needs recurrencyKind and startSchedule")
        if kind != Kind.RECURRING and self.recurrency_kind is not None:
            raise ValueError(f"recurrencyKind is only for Recurring profiles, not {kind}")
        if kind == Kind.RELATIVE and sched.start_schedule is not None:
            raise ValueError("a Relative profile has no startSchedule (it starts with the tx)")
        if self.transaction_id is not None and self.charging_profile_purpose != Purpose.TX:
            raise ValueError("only a TxProfile may name a transactionId")
        if self.valid_from and self.valid_to and self.valid_to <= self.valid_from:
            raise ValueError("validTo must be after validFrom")
        if kind == Kind.RECURRING:
            period = _RECURRENCE[self.recurrency_kind]  # type: ignore[index]
            if sched.duration is not None and sched.duration > period.total_seconds():
                raise ValueError(f"duration {sched.duration} s exceeds the {period} recurrence")
        return self

    def wire(self) -> dict:
        """The profile as JSON (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_profile(data: dict) -> ChargingProfile:
    """A ChargingProfile from the wire; ValueError with the first problem, readable."""
    try:
        return ChargingProfile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "chargingProfile"
        raise ValueError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


@dataclass(frozen=True)
class Installed:
    """A profile installed on a connector (0: the charge point)."""

    connector_id: int
    profile: ChargingProfile

    @property
    def purpose(self) -> Purpose:
        return self.profile.charging_profile_purpose

    @property
    def stack_level(self) -> int:
        return self.profile.stack_level


@dataclass(frozen=True)
class Tx:
    """A running transaction on a connector (transaction_id None: not confirmed yet)."""

    connector_id: int
    started: datetime
    transaction_id: int | None = None


@dataclass(frozen=True)
class ConnectorSpec:
    """What the conversion and the caps need of a connector."""

    phases: int
    max_current_a: float


@dataclass(frozen=True)
class Limits:
    """The station's limits on profiles (the Smart Charging configuration keys)."""

    max_stack_level: int = 8
    allowed_units: frozenset[RateUnit] = frozenset({RateUnit.AMPS, RateUnit.WATTS})
    max_periods: int = 24
    max_installed: int = 16


@dataclass(frozen=True)
class Station:
    """The state the limit depends on besides the profiles."""

    connectors: dict[int, ConnectorSpec]
    txs: dict[int, Tx]


def normalized(profile: ChargingProfile, received: datetime) -> ChargingProfile:
    """An Absolute profile without startSchedule starts when it was received."""
    if (
        profile.charging_profile_kind == Kind.ABSOLUTE
        and not profile.charging_schedule.start_schedule
    ):
        sched = profile.charging_schedule.model_copy(update={"start_schedule": received})
        return profile.model_copy(update={"charging_schedule": sched})
    return profile


def check_profile(
    profile: ChargingProfile,
    connector_id: int,
    installed: Sequence[Installed],
    station: Station,
    limits: Limits,
) -> str | None:
    """Why SetChargingProfile must be Rejected (None: it may be installed)."""
    purpose = profile.charging_profile_purpose
    if connector_id != 0 and connector_id not in station.connectors:
        return f"no connector {connector_id}"
    if purpose == Purpose.CHARGE_POINT_MAX and connector_id != 0:
        return "a ChargePointMaxProfile is set on connector 0 only"
    if purpose == Purpose.TX:
        if connector_id == 0:
            return "a TxProfile is set on a connector (> 0), not on connector 0"
        tx = station.txs.get(connector_id)
        if tx is None:
            return f"a TxProfile needs a transaction on connector {connector_id}; none runs"
        if profile.transaction_id is not None and tx.transaction_id not in (
            None,
            profile.transaction_id,
        ):
            return (
                f"transactionId {profile.transaction_id} is not the transaction on connector "
                f"{connector_id}"
            )
    if profile.stack_level > limits.max_stack_level:
        level, most = profile.stack_level, limits.max_stack_level
        return f"stackLevel {level} > ChargeProfileMaxStackLevel {most}"
    unit = profile.charging_schedule.charging_rate_unit
    if unit not in limits.allowed_units:
        return f"chargingRateUnit {unit} not in ChargingScheduleAllowedChargingRateUnit"
    n = len(profile.charging_schedule.charging_schedule_period)
    if n > limits.max_periods:
        return f"{n} periods > ChargingScheduleMaxPeriods {limits.max_periods}"
    kept = [i for i in installed if not replaces(profile, connector_id, i)]
    if len(kept) + 1 > limits.max_installed:
        return f"MaxChargingProfilesInstalled ({limits.max_installed}) reached"
    return None


def replaces(new: ChargingProfile, connector_id: int, old: Installed) -> bool:
    """§5.16.2: a new profile replaces one with the same id, or with the same stackLevel and
    purpose on the same connector."""
    p = old.profile
    return p.charging_profile_id == new.charging_profile_id or (
        old.connector_id == connector_id
        and p.stack_level == new.stack_level
        and p.charging_profile_purpose == new.charging_profile_purpose
    )


def matches_clear(
    inst: Installed,
    profile_id: int | None,
    connector_id: int | None,
    purpose: Purpose | None,
    stack_level: int | None,
) -> bool:
    """ClearChargingProfile's filter (§5.3): by id alone, or by every criterion given."""
    if profile_id is not None:
        return inst.profile.charging_profile_id == profile_id
    return (
        (connector_id is None or inst.connector_id == connector_id)
        and (purpose is None or inst.purpose == purpose)
        and (stack_level is None or inst.stack_level == stack_level)
    )


# ---------------------------------------------------------------------- evaluation


def _relative_start(conn: int, station: Station, origin: datetime) -> datetime:
    """Where a Relative schedule starts: the connector's transaction, else the window start."""
    tx = station.txs.get(conn) if conn else None
    return tx.started if tx is not None else origin


def _anchor(
    inst: Installed, conn: int, t: datetime, station: Station, origin: datetime
) -> datetime | None:
    """When the schedule's current run started at `t` (None: it has not started)."""
    p = inst.profile
    kind = p.charging_profile_kind
    if kind == Kind.RELATIVE:
        start = _relative_start(conn, station, origin)
        return start if t >= start else None
    first = p.charging_schedule.start_schedule
    assert first is not None  # normalized() / the model validator saw to it
    if t < first:
        return None
    if kind == Kind.ABSOLUTE:
        return first
    period = _RECURRENCE[p.recurrency_kind]  # type: ignore[index]
    return first + period * ((t - first) // period)


@dataclass(frozen=True)
class _Value:
    limit: float
    unit: RateUnit
    phases: int | None


def _value(
    inst: Installed, conn: int, t: datetime, station: Station, origin: datetime
) -> _Value | None:
    """The profile's limit for connector `conn` at `t`; None when it is not valid or its
    schedule is not running."""
    p = inst.profile
    if (p.valid_from and t < p.valid_from) or (p.valid_to and t >= p.valid_to):
        return None
    anchor = _anchor(inst, conn, t, station, origin)
    if anchor is None:
        return None
    offset = (t - anchor).total_seconds()
    sched = p.charging_schedule
    if sched.duration is not None and offset >= sched.duration:
        return None
    current = sched.charging_schedule_period[0]
    for period in sched.charging_schedule_period:
        if period.start_period > offset:
            break
        current = period
    return _Value(current.limit, sched.charging_rate_unit, current.number_phases)


def _applies(inst: Installed, connector_id: int, station: Station) -> bool:
    """Is the profile one of the connector's (CP max: via the share, not here)?"""
    if inst.purpose == Purpose.TX_DEFAULT:
        return inst.connector_id in (0, connector_id)
    if inst.purpose == Purpose.TX:
        tx = station.txs.get(connector_id)
        if inst.connector_id != connector_id or tx is None:
            return False
        # A transaction whose id the CSMS has not confirmed yet takes any TxProfile set on it.
        wanted = inst.profile.transaction_id
        return wanted is None or tx.transaction_id is None or wanted == tx.transaction_id
    return False


def _top(
    candidates: Iterable[Installed], conn: int, t: datetime, station: Station, origin: datetime
) -> _Value | None:
    """The prevailing value of one stack: highest stackLevel running at `t`; on a tie the
    connector-specific profile beats connector 0's."""
    ranked = sorted(candidates, key=lambda i: (i.stack_level, i.connector_id != 0), reverse=True)
    for inst in ranked:
        v = _value(inst, conn, t, station, origin)
        if v is not None:
            return v
    return None


def _to_amps(v: _Value, connector_phases: int, share: int = 1) -> tuple[float, int]:
    """A profile value as amps per phase (and the phases it assumes), divided by `share`."""
    phases = min(v.phases or DEFAULT_PHASES, connector_phases)
    amps = v.limit if v.unit == RateUnit.AMPS else v.limit / (NOMINAL_VOLTAGE_V * phases)
    return amps / share, phases


def _cp_max(profiles: Iterable[Installed]) -> list[Installed]:
    return [i for i in profiles if i.purpose == Purpose.CHARGE_POINT_MAX]


def _connector_limit(
    profiles: Sequence[Installed],
    connector_id: int,
    t: datetime,
    station: Station,
    origin: datetime,
) -> tuple[float | None, int | None]:
    """(amps per phase or None for "no profile limits it", phases) of one connector at t."""
    spec = station.connectors[connector_id]
    own = [i for i in profiles if _applies(i, connector_id, station)]
    value = _top(
        [i for i in own if i.purpose == Purpose.TX], connector_id, t, station, origin
    ) or _top([i for i in own if i.purpose == Purpose.TX_DEFAULT], connector_id, t, station, origin)
    amps, phases = (None, None) if value is None else _to_amps(value, spec.phases)
    cp_max = _top(_cp_max(profiles), 0, t, station, origin)
    if cp_max is not None:
        sharing = len(set(station.txs) | {connector_id})
        share, share_phases = _to_amps(cp_max, spec.phases, sharing)
        if amps is None or share < amps:
            amps, phases = share, phases or share_phases
    return amps, phases


def _station_limit(
    profiles: Sequence[Installed], t: datetime, station: Station, origin: datetime
) -> tuple[float | None, int | None]:
    """Connector 0: min(ChargePointMax, the sum of the connectors' limits or maxima)."""
    phases = max((c.phases for c in station.connectors.values()), default=DEFAULT_PHASES)
    total = 0.0
    for cid, spec in station.connectors.items():
        amps, _ = _connector_limit(
            [i for i in profiles if i.purpose != Purpose.CHARGE_POINT_MAX], cid, t, station, origin
        )
        total += spec.max_current_a if amps is None else min(amps, spec.max_current_a)
    cp_max = _top(_cp_max(profiles), 0, t, station, origin)
    if cp_max is None:
        return (total if station.connectors else None), phases
    amps, cp_phases = _to_amps(cp_max, phases)
    return min(amps, total) if station.connectors else amps, cp_phases


def _breaks(
    inst: Installed, conn: int, start: datetime, end: datetime, station: Station
) -> set[datetime]:
    """Every instant in (start, end) where the profile's value for `conn` may change."""
    p = inst.profile
    out = {t for t in (p.valid_from, p.valid_to) if t is not None}
    sched = p.charging_schedule
    offsets = [timedelta(seconds=q.start_period) for q in sched.charging_schedule_period]
    if sched.duration is not None:
        offsets.append(timedelta(seconds=sched.duration))
    kind = p.charging_profile_kind
    if kind == Kind.RELATIVE:
        anchors = [_relative_start(conn, station, start)]
    elif kind == Kind.ABSOLUTE:
        anchors = [sched.start_schedule]
    else:
        every = _RECURRENCE[p.recurrency_kind]  # type: ignore[index]
        first = sched.start_schedule
        assert first is not None
        k = max(0, (start - first) // every)
        anchors = []
        while first + every * k < end:
            anchors.append(first + every * k)
            k += 1
    for a in anchors:
        assert a is not None
        out.update(a + o for o in offsets)
    return {t for t in out if start < t < end}


@dataclass(frozen=True)
class Step:
    """From `at` on (until the next step), the limit is `amps` per phase on `phases`."""

    at: datetime
    amps: float | None  # None: no profile limits the connector
    phases: int | None


def limit_timeline(
    profiles: Sequence[Installed],
    connector_id: int,
    start: datetime,
    end: datetime,
    station: Station,
) -> list[Step]:
    """The connector's (0: the charge point's) limit from `start` to `end`, as steps.

    The first step is at `start`; equal adjacent steps are merged. GetCompositeSchedule
    formats these steps; the live limiter applies the first and wakes at the second.
    """
    conns = [connector_id] if connector_id else [0, *station.connectors]
    instants = {start}
    for inst in profiles:
        for conn in conns:
            instants |= _breaks(inst, conn, start, end, station)
    out: list[Step] = []
    for t in sorted(instants):
        if connector_id == 0:
            amps, phases = _station_limit(profiles, t, station, start)
        else:
            amps, phases = _connector_limit(profiles, connector_id, t, station, start)
        if not out or (out[-1].amps, out[-1].phases) != (amps, phases):
            out.append(Step(t, amps, phases))
    return out


def in_unit(amps: float, unit: RateUnit, phases: int) -> float:
    """A per-phase current in the requested unit, rounded to the 0.1 the schema allows."""
    value = amps if unit == RateUnit.AMPS else amps * NOMINAL_VOLTAGE_V * phases
    return round(value, 1)


def schedule_periods(
    steps: Sequence[Step], unit: RateUnit, max_amps: float, phases: int
) -> list[dict]:
    """Steps as ChargingSchedulePeriods (snake_case, as the `ocpp` library sends them).

    Offsets count whole seconds from the first step; `max_amps` (the connector's rating)
    stands where no profile limits and caps the rest; `phases` (the connector's) where a step
    names none.
    """
    out: list[dict] = []
    for step in steps:
        amps = max_amps if step.amps is None else min(step.amps, max_amps)
        n = step.phases or phases
        period = {
            "start_period": int((step.at - steps[0].at).total_seconds()),
            "limit": in_unit(amps, unit, n),
            "number_phases": n,
        }
        if out and out[-1]["start_period"] == period["start_period"]:
            out.pop()  # a sub-second step: the later value holds for the whole second
        if out and {**out[-1], "start_period": 0} == {**period, "start_period": 0}:
            continue
        out.append(period)
    return out
