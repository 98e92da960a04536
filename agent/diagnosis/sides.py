"""Charger-side or vehicle-side, from evidence about vehicles, never from a count.

A session here is one plug-in cycle as the control pilot shows it: it starts when the
pilot leaves state A for B, C or D and ends when it returns to A (E and F are faults, not
plug events). The controlling side names the vehicle of a session (`note_vehicle`: a
hash of its id token, EVCCID or MAC where known).

The verdict for a fault raised now with vehicle V on connector K:
- charger: the same fault was raised on K with a vehicle known to be other than V;
- vehicle: K charged a vehicle known to be other than V without this fault, or V had
  the same fault on another connector (the fault moves with the vehicle);
- unknown otherwise: with V unknown, or only V (or unnamed vehicles) to compare with,
  a count of sessions says nothing about which side is at fault.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

PLUGGED = frozenset({"B", "C", "D"})
CHARGING = frozenset({"C", "D"})


@dataclass
class PlugSession:
    """One plug-in cycle: its vehicle, whether it charged, the tracked faults raised."""

    number: int
    vehicle: str | None = None
    charged: bool = False
    faults: set[str] = field(default_factory=set)

    def other_vehicle(self, vehicle: str) -> bool:
        """True if this session's vehicle is known and is not `vehicle`."""
        return self.vehicle is not None and self.vehicle != vehicle


@dataclass
class ConnectorSessions:
    """Plug-in cycles of one connector: the current one and the last few finished ones."""

    keep: int = 10
    count: int = 0
    current: PlugSession | None = None
    past: deque[PlugSession] = field(default_factory=deque)
    cp: str | None = None

    def on_cp(self, state: str) -> str | None:
        """Feed the pilot state; returns 'started' or 'ended' on a plug event."""
        before, self.cp = self.cp, state
        started = state in PLUGGED and self.current is None
        if started:
            self.count += 1
            self.current = PlugSession(self.count)
        if self.current is not None and state in CHARGING:
            self.current.charged = True
        if started:
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

    def note_vehicle(self, vehicle: str) -> None:
        """Name the vehicle of the current plug-in session (ignored without one)."""
        if self.current is not None:
            self.current.vehicle = vehicle

    def mark(self, rule: str) -> None:
        """A tracked fault was raised (or is active) in the current session."""
        if self.current is not None:
            self.current.faults.add(rule)

    def sessions(self) -> list[PlugSession]:
        """The finished sessions kept, oldest first, then the current one."""
        return [*self.past, *([self.current] if self.current else [])]

    def verdict(self, rule: str, elsewhere: Iterable[ConnectorSessions] = ()) -> tuple[str, str]:
        """('charger' | 'vehicle' | 'unknown', why) for `rule` raised now; `elsewhere`:
        the station's other connectors (a fault that moves with the vehicle)."""
        me = self.current.vehicle if self.current else None
        if me is None:
            return "unknown", "the vehicle's identity is not known"
        past = list(self.past)
        hit = [p for p in past if rule in p.faults and p.other_vehicle(me)]
        if hit:
            return "charger", (
                f"also raised with {len({p.vehicle for p in hit})} other vehicle(s) "
                f"on this connector"
            )
        worked = [p for p in past if p.charged and rule not in p.faults and p.other_vehicle(me)]
        if worked:
            return "vehicle", (
                f"this connector charged {len({p.vehicle for p in worked})} other vehicle(s) "
                f"without it; raised with vehicle {me}"
            )
        moved = [
            p
            for other in elsewhere
            for p in other.sessions()
            if p.vehicle == me and rule in p.faults
        ]
        if moved:
            return "vehicle", f"vehicle {me} had the same fault on another connector"
        return "unknown", "no other vehicle to compare with on this connector"
