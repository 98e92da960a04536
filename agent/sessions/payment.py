"""Ad-hoc payment terminal interface: pre-authorize, capture the final cost, void.

The engine pre-authorizes the price of `preauth_energy_wh` at the tariff in force (incl.
VAT where the tariff gives it), capped at `preauth_cap`; that amount is also the session's
cost limit. At the end it captures the final cost (never more than was authorized); when
no session came of it, or it cost nothing, it voids. A capture or void the agent could not
finish (crash, terminal down) is retried at the next start: the payments table says what
is still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from agent.billing.pricing import MINOR_UNITS, quote
from agent.billing.tariff import Tariff


class PaymentError(Exception):
    """The terminal refused or failed; the message says why (shown to the driver)."""


class PaymentDeclined(PaymentError):
    """The card or the issuer declined the pre-authorization."""


class PaymentTimeout(PaymentError):
    """No answer from the terminal in time (the driver walked away, the link is down)."""


@dataclass(frozen=True)
class PaymentAuth:
    """A granted pre-authorization: our reference and the amount held."""

    ref: str
    amount: Decimal
    currency: str
    card: str = ""  # masked PAN or card brand, as the terminal reports it


class PaymentTerminal(Protocol):
    """A card payment terminal at the charger."""

    async def preauthorize(self, amount: Decimal, currency: str, reference: str) -> PaymentAuth:
        """Hold `amount` under the caller's `reference` (unique; capture and void use it, so a
        hold granted after the caller gave up can still be voided); PaymentDeclined if refused."""
        ...

    async def capture(self, ref: str, amount: Decimal) -> None:
        """Take `amount` (at most what was held) of pre-authorization `ref`; idempotent."""
        ...

    async def void(self, ref: str) -> None:
        """Release pre-authorization `ref` in full; idempotent."""
        ...


def preauth_amount(
    tariff: Tariff, at: datetime, energy_wh: int, cap: Decimal, *, tz: str
) -> Decimal:
    """What to pre-authorize: the price of `energy_wh` charged in one hour from `at`, incl.
    VAT where known (else excl.), capped at `cap`, rounded to the currency's minor unit."""
    from datetime import timedelta

    r = quote(tariff, energy_wh, at, at + timedelta(hours=1), tz=tz)
    total = r.total_incl_vat if r.total_incl_vat is not None else r.total_excl_vat
    places = Decimal(1).scaleb(-MINOR_UNITS.get(tariff.currency, 2))
    return min(total, cap).quantize(places, ROUND_HALF_UP)
