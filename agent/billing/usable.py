"""Whether a tariff may be put in force: valid for use, not only in shape (tariff.py).

Every way a tariff reaches a station calls `check_usable`: the config's file when the agent
starts (and `evedge config check`), MQTT and API `set_tariff` (through the session engine),
`evedge tariff check`. It refuses, with the field and the reason:
- a tariff that is not in force now (`start_date_time` in the future: set it when it starts;
  `end_date_time` passed);
- a price above the ceiling for its currency and dimension, a min/max price above the
  session ceiling (`[billing.tariff_limits.price_ceilings.<CUR>]`; defaults below), and a
  currency with no ceiling at all;
- a step_size above `max_step_wh` (ENERGY) or `max_step_s` (TIME, PARKING_TIME);
- a priced dimension without an unrestricted fallback element (a session could find no
  matching element and go unpriced).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from agent.billing.tariff import Dimension, Tariff, TariffError, TariffRestrictions


def _no_float(v: Any) -> Any:
    return Decimal(str(v)) if isinstance(v, float) else v


Ceiling = Annotated[Decimal, BeforeValidator(_no_float), Field(gt=0, allow_inf_nan=False)]


class PriceCeiling(BaseModel):
    """The highest price (excl. VAT) a tariff in one currency may ask, per unit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    energy: Ceiling = Field(description="per kWh")
    time: Ceiling = Field(description="per hour charging")
    parking_time: Ceiling = Field(description="per hour parking")
    flat: Ceiling = Field(description="per session")
    session: Ceiling = Field(description="min_price and max_price")


def _ceiling(scale: int) -> PriceCeiling:
    # Several times the dearest public charging in Europe (about 1 EUR/kWh, blocking fees
    # about 12 EUR/h in 2025): far from any real price, far below a typo's 1e30.
    base = {"energy": 5, "time": 60, "parking_time": 60, "flat": 100, "session": 1000}
    return PriceCeiling(**{k: Decimal(v * scale) for k, v in base.items()})


# Scaled roughly by exchange rate; another currency needs its ceiling in the config.
DEFAULT_CEILINGS: dict[str, PriceCeiling] = {
    "EUR": _ceiling(1),
    "USD": _ceiling(1),
    "GBP": _ceiling(1),
    "CHF": _ceiling(1),
    "SEK": _ceiling(12),
    "NOK": _ceiling(12),
    "DKK": _ceiling(8),
    "PLN": _ceiling(5),
    "CZK": _ceiling(25),
}
CEILING_FIELD = {
    Dimension.ENERGY: ("energy", "/kWh"),
    Dimension.TIME: ("time", "/h"),
    Dimension.PARKING_TIME: ("parking_time", "/h"),
    Dimension.FLAT: ("flat", ""),
}


class TariffLimits(BaseModel):
    """`[billing.tariff_limits]`: what a tariff may ask before it is refused as absurd."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_step_wh: int = Field(default=10_000, gt=0, description="largest ENERGY step_size")
    max_step_s: int = Field(default=3600, gt=0, description="largest TIME/PARKING_TIME step")
    price_ceilings: dict[str, PriceCeiling] = Field(
        default_factory=lambda: dict(DEFAULT_CEILINGS),
        description="per ISO 4217 currency; given ones replace or add to the defaults",
    )

    @field_validator("price_ceilings", mode="after")
    @classmethod
    def _over_defaults(cls, v: dict[str, PriceCeiling]) -> dict[str, PriceCeiling]:
        return {**DEFAULT_CEILINGS, **{k.upper(): c for k, c in v.items()}}


def usable_problems(
    tariff: Tariff, limits: TariffLimits, now: datetime | None
) -> list[tuple[str, str]]:
    """Every reason `tariff` may not be put in force, as (field path, message); `now` None
    skips the validity period (pricing a past session with the tariff it had)."""
    out: list[tuple[str, str]] = []
    if now is not None:
        s, e = tariff.start_date_time, tariff.end_date_time
        if e is not None and e <= now:
            out.append(("end_date_time", f"expired at {e.isoformat()} (now {now.isoformat()})"))
        if s is not None and s > now:
            out.append(
                (
                    "start_date_time",
                    f"not in force until {s.isoformat()} (now {now.isoformat()}): a tariff "
                    "applies as soon as it is set; set it when it starts",
                )
            )
    cur = tariff.currency
    ceiling = limits.price_ceilings.get(cur)
    if ceiling is None:
        out.append(
            ("currency", f"no price ceiling for {cur}: add [billing.tariff_limits.price_ceilings."
                         f"{cur}] (energy, time, parking_time, flat, session)")
        )  # fmt: skip
    for i, el in enumerate(tariff.elements):
        for j, c in enumerate(el.price_components):
            where = f"elements[{i}].price_components[{j}]"
            name, unit = CEILING_FIELD[c.type]
            top = None if ceiling is None else getattr(ceiling, name)
            if top is not None and c.price > top:
                out.append(
                    (f"{where}.price", f"{c.price} {cur}{unit} is above the ceiling {top} "
                                       f"{cur}{unit} (billing.tariff_limits)")
                )  # fmt: skip
            step = limits.max_step_wh if c.type == Dimension.ENERGY else limits.max_step_s
            unit_s = "Wh" if c.type == Dimension.ENERGY else "s"
            if c.type != Dimension.FLAT and c.step_size > step:
                out.append(
                    (f"{where}.step_size", f"{c.step_size} {unit_s} is above the largest step "
                                           f"{step} {unit_s} (billing.tariff_limits)")
                )  # fmt: skip
    for name in ("min_price", "max_price"):
        p = getattr(tariff, name)
        for part in ("excl_vat", "incl_vat"):
            v = None if p is None else getattr(p, part)
            if v is not None and ceiling is not None and v > ceiling.session:
                out.append(
                    (f"{name}.{part}", f"{v} {cur} is above the session ceiling "
                                       f"{ceiling.session} {cur} (billing.tariff_limits)")
                )  # fmt: skip
    out.extend(_fallbacks(tariff))
    return out


def _fallbacks(tariff: Tariff) -> list[tuple[str, str]]:
    missing = []
    for dim in sorted({c.type for el in tariff.elements for c in el.price_components}):
        if not any(
            (el.restrictions is None or el.restrictions == TariffRestrictions())
            and el.component(dim) is not None
            for el in tariff.elements
        ):
            missing.append(dim.value)
    if not missing:
        return []
    return [
        (
            "elements",
            f"tariff {tariff.id} cannot price every session: no unrestricted fallback element "
            f"for {', '.join(missing)} (add one last, as OCPI recommends)",
        )
    ]


def check_usable(
    tariff: Tariff, limits: TariffLimits, now: datetime | None, file: str = "tariff"
) -> Tariff:
    """`tariff` if it may be put in force at `now`, else TariffError naming every problem."""
    problems = usable_problems(tariff, limits, now)
    if problems:
        raise TariffError(file, problems)
    return tariff
