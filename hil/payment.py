"""A simulated payment terminal: approves, declines or never answers, and remembers calls.

terminal = SimPaymentTerminal("approve")
auth = await terminal.preauthorize(Decimal("30.00"), "EUR", "PAY-1")
await terminal.capture(auth.ref, Decimal("4.20"))
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from agent.sessions.payment import PaymentAuth, PaymentDeclined, PaymentError

Mode = Literal["approve", "decline", "timeout"]


@dataclass
class SimPaymentTerminal:
    """`mode` decides what the next pre-authorization does; `calls` logs everything asked."""

    mode: Mode = "approve"
    hang_s: float = 3600.0  # how long "timeout" keeps the caller waiting
    fail_capture: bool = False
    calls: list[tuple[str, str, Decimal | None]] = field(default_factory=list)
    held: dict[str, Decimal] = field(default_factory=dict)
    captured: dict[str, Decimal] = field(default_factory=dict)
    voided: set[str] = field(default_factory=set)

    async def preauthorize(self, amount: Decimal, currency: str, reference: str) -> PaymentAuth:
        """Grant, decline, or hang (the caller's timeout fires)."""
        ref = reference  # holds are keyed by the caller's reference: it can void after a timeout
        self.calls.append(("preauthorize", ref, amount))
        if self.mode == "decline":
            raise PaymentDeclined("card declined by issuer (simulated)")
        if self.mode == "timeout":
            # A terminal that does answer, but only long after the caller gave up: the hold
            # exists, so the caller must void it.
            self.held[ref] = amount
            await asyncio.sleep(self.hang_s)
        self.held[ref] = amount
        return PaymentAuth(ref, amount, currency, card="VISA ****4242")

    async def capture(self, ref: str, amount: Decimal) -> None:
        """Take `amount` of the hold."""
        self.calls.append(("capture", ref, amount))
        if self.fail_capture:
            raise PaymentError("terminal offline (simulated)")
        if ref not in self.held:
            raise PaymentError(f"no pre-authorization {ref}")
        if amount > self.held[ref]:
            raise PaymentError(f"capture {amount} exceeds the {self.held[ref]} held")
        self.captured[ref] = amount

    async def void(self, ref: str) -> None:
        """Release the hold (unknown references are fine: voiding is idempotent)."""
        self.calls.append(("void", ref, None))
        self.voided.add(ref)
        self.held.pop(ref, None)
