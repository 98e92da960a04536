"""OCPI 2.2.1 Tariff objects as pydantic models, loaded from JSON or TOML files.

Every number that is money or a threshold is a `Decimal`: JSON is parsed with
`parse_float=Decimal` and TOML with `parse_float=Decimal`, so a price never passes through a
binary float; a float handed in from Python code is converted through `str()`.

Errors name the file, the field path and the problem, e.g.
`night.json: elements[1].price_components[0].price: must be >= 0, got -0.1`.

Restrictions are evaluated by `TariffRestrictions.matches` against a `MatchState` (local
wall-clock time, session energy, elapsed time, power, current); the semantics chosen where
OCPI 2.2.1 is loose are written there.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)


class TariffError(ValueError):
    """The tariff file is invalid; `problems` lists every (field path, message) found."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {path}: {msg}" for path, msg in problems))


class Dimension(StrEnum):
    """OCPI TariffDimensionType: what a price component charges for."""

    ENERGY = "ENERGY"  # per kWh, step in Wh
    FLAT = "FLAT"  # once per session
    PARKING_TIME = "PARKING_TIME"  # per hour not charging, step in s
    TIME = "TIME"  # per hour charging, step in s


class DayOfWeek(StrEnum):
    MONDAY = "MONDAY"
    TUESDAY = "TUESDAY"
    WEDNESDAY = "WEDNESDAY"
    THURSDAY = "THURSDAY"
    FRIDAY = "FRIDAY"
    SATURDAY = "SATURDAY"
    SUNDAY = "SUNDAY"


WEEKDAYS = list(DayOfWeek)  # index = datetime.weekday()


def _no_float(v: Any) -> Any:
    # A float reaching here came from Python code, not from our parsers; str() keeps the
    # digits the author wrote (0.1 -> "0.1") instead of the binary expansion.
    return Decimal(str(v)) if isinstance(v, float) else v


def _hhmm(v: Any) -> Any:
    """OCPI times of day are "HH:MM" strings; TOML may also give a time value."""
    if isinstance(v, time):
        if v.second or v.microsecond or v.tzinfo:
            raise ValueError("must be a local time of day HH:MM without seconds or offset")
        return v
    if isinstance(v, str):
        if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", v):
            raise ValueError(f"must be HH:MM (00:00..23:59), got {v!r}")
        return time(int(v[:2]), int(v[3:]))
    raise ValueError(f"must be HH:MM, got {v!r}")


def _utc(v: Any) -> Any:
    # OCPI: "the absence of the timezone designator implies a UTC timestamp".
    if isinstance(v, str):
        v = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if isinstance(v, datetime) and v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return v


Num = Annotated[Decimal, BeforeValidator(_no_float), Field(ge=0)]
Money = Num
HHMM = Annotated[
    time, BeforeValidator(_hhmm), PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str)
]
UtcDateTime = Annotated[datetime, BeforeValidator(_utc)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Model):
    """OCPI Price: an amount excl. VAT and, optionally, incl. VAT."""

    excl_vat: Money = Field(validation_alias=AliasChoices("excl_vat", "price_excl_vat"))
    incl_vat: Money | None = Field(
        default=None, validation_alias=AliasChoices("incl_vat", "price_incl_vat")
    )

    @model_validator(mode="after")
    def _incl_not_below_excl(self) -> Price:
        if self.incl_vat is not None and self.incl_vat < self.excl_vat:
            raise ValueError(f"incl_vat {self.incl_vat} is below excl_vat {self.excl_vat}")
        return self


class DisplayText(_Model):
    language: str = Field(min_length=2, max_length=2)
    text: str = Field(max_length=512)


class PriceComponent(_Model):
    """One priced dimension of a tariff element; `price` is per unit, excl. VAT."""

    type: Dimension
    price: Money
    # None = omitted: "no VAT is applicable" (OCPI 2.2.1), which the spec keeps apart from
    # 0 %; either way incl. VAT = excl. VAT for this component.
    vat: Annotated[Decimal, BeforeValidator(_no_float), Field(ge=0, le=100)] | None = None
    # Wh for ENERGY, seconds for TIME/PARKING_TIME, ignored for FLAT; 0 is read as "no rounding".
    step_size: int = Field(default=1, ge=0)


@dataclass(frozen=True)
class MatchState:
    """What a restriction is evaluated against, at one instant of a session."""

    local: datetime  # wall-clock time in the station's timezone
    energy_wh: int  # energy of this session so far
    elapsed_s: Decimal  # time since the session started (charging and parking)
    power_w: Decimal | None  # None = unknown
    current_a: Decimal | None  # sum over phases; None = unknown


class TariffRestrictions(_Model):
    """When an element applies. All given restrictions must hold (they are ANDed)."""

    start_time: HHMM | None = None
    end_time: HHMM | None = None
    start_date: date | None = None
    end_date: date | None = None
    min_kwh: Num | None = None
    max_kwh: Num | None = None
    min_current: Num | None = None
    max_current: Num | None = None
    min_power: Num | None = None  # kW
    max_power: Num | None = None  # kW
    min_duration: int | None = Field(default=None, ge=0)  # seconds
    max_duration: int | None = Field(default=None, ge=0)  # seconds
    day_of_week: list[DayOfWeek] = Field(default_factory=list)
    reservation: Literal["RESERVATION", "RESERVATION_EXPIRES"] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> TariffRestrictions:
        if self.start_time is not None and self.start_time == self.end_time:
            # A zero-length window is either "never" or "always"; refuse to guess.
            raise ValueError("end_time: equals start_time; omit both for all day")
        pairs = [
            ("start_date", "end_date", "end_date is exclusive: must be after start_date"),
            ("min_kwh", "max_kwh", "must be greater than min_kwh"),
            ("min_current", "max_current", "must be greater than min_current"),
            ("min_power", "max_power", "must be greater than min_power"),
            ("min_duration", "max_duration", "must be greater than min_duration"),
        ]
        for lo, hi, msg in pairs:
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and b <= a:
                raise ValueError(f"{hi}: {msg} ({b} <= {a})")
        return self

    @property
    def needs_power(self) -> bool:
        """True when matching depends on instantaneous power or current."""
        return any(
            v is not None
            for v in (self.min_power, self.max_power, self.min_current, self.max_current)
        )

    def matches(self, s: MatchState) -> bool:
        """Does this restriction set hold at `s`?

        Chosen semantics: lower bounds are inclusive and upper bounds exclusive (min_kwh,
        min_power, min_current, min_duration, start_time, start_date include the bound;
        max_*, end_time and end_date exclude it), so adjacent elements meet without a gap or
        an overlap. A time window with start_time > end_time wraps midnight. day_of_week is
        the local weekday of the instant itself (02:00 on Saturday is SATURDAY even inside a
        window that began on Friday night). A power or current bound never matches an unknown
        (None) measurement.
        """
        tod = s.local.time().replace(tzinfo=None)
        st, et = self.start_time, self.end_time
        if st is not None and et is not None:
            inside = st <= tod < et if st < et else (tod >= st or tod < et)
            if not inside:
                return False
        elif (st is not None and tod < st) or (et is not None and tod >= et):
            return False  # a one-sided window: from start_time, or until end_time
        day = s.local.date()
        if self.start_date is not None and day < self.start_date:
            return False
        if self.end_date is not None and day >= self.end_date:
            return False
        if self.day_of_week and WEEKDAYS[day.weekday()] not in self.day_of_week:
            return False
        if self.min_kwh is not None and s.energy_wh < self.min_kwh * 1000:
            return False
        if self.max_kwh is not None and s.energy_wh >= self.max_kwh * 1000:
            return False
        if self.min_duration is not None and s.elapsed_s < self.min_duration:
            return False
        if self.max_duration is not None and s.elapsed_s >= self.max_duration:
            return False
        return _within(s.power_w, self.min_power, self.max_power, Decimal(1000)) and _within(
            s.current_a, self.min_current, self.max_current, Decimal(1)
        )


def _within(value: Decimal | None, lo: Decimal | None, hi: Decimal | None, scale: Decimal) -> bool:
    if lo is None and hi is None:
        return True
    if value is None:
        return False
    return (lo is None or value >= lo * scale) and (hi is None or value < hi * scale)


class TariffElement(_Model):
    price_components: list[PriceComponent] = Field(min_length=1)
    restrictions: TariffRestrictions | None = None

    @model_validator(mode="after")
    def _reservation_dims(self) -> TariffElement:
        r = self.restrictions
        if r is not None and r.reservation is not None:
            bad = [c.type.value for c in self.price_components if c.type not in ("FLAT", "TIME")]
            if bad:
                raise ValueError(f"a reservation element may only price FLAT and TIME, not {bad}")
        return self

    def component(self, dim: Dimension) -> PriceComponent | None:
        """This element's price component for `dim`, if it has one."""
        return next((c for c in self.price_components if c.type == dim), None)

    def matches(self, s: MatchState) -> bool:
        """Whether the element applies to a charging session at `s` (reservations never do)."""
        r = self.restrictions
        if r is None:
            return True
        return r.reservation is None and r.matches(s)


class Tariff(_Model):
    """OCPI 2.2.1 Tariff. country_code, party_id and last_updated are optional here because a
    station-local tariff file need not come from an OCPI peer."""

    country_code: str | None = Field(default=None, min_length=2, max_length=2)
    party_id: str | None = Field(default=None, min_length=3, max_length=3)
    id: str = Field(min_length=1, max_length=36)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    type: (
        Literal["AD_HOC_PAYMENT", "PROFILE_CHEAP", "PROFILE_FAST", "PROFILE_GREEN", "REGULAR"]
        | None
    ) = None
    tariff_alt_text: list[DisplayText] = Field(default_factory=list)
    tariff_alt_url: str | None = Field(default=None, max_length=255)
    min_price: Price | None = None
    max_price: Price | None = None
    elements: list[TariffElement] = Field(min_length=1)
    start_date_time: UtcDateTime | None = None
    end_date_time: UtcDateTime | None = None
    energy_mix: dict[str, Any] | None = None
    last_updated: UtcDateTime | None = None

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _bounds(self) -> Tariff:
        s, e = self.start_date_time, self.end_date_time
        if s is not None and e is not None and e <= s:
            raise ValueError(f"end_date_time: must be after start_date_time ({e} <= {s})")
        lo, hi = self.min_price, self.max_price
        if lo is not None and hi is not None:
            if hi.excl_vat < lo.excl_vat:
                raise ValueError("max_price.excl_vat: below min_price.excl_vat")
            if hi.incl_vat is not None and lo.incl_vat is not None and hi.incl_vat < lo.incl_vat:
                raise ValueError("max_price.incl_vat: below min_price.incl_vat")
        return self

    def is_valid_at(self, at: datetime) -> bool:
        """Whether the tariff is in force at `at` (start inclusive, end exclusive)."""
        s, e = self.start_date_time, self.end_date_time
        return (s is None or at >= s) and (e is None or at < e)

    def warnings(self) -> list[tuple[str, str]]:
        """Legal but probably unintended things, as (field path, message)."""
        out: list[tuple[str, str]] = []
        for dim in Dimension:
            idx = [i for i, el in enumerate(self.elements) if el.component(dim) is not None]
            last = self.elements[idx[-1]].restrictions if idx else None
            if last is not None and last != TariffRestrictions():
                out.append(
                    (
                        f"elements[{idx[-1]}]",
                        f"no unrestricted fallback for {dim.value}: outside its restrictions "
                        f"{dim.value} is free",
                    )
                )
        for name in ("min_price", "max_price"):
            p = getattr(self, name)
            if p is not None and p.incl_vat is None:
                out.append((name, "no incl_vat: a total incl. VAT cannot be bounded by it"))
        for i, el in enumerate(self.elements):
            for j, c in enumerate(el.price_components):
                if c.vat is None and c.price > 0:
                    out.append(
                        (
                            f"elements[{i}].price_components[{j}].vat",
                            "omitted: no VAT applicable (incl. = excl.); set it if VAT is due",
                        )
                    )
            if el.restrictions is not None and el.restrictions.reservation is not None:
                out.append((f"elements[{i}]", "reservation element: not priced by evedge"))
        return out


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _problem(err: dict) -> tuple[str, str]:
    path, kind, msg = _path(err["loc"]), err["type"], err["msg"]
    got = err.get("input")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        return path, "unknown field"
    if kind == "missing":
        return path, "required"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return path, f"{msg.lower().replace('input should be', 'must be')}, got {got}"
    if kind in ("enum", "literal_error") and "expected" in ctx:
        return path, f"must be one of {ctx['expected']}, got {got!r}"
    msg = msg.removeprefix("Value error, ")
    # Model-level checks name their own field first ("end_date: ..."); fold it into the path.
    m = re.match(r"^([a-z_]+(?:\.[a-z_]+)?): (.*)$", msg, re.S)
    if m and err["type"] == "value_error":
        return (f"{path}.{m[1]}" if path != "(top)" else m[1]), m[2]
    return path, msg


def parse_tariff(text: str, file: str = "tariff.json", fmt: str | None = None) -> Tariff:
    """Parse and validate tariff text (JSON or TOML, by `fmt` or the file suffix)."""
    fmt = fmt or ("toml" if file.endswith(".toml") else "json")
    try:
        if fmt == "toml":
            data = tomllib.loads(text, parse_float=Decimal)
        else:
            data = json.loads(text, parse_float=Decimal)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise TariffError(file, [("(syntax)", f"not valid {fmt.upper()}: {e}")]) from None
    return tariff_from_data(data, file)


def tariff_from_data(data: Any, file: str = "(data)") -> Tariff:
    """Validate already-parsed data (e.g. an OCPI PUT body) into a Tariff."""
    try:
        return Tariff.model_validate(data)
    except ValidationError as e:
        raise TariffError(file, [_problem(err) for err in e.errors()]) from None


def load_tariff(path: str | Path) -> Tariff:
    """Load and validate a tariff file (`.json` or `.toml`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise TariffError(p.name, [("(file)", f"cannot read {p}: {reason}")]) from None
    return parse_tariff(text, p.name, "toml" if p.suffix.lower() == ".toml" else "json")
