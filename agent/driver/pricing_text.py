"""The price a driver sees before the session starts, as EU AFIR (Regulation 2023/1804,
Art. 5) asks: the price per kWh, per minute, per session and for parking that apply now,
incl. VAT. The figures come from the billing code (`display_prices`); this module only
decides which lines to show."""

from __future__ import annotations

from datetime import datetime

from agent.billing.pricing import DisplayPrice, DisplayPrices, display_prices
from agent.billing.tariff import Tariff
from agent.driver.screen import Money, Msg, Part

_LINES = (("energy", "price.energy"), ("time", "price.time"), ("parking", "price.parking"),
          ("flat", "price.flat"))  # fmt: skip


def _amount(p: DisplayPrice, currency: str) -> Money:
    """Per kWh, per minute (time and parking) or per session; incl. VAT where known."""
    if p.incl_vat_per_minute is not None:
        return Money(p.incl_vat_per_minute, currency, unit_price=True)
    if p.price_unit == "h":  # no VAT known: per minute from the excl. price
        return Money(p.excl_vat / 60, currency, unit_price=True)
    amount = p.incl_vat if p.incl_vat is not None else p.excl_vat
    return Money(amount, currency, unit_price=p.price_unit != "session")


def price_parts(prices: DisplayPrices) -> list[Part]:
    """Lines for the display: a title (incl. VAT, or a note that VAT is not known), one line
    per priced dimension, the minimum and maximum price; "free" when nothing is priced."""
    out: list[Part] = []
    vat_unknown = False
    for attr, key in _LINES:
        p: DisplayPrice | None = getattr(prices, attr)
        if p is None or p.excl_vat == 0:
            continue
        vat_unknown |= p.incl_vat is None
        out.append(Msg(key, {"price": _amount(p, prices.currency)}))
    if not out:
        return [Msg("price.free")]
    for bound, key in ((prices.min_price, "price.min"), (prices.max_price, "price.max")):
        if bound is not None and bound.excl_vat > 0:
            amount = bound.incl_vat if bound.incl_vat is not None else bound.excl_vat
            vat_unknown |= bound.incl_vat is None
            out.append(Msg(key, {"price": Money(amount, prices.currency)}))
    return [Msg("price.excl_vat" if vat_unknown else "price.title"), *out]


def tariff_parts(tariff: Tariff | None, at: datetime, tz: str, *, free_vend: bool) -> list[Part]:
    """The price lines of `tariff` for a session starting at `at` (none without a tariff,
    "free of charge" for a free-vend station)."""
    if tariff is None:
        return [Msg("price.free")] if free_vend else []
    return price_parts(display_prices(tariff, at, tz=tz))
