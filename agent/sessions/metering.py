"""Billed energy of one session, from the meter's cumulative import register (integer Wh).

Energy is only ever a difference of register readings, never power integrated over time.
Every reading passes these checks before it may add to the bill:

- stale: a reading not newer than the last one taken is ignored (out of order, or late);
- meter replaced: a new serial number starts a new baseline; the swap is flagged;
- rollover: an unsigned register that wraps (high to near zero) is counted across the wrap;
- backwards: a small drop (up to `backwards_glitch_wh`) is a glitch: nothing is billed until
  the register passes its high-water mark again, so a drop and its return add nothing; a
  larger drop is a reset: counting restarts from the new value. Both are flagged;
- jump: more energy than the connector can deliver in the elapsed time (max power x time +
  slack) is not billed; the register is re-baselined and the jump flagged;
- gap: no reading for `gap_after_s` (or the meter reported offline) is a metering gap. It is
  recorded; no substitute values are made up. The register difference across it is real
  metered energy and is billed after the same plausibility check.

Evidence, never billed: the meter's power readings integrated over the time between
register readings (trapezoids; not across a gap) give an estimate of the energy delivered.
`shortfall()` compares it with the billed energy: a register that froze or lost counts while
power flowed bills less than the estimate, and the record is flagged for review with both
figures (the register's energy is still what is billed).

A flagged session is still closed and priced on the energy that passed, and its record
carries the reasons for a person to review. The state round-trips through `to_state` and
`from_state`, so a restarted agent continues exactly where the persisted one stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from agent.sessions.times import US, from_us, to_us


@dataclass
class Gap:
    """A stretch without register readings: from the last reading before to the first after."""

    start_us: int
    end_us: int | None = None
    wh: int | None = None  # billed across the gap (None while open, or when not plausible)
    cause: str = "no readings"

    def to_json(self) -> dict:
        """JSON-ready, times as ISO 8601."""
        return {
            "start": from_us(self.start_us).isoformat(),
            "end": None if self.end_us is None else from_us(self.end_us).isoformat(),
            "duration_s": None if self.end_us is None else (self.end_us - self.start_us) // US,
            "wh": self.wh,
            "cause": self.cause,
        }


@dataclass
class Outcome:
    """What one reading did: `billed_wh` added (0 or more), and a review reason if flagged."""

    accepted: bool
    billed_wh: int = 0
    review: str | None = None
    note: str | None = None
    gap: Gap | None = None  # a gap this reading closed


@dataclass
class EnergyTracker:
    """The billed energy of one session; see the module docstring for the rules."""

    start_wh: int
    start_us: int
    serial: str | None
    max_power_w: float
    modulus: int | None = None  # register wraps at this (unsigned integer registers)
    gap_after_s: float = 10.0
    jump_slack_wh: int = 5
    backwards_glitch_wh: int = 1000
    hwm_wh: int = -1  # the highest register value of the current baseline
    hwm_us: int = 0
    last_us: int = 0  # the newest reading taken (accepted or not)
    billed_wh: int = 0
    ignored_stale: int = 0
    reviews: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    gap_open: Gap | None = None
    glitch: bool = False  # below the high-water mark after a small drop
    power_w: float | None = None  # the meter's power at the newest reading (evidence only)
    estimate_mwh: int = 0  # power x time between readings, in mWh (evidence only)
    estimate_us: int = 0  # the time the estimate covers

    def __post_init__(self) -> None:
        if self.hwm_wh < 0:
            self.hwm_wh, self.hwm_us, self.last_us = self.start_wh, self.start_us, self.start_us

    # ------------------------------------------------------------------ readings

    def feed(
        self,
        wh: int,
        at: datetime | int,
        serial: str | None = None,
        power_w: float | None = None,
    ) -> Outcome:
        """Account one register reading taken at `at` (`power_w`: the meter's power then,
        for the estimate only)."""
        t = at if isinstance(at, int) else to_us(at)
        if type(wh) is not int or wh < 0:
            return self._flag(t, f"register value {wh!r} is not a non-negative integer Wh")
        if t <= self.last_us:
            self.ignored_stale += 1  # not newer than what we have: can only repeat or confuse
            return Outcome(accepted=False, note="stale")
        self._integrate(t, power_w)  # every path below moves last_us to t
        closing = self._closing_gap(t)
        if serial and self.serial and serial != self.serial:
            return self._replaced(wh, t, serial, closing)
        if serial and not self.serial:
            self.serial = serial
        delta = wh - self.hwm_wh
        if delta < 0:
            wrapped = self._rollover(wh)
            if wrapped is None:
                return self._backwards(wh, t, closing)
            delta = wrapped
            self.notes.append(f"{_iso(t)}: register rolled over at {self.modulus} Wh")
        return self._forward(wh, t, delta, closing)

    def _integrate(self, t: int, power_w: float | None) -> None:
        """Add the trapezoid from the previous reading to this one to the estimate; nothing
        across a gap or where a power reading is missing (no values are made up)."""
        dt = t - self.last_us
        known = self.power_w is not None and power_w is not None and self.gap_open is None
        if known and dt <= self.gap_after_s * US:
            mean_w = (max(self.power_w or 0.0, 0.0) + max(power_w or 0.0, 0.0)) / 2
            self.estimate_mwh += int(mean_w * dt / US / 3.6)  # W x s = J; 1 mWh = 3.6 J
            self.estimate_us += dt
        self.power_w = power_w

    @property
    def estimate_wh(self) -> int | None:
        """Energy from power x time (None: no two power readings to integrate)."""
        return self.estimate_mwh // 1000 if self.estimate_us else None

    def shortfall(self, tolerance_pct: float, min_wh: int) -> str | None:
        """A review reason when the billed energy falls short of the power x time estimate
        by more than `tolerance_pct` of it and `min_wh` (register resolution, ramps)."""
        est = self.estimate_wh
        if est is None:
            return None
        short = est - self.billed_wh
        if short <= max(min_wh, est * tolerance_pct / 100):
            return None
        return (
            f"billed {self.billed_wh} Wh from the register, but the meter's power readings "
            f"integrate to about {est} Wh over {self.estimate_us / US:.1f} s: the register may "
            f"have frozen or lost counts; the register's energy is billed, the difference is "
            f"for review"
        )

    def comm_lost(self, at: datetime | int, cause: str = "meter offline") -> None:
        """The meter stopped answering: open a gap from the last reading (idempotent)."""
        if self.gap_open is None:
            self.gap_open = Gap(self.last_us, cause=cause)

    def _closing_gap(self, t: int) -> Gap | None:
        gap = self.gap_open
        if gap is None and (t - self.last_us) / US > self.gap_after_s:
            gap = Gap(self.last_us)
        self.gap_open = None
        if gap is not None:
            gap.end_us = t
            self.gaps.append(gap)
        return gap

    def _rollover(self, wh: int) -> int | None:
        m = self.modulus
        if m and self.hwm_wh > m * 9 // 10 and wh < m // 10:
            return wh + m - self.hwm_wh
        return None

    def _forward(self, wh: int, t: int, delta: int, gap: Gap | None) -> Outcome:
        limit = self.plausible_wh(t - self.hwm_us)
        self.last_us = t
        if delta > limit:
            reason = (
                f"{_iso(t)}: register jumped {delta} Wh in {(t - self.hwm_us) / US:.1f} s "
                f"(at most {limit} Wh possible at {self.max_power_w / 1000:.1f} kW): not billed, "
                f"counting from {wh} Wh"
            )
            self.hwm_wh, self.hwm_us, self.glitch = wh, t, False
            if gap is not None:
                gap.wh = None
            return self._flag(t, reason, accepted=True, gap=gap)
        if self.glitch:
            self.notes.append(f"{_iso(t)}: register back above its high-water mark")
        self.billed_wh += delta
        self.hwm_wh, self.hwm_us, self.glitch = wh, t, False
        if gap is not None:
            gap.wh = delta
        return Outcome(accepted=True, billed_wh=delta, gap=gap)

    def _backwards(self, wh: int, t: int, gap: Gap | None) -> Outcome:
        self.last_us = t
        drop = self.hwm_wh - wh
        if drop <= self.backwards_glitch_wh:
            if self.glitch:
                return Outcome(accepted=False, note="below high-water mark", gap=gap)
            self.glitch = True
            return self._flag(
                t,
                f"{_iso(t)}: register went back {drop} Wh ({self.hwm_wh} -> {wh}): nothing "
                f"billed until it passes {self.hwm_wh} Wh again",
                gap=gap,
            )
        reason = (
            f"{_iso(t)}: register went back {drop} Wh ({self.hwm_wh} -> {wh}), a meter reset "
            f"or swap: counting from {wh} Wh"
        )
        self.hwm_wh, self.hwm_us, self.glitch = wh, t, False
        return self._flag(t, reason, gap=gap)

    def _replaced(self, wh: int, t: int, serial: str, gap: Gap | None) -> Outcome:
        reason = (
            f"{_iso(t)}: meter replaced (serial {self.serial} -> {serial}); energy between the "
            f"last reading of the old meter and {wh} Wh on the new one is not billed"
        )
        self.serial = serial
        self.hwm_wh, self.hwm_us, self.last_us, self.glitch = wh, t, t, False
        return self._flag(t, reason, accepted=True, gap=gap)

    def _flag(
        self, t: int, reason: str, *, accepted: bool = False, gap: Gap | None = None
    ) -> Outcome:
        self.reviews.append(reason)
        return Outcome(accepted=accepted, review=reason, gap=gap)

    def plausible_wh(self, dt_us: int) -> int:
        """The most energy the connector can deliver in `dt_us`, plus the slack."""
        return int(self.max_power_w * max(dt_us, 0) / US / 3600) + self.jump_slack_wh

    @property
    def register_wh(self) -> int:
        """The register value the bill has counted up to (its high-water mark)."""
        return self.hwm_wh

    # ------------------------------------------------------------------ persistence

    def to_state(self) -> dict:
        """JSON-ready state, for the session row."""
        d = asdict(self)
        d["gaps"] = [asdict(g) for g in self.gaps]
        d["gap_open"] = None if self.gap_open is None else asdict(self.gap_open)
        return d

    @classmethod
    def from_state(cls, d: dict) -> EnergyTracker:
        """The tracker `to_state` described."""
        d = dict(d)
        gaps = [Gap(**g) for g in d.pop("gaps", [])]
        gap_open = d.pop("gap_open", None)
        t = cls(**d)
        t.gaps = gaps
        t.gap_open = None if gap_open is None else Gap(**gap_open)
        return t


def _iso(t: int) -> str:
    return from_us(t).isoformat(timespec="seconds")
