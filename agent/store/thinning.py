"""The readings ring's retention policy: store a value only when it moved or aged.

Telemetry may be thinned (DESIGN.md); billing never goes through the readings ring. A
reading of a (device, quantity) is stored when it is the first one seen, its quality or
unit changed, its value moved beyond the quantity's deadband from the last stored value (an
int, bool or text value without a band of its own: changed at all), or
`keep_s` passed since the last stored one. The values in between are within the deadband of
a stored neighbour; the newest of each series is stored at the writer's stop, so the ring's
latest values are exact after a clean stop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from agent.events import Reading, Sample

Key = tuple[str, str]
Value = Reading | Sample  # a single Reading or one value of a DeviceReadings


@dataclass(frozen=True)
class Deadband:
    """`pct`: relative deadband (% of the last stored value) for every float quantity (an int
    is stored on every change);
    `absolute`: deadband in the quantity's unit, instead of `pct`, by quantity name or
    fnmatch pattern (`*_wh`: a relative band on a cumulative counter would grow with it)."""

    pct: float = 0.0
    absolute: Mapping[str, float] = field(default_factory=dict)
    keep_s: float = 0.0

    @property
    def off(self) -> bool:
        """Every reading is stored."""
        return self.keep_s <= 0


class Thinner:
    """Decides which readings of a batch are stored; remembers what was stored last.

    Not thread-safe: the writer calls it from one worker thread at a time.
    """

    def __init__(self, policy: Deadband):
        self.policy = policy
        self._stored: dict[Key, Value] = {}  # last stored per series
        self._held: dict[Key, Value] = {}  # newest seen but not stored, per series
        self._bands: dict[str, float | None] = {}  # absolute band per quantity (None: pct)

    def select(self, readings: Sequence[Value]) -> tuple[list[Value], dict[Key, Value]]:
        """The readings to store and the state to `commit` once they are stored (a failed
        write must not count as stored)."""
        if self.policy.off:
            return list(readings), {}
        keep: list[Value] = []
        stored: dict[Key, Value] = {}
        for r in readings:
            key = (r.device, r.quantity)
            last = stored.get(key) or self._stored.get(key)
            if last is None or self._moved(last, r):
                keep.append(r)
                stored[key] = r
            else:
                self._held[key] = r
        return keep, stored

    def commit(self, stored: Mapping[Key, Value]) -> None:
        """Record `stored` (from `select`) as written."""
        for key, r in stored.items():
            self._stored[key] = r
            held = self._held.get(key)
            if held is not None and held.ts <= r.ts:
                del self._held[key]

    def held(self) -> list[Value]:
        """The newest reading of each series not stored yet (to store at the stop)."""
        return list(self._held.values())

    def _moved(self, last: Value, r: Value) -> bool:
        if r.quality != last.quality or r.unit != last.unit:
            return True
        if (r.ts - last.ts).total_seconds() >= self.policy.keep_s:
            return True
        a, b = last.value, r.value
        numeric = isinstance(a, int | float) and isinstance(b, int | float)
        if not numeric or isinstance(a, bool) or isinstance(b, bool):
            return a != b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) != math.isnan(b)
        band = self._band(r.quantity)
        if band is None:
            if isinstance(a, int) and isinstance(b, int):
                return a != b  # codes and states: every change counts
            band = abs(a) * self.policy.pct / 100
        return abs(b - a) > band

    def _band(self, quantity: str) -> float | None:
        if quantity not in self._bands:
            bands = self.policy.absolute
            match = bands.get(quantity)
            if match is None:
                match = next((v for p, v in bands.items() if fnmatchcase(quantity, p)), None)
            self._bands[quantity] = match
        return self._bands[quantity]
