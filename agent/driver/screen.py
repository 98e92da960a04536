"""A driver message before it has a language: catalog keys with typed values, rendered per
language (texts from the catalog, numbers and money in the language's style)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.driver import numbers
from agent.driver.catalog import Catalog
from agent.driver.numbers import NumberStyle


@dataclass(frozen=True)
class Energy:
    wh: int

    def format(self, style: NumberStyle) -> str:
        return numbers.energy(self.wh, style)


@dataclass(frozen=True)
class Power:
    w: float

    def format(self, style: NumberStyle) -> str:
        return numbers.power(self.w, style)


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str
    unit_price: bool = False  # a price per kWh / minute: more decimals allowed

    def format(self, style: NumberStyle) -> str:
        return numbers.money(self.amount, self.currency, style, unit_price=self.unit_price)


Value = Energy | Power | Money


@dataclass(frozen=True)
class Msg:
    """A catalog text; params may be Values (formatted per language) or plain text."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Localized:
    """A text that comes with its own translations (a fault rule's driver_message)."""

    texts: Mapping[str, str]
    fallback: str = "en"


@dataclass(frozen=True)
class Joined:
    """Parts on one line: "Charging · 7.2 kW · 12.35 kWh · 4.10 EUR"."""

    parts: tuple[Part, ...]
    sep: str = " · "


Part = Msg | Localized | Joined | Energy | Power | Money


def render(part: Part, catalog: Catalog, lang: str) -> str:
    """`part` in `lang`."""
    if isinstance(part, Msg):
        style = catalog.style(lang)
        params = {
            k: v.format(style) if isinstance(v, Energy | Power | Money) else v
            for k, v in part.params.items()
        }
        return catalog.text(lang, part.key, **params)
    if isinstance(part, Localized):
        return (
            part.texts.get(lang)
            or part.texts.get(part.fallback)
            or next(iter(part.texts.values()), "")
        )
    if isinstance(part, Joined):
        return part.sep.join(render(p, catalog, lang) for p in part.parts)
    return part.format(catalog.style(lang))
