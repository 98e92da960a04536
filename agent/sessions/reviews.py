"""Billing follows diagnosis: which faults during a session put its charge record up for review.

The session engine does not read the diagnosis' state or tables. The composition root
(agent/runtime.py) hands it a `FaultsDuring` port: "the faults on connector N, or on its
meter, active at any time between t0 and t1". At the close, the faults whose OCPP 2.0.1
component is one of `[sessions] review_fault_components` (default FiscalMetering: the
billing meter's register frozen, jumped or went backwards, the meter silent) flag the
record, each named with its fault id and rule. The energy billed stays the register's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.sessions.times import from_us


@dataclass(frozen=True)
class FaultRef:
    """One fault as the billing review needs it."""

    fault_id: str
    rule: str
    component: str  # OCPP 2.0.1 component of its codes, e.g. FiscalMetering
    title: str
    raised_us: int
    cleared_us: int | None = None

    def to_json(self) -> dict:
        """JSON-ready (times ISO 8601 UTC)."""
        return {
            "fault_id": self.fault_id,
            "rule": self.rule,
            "component": self.component,
            "raised": from_us(self.raised_us).isoformat(),
            "cleared": None if self.cleared_us is None else from_us(self.cleared_us).isoformat(),
        }


class FaultsDuring(Protocol):
    """The port: faults on `connector` or on device `meter`, active in [t0_us, t1_us],
    including one published a moment ago (a session stopped by a fault names it)."""

    async def __call__(
        self, connector: int, meter: str, t0_us: int, t1_us: int
    ) -> list[FaultRef]: ...


def billing_faults(faults: Sequence[FaultRef], components: Sequence[str]) -> list[FaultRef]:
    """The faults that make a session's energy doubtful, oldest first, each once."""
    seen: dict[str, FaultRef] = {}
    for f in sorted(faults, key=lambda f: (f.raised_us, f.fault_id)):
        if f.component in components:
            seen.setdefault(f.fault_id, f)
    return list(seen.values())


def reason(f: FaultRef) -> str:
    """The review reason one fault gives."""
    at = from_us(f.raised_us).isoformat(timespec="seconds")
    return (
        f"fault {f.fault_id} ({f.rule}: {f.title}) raised {at} during the session: the "
        f"billing meter's energy may be wrong"
    )
