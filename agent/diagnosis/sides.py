"""Charger-side or vehicle-side: the same fault across vehicles blames the charger.

A session here is one plug-in cycle as the control pilot shows it: it starts when the
pilot leaves state A for B, C or D and ends when it returns to A (E and F are faults, not
plug events). Without vehicle identities every session counts as a different vehicle; the
session engine can name the vehicle (`note_vehicle`) to sharpen the verdict.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PLUGGED = frozenset({"B", "C", "D"})
CHARGING = frozenset({"C", "D"})


@dataclass
class PlugSession:
    """One plug-in cycle and the tracked faults raised during it."""

    number: int
    vehicle: str | None = None
    faults: set[str] = field(default_factory=set)


@dataclass
class ConnectorSessions:
    """Plug-in cycles of one connector: the current one and the last few finished ones."""

    keep: int = 5
    count: int = 0
    current: PlugSession | None = None
    past: deque[PlugSession] = field(default_factory=deque)
    cp: str | None = None

    def on_cp(self, state: str) -> str | None:
        """Feed the pilot state; returns 'started' or 'ended' on a plug event."""
        before, self.cp = self.cp, state
        if state in PLUGGED and self.current is None:
            self.count += 1
            self.current = PlugSession(self.count)
            return "started"
        if state == "A" and before is not None and self.current is not None:
            self.past.append(self.current)
            while len(self.past) > self.keep:
                self.past.popleft()
            self.current = None
            return "ended"
        return None

    def charging(self) -> bool | None:
        """True in C/D, False when plugged otherwise, None without a session."""
        if self.current is None:
            return None
        return self.cp in CHARGING

    def mark(self, rule: str) -> None:
        """A tracked fault was raised (or is active) in the current session."""
        if self.current is not None:
            self.current.faults.add(rule)

    def verdict(self, rule: str) -> tuple[str, str]:
        """('charger' | 'vehicle' | 'unknown', why) for `rule` raised now."""
        past = list(self.past)
        if not past:
            return "unknown", "no earlier session on this connector to compare with"
        me = self.current.vehicle if self.current else None
        hits = [p for p in past if rule in p.faults]
        others = [p for p in hits if p.vehicle is None or p.vehicle != me]
        if others:
            return "charger", (
                f"also raised in {len(hits)} of the last {len(past)} sessions, with other vehicles"
            )
        if hits:
            return "vehicle", f"raised only with vehicle {me}, in {len(hits)} earlier session(s)"
        if len(past) >= 2:
            return "vehicle", f"not raised in the last {len(past)} sessions with other vehicles"
        return "unknown", "only one earlier session to compare with"
