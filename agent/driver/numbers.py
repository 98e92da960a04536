"""Numbers, money, energy and power as a language writes them: "7.2 kW" / "7,2 kW",
"4.10 EUR" / "4,10 €". The separators and the money pattern come from the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from agent.billing.pricing import MINOR_UNITS

UNIT_PRICE_MAX_PLACES = 4  # a price per kWh or per minute may have more digits than cents


@dataclass(frozen=True)
class NumberStyle:
    """How one language writes numbers (loaded from its catalog file)."""

    decimal: str
    thousands: str
    money: str  # "{amount} {currency}"
    symbols: dict[str, str]  # ISO 4217 code -> what the language writes ("EUR" -> "€")


def _dec(value: Decimal | int | float) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def number(value: Decimal | int | float, places: int, style: NumberStyle) -> str:
    """`value` rounded half-up to `places` decimals, with the language's separators."""
    q = _dec(value).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    sign = "-" if q < 0 else ""
    whole, _, frac = f"{abs(q):f}".partition(".")
    groups = []
    while len(whole) > 3:
        whole, groups = whole[:-3], [whole[-3:], *groups]
    whole = style.thousands.join([whole, *groups])
    return sign + whole + (style.decimal + frac if frac else "")


def money(amount: Decimal, currency: str, style: NumberStyle, *, unit_price: bool = False) -> str:
    """A total in the currency's minor unit; a unit price (`unit_price`) keeps up to 4
    decimals (0.476 EUR per kWh is a real price), never fewer than the minor unit."""
    minor = MINOR_UNITS.get(currency, 2)
    places = minor
    if unit_price:
        exp = _dec(amount).normalize().as_tuple().exponent
        digits = -exp if isinstance(exp, int) and exp < 0 else 0
        places = min(max(minor, digits), UNIT_PRICE_MAX_PLACES)
    text = number(amount, places, style)
    return style.money.format(amount=text, currency=style.symbols.get(currency, currency))


def energy(wh: int, style: NumberStyle) -> str:
    """Session energy in kWh with 2 decimals: 12345 Wh -> "12.35 kWh"."""
    return f"{number(Decimal(wh) / 1000, 2, style)} kWh"


def power(w: float, style: NumberStyle) -> str:
    """Charging power in kW with 1 decimal: 7230.5 W -> "7.2 kW"."""
    return f"{number(_dec(w) / 1000, 1, style)} kW"
