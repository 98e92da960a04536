"""The physics behind the registers: EV, EVSE (IEC 61851-1 control pilot), supply and meter.

Plain dataclasses and functions, no I/O: the station calls `charge_step` and
`Meter.integrate` on each tick and copies the results into the register images. Everything
random comes from a seeded `random.Random`, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from fractions import Fraction

MIN_CURRENT_A = 6.0  # IEC 61851-1: below 6 A (10 % duty cycle) there is no charging
MAX_CURRENT_A = 80.0  # IEC 61851-1: top of the PWM current range
EV_DRAW_RATIO = 0.98  # an on-board charger takes slightly less than it is offered
EV_POWER_FACTOR = 0.99  # active-PFC on-board chargers
BASE_POWER_FACTOR = 0.95
BASE_LOAD_A = (0.8, 0.6, 0.7)  # lighting, controller, the odd socket: a meter with no car
AMBIENT_C = 25.0
THERMAL_K_C_PER_A2 = 0.02  # steady-state rise per A² of phase current: 32 A -> +20 °C
THERMAL_TAU_S = 300.0
OVERCURRENT_TRIP_S = 5.0  # IEC 61851-1 annex A: the EVSE opens within seconds
OVERTEMP_TRIP_C = 80.0  # a forced temperature below this only warms (the derating zone)
SUPPLY_IMPEDANCE_OHM = 0.08  # a 32 A load pulls the phase down by about 2.5 V
NOMINAL_HZ = 50.0


@dataclass
class EV:
    """The car: what it can draw and whether it wants to."""

    max_current_a: float = 32.0
    phases: int = 3
    plugged: bool = False
    requesting: bool = True  # battery not full
    suspended: bool = False  # the car paused charging itself (OCPP SuspendedEV)
    ventilation: bool = False  # requests state D instead of C

    def wants_charge(self) -> bool:
        """True when the car closes S2 (state C/D) as soon as the EVSE offers current."""
        return self.plugged and self.requesting and not self.suspended


@dataclass
class EvseFaultFlags:
    """The injected faults acting on one EVSE, rebuilt from the active faults on each tick."""

    pilot_short: bool = False
    unavailable: bool = False
    welded: bool = False
    ev_keeps_drawing: bool = True  # with a welded contactor: see WeldedContactor
    stuck_open: bool = False
    over_temperature_c: float | None = None
    rcd_trip: bool = False
    lock_failure: bool = False
    diode_fault: bool = False
    ev_overcurrent_a: float | None = None


@dataclass
class Evse:
    """An AC charging controller: enable flag, PWM current, contactor, temperature, error."""

    hw_max_current_a: float = 32.0
    phases: int = 3
    enabled: bool = False
    offered_current_a: float = 0.0
    temperature_c: float = AMBIENT_C  # the modelled temperature, before faults
    contactor_commanded: bool = False
    contactor_closed: bool = False  # what the contactor really does
    # An auxiliary contact wired to the controller: only then can it see a contactor that
    # does not do what it commands (a Phoenix EV-CC reports no contactor state).
    contactor_feedback: bool = True
    cp_state: str = "A"
    error: str = "none"  # canonical fault, a key of quantities.EVSE_FAULTS
    draw_a: float = 0.0  # what the car draws per active phase
    overcurrent_s: float = 0.0
    tripped: bool = False  # opened on sustained overcurrent; latched while the cause lasts
    limit_a: float | None = None  # failsafe cap while the controller's watchdog has expired
    faults: EvseFaultFlags = field(default_factory=EvseFaultFlags)

    @property
    def signalled_current_a(self) -> float:
        """The current the pilot signals: the setpoint, capped by an expired failsafe."""
        if self.limit_a is None:
            return self.offered_current_a
        return min(self.offered_current_a, self.limit_a)

    @property
    def reported_temperature_c(self) -> float:
        """What the temperature sensor reads (an over-temperature fault overrides it)."""
        forced = self.faults.over_temperature_c
        return forced if forced is not None else round(self.temperature_c, 1)

    def blocked(self) -> bool:
        """True if a fault keeps the EVSE from offering current."""
        f = self.faults
        return bool(
            f.pilot_short
            or f.unavailable
            or f.rcd_trip
            or f.lock_failure
            or f.diode_fault
            or self.overheated()
            or self.tripped
        )

    def overheated(self) -> bool:
        """True if an injected temperature is past the controller's own trip point."""
        t = self.faults.over_temperature_c
        return t is not None and t >= OVERTEMP_TRIP_C

    def offering(self) -> bool:
        """True if the agent has the EVSE offer current (whether or not a fault blocks it)."""
        return self.enabled and self.signalled_current_a >= MIN_CURRENT_A

    def pwm_on(self) -> bool:
        """True if the EVSE signals a current on the pilot (duty cycle between 10 and 96 %)."""
        return self.offering() and not self.blocked()


def charge_step(
    evse: Evse, ev: EV, voltages: list[float], dt: float, noise_a: float = 0.0
) -> list[float]:
    """Advance one EVSE/EV pair by `dt` seconds; returns the phase currents drawn (A).

    `noise_a` is added to what the car draws (the station keeps it between ticks, so
    re-deriving the state without time passing does not change the reading).

    IEC 61851-1: A no car, B car connected but not charging, C (D with ventilation) when
    the EVSE offers >= 6 A and the car requests, E pilot short, F EVSE fault. The
    contactor follows the state unless a fault welds it or keeps it open.
    """
    f = evse.faults
    if not ev.plugged or f.ev_overcurrent_a is None:
        evse.tripped = False
        evse.overcurrent_s = 0.0
    # The pilot's level is the car's S2 (B open, C closed); the PWM is the EVSE's offer.
    # A car closes S2 when offered current; with the PWM off it opens S2 and stops drawing,
    # unless its supply never went away (welded contactor) and it keeps charging: then
    # the pilot stays in C without PWM (C1) and the current keeps flowing.
    s2_closed = ev.wants_charge() and (
        evse.pwm_on()
        or (f.welded and f.ev_keeps_drawing and evse.contactor_closed and evse.draw_a > 0)
    )
    if f.pilot_short:
        cp = "E"
    elif f.unavailable or f.rcd_trip or (f.diode_fault and ev.plugged and evse.offering()):
        # A missing diode shows once the PWM starts (no negative half-wave): the controller
        # reacts with state F, though the car is at fault.
        cp = "F"
    elif not ev.plugged:
        cp = "A"
    elif s2_closed:
        cp = "D" if ev.ventilation else "C"
    else:
        cp = "B"
    commanded = cp in ("C", "D") and evse.pwm_on()
    if f.stuck_open:
        closed = False
    elif f.welded:
        closed = commanded or evse.contactor_closed  # once closed, it stays closed
    else:
        closed = commanded
    evse.cp_state, evse.contactor_commanded, evse.contactor_closed = cp, commanded, closed

    draw = 0.0
    if closed and cp in ("C", "D"):
        if f.ev_overcurrent_a is not None:
            draw = f.ev_overcurrent_a
        elif commanded:
            draw = min(evse.signalled_current_a, ev.max_current_a) * EV_DRAW_RATIO + noise_a
        else:
            draw = evse.draw_a  # welded and the PWM is off: the car keeps drawing
    evse.draw_a = draw
    n = min(ev.phases, evse.phases)
    currents = [round(draw, 2) if k < n and voltages[k] > 0 and draw > 0 else 0.0 for k in range(3)]

    if commanded and max(currents) > evse.signalled_current_a * 1.1 + 0.5:
        evse.overcurrent_s += dt
        if evse.overcurrent_s >= OVERCURRENT_TRIP_S:
            evse.tripped = True
    elif not evse.tripped:
        evse.overcurrent_s = 0.0

    if dt > 0:
        target = AMBIENT_C + THERMAL_K_C_PER_A2 * max(currents) ** 2
        evse.temperature_c += (target - evse.temperature_c) * (1 - math.exp(-dt / THERMAL_TAU_S))

    evse.error = _error(evse, ev)
    return currents


def _error(evse: Evse, ev: EV) -> str:
    """The canonical fault an EVSE would report now, most serious first."""
    f = evse.faults
    if evse.cp_state == "E":
        return "pilot_short"
    if f.unavailable:
        return "evse_unavailable"
    if f.rcd_trip:
        return "rcd_dc"
    if evse.contactor_feedback and evse.contactor_closed != evse.contactor_commanded:
        return "contactor_fault"  # detected through the auxiliary contact
    if evse.overheated():
        return "overtemperature"
    if f.lock_failure and ev.plugged:
        return "lock_failure"
    if f.diode_fault and ev.plugged:
        return "diode_missing"
    if evse.tripped or evse.overcurrent_s > 0:
        return "overcurrent"
    return "none"


@dataclass(frozen=True)
class Noise:
    """Realistic imperfections of a station in the field, all off by default.

    voltage_pct / current_ripple_pct: each device's readings of phase voltage / current
    vary by up to ± this percentage (uniform, redrawn every model tick); jitter_s: every
    answer is delayed by 0..jitter_s; drop_rate: the chance that one answer is lost
    (a one-off timeout), after which the device answers the next `recover_requests`.
    """

    voltage_pct: float = 0.0
    current_ripple_pct: float = 0.0
    jitter_s: float = 0.0
    drop_rate: float = 0.0
    recover_requests: int = 20

    @classmethod
    def realistic(cls) -> Noise:
        """Voltage ±3 %, current ripple ±2 %, up to 20 ms jitter, one answer in 500 lost."""
        return cls(voltage_pct=3.0, current_ripple_pct=2.0, jitter_s=0.02, drop_rate=0.002)


@dataclass
class SupplyFaults:
    """Injected supply faults: lost phases (0-based), per-phase offsets (V), total outage."""

    lost: set[int] = field(default_factory=set)
    offset_v: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    outage: bool = False
    offset_hz: float = 0.0


class Supply:
    """The three-phase grid connection: nominal voltage with a slow, seeded random walk,
    a drop proportional to the load current, and injected faults."""

    def __init__(self, nominal_v: float, rng: random.Random):
        self.nominal_v = nominal_v
        self.rng = rng
        self.drift_v = [rng.uniform(-1.0, 1.0) for _ in range(3)]
        self.drift_hz = 0.0
        self.faults = SupplyFaults()

    def advance(self) -> None:
        """Move the random walk one tick (bounded to ±2 V and ±0.05 Hz)."""
        for k in range(3):
            self.drift_v[k] = max(-2.0, min(2.0, self.drift_v[k] + self.rng.gauss(0, 0.15)))
        self.drift_hz = max(-0.05, min(0.05, self.drift_hz + self.rng.gauss(0, 0.005)))

    def voltages(self, currents: list[float]) -> list[float]:
        """Phase-to-neutral voltages under the given load, after faults, to 0.1 V."""
        out = []
        for k in range(3):
            if self.faults.outage or k in self.faults.lost:
                out.append(0.0)
                continue
            v = self.nominal_v + self.drift_v[k] - SUPPLY_IMPEDANCE_OHM * currents[k]
            out.append(round(max(0.0, v + self.faults.offset_v[k]), 1))
        return out

    def frequency(self, voltages: list[float]) -> float:
        """Supply frequency; a meter with no voltage at all measures none."""
        if not any(voltages):
            return 0.0
        return round(NOMINAL_HZ + self.drift_hz + self.faults.offset_hz, 2)


def electrical_values(
    voltages: list[float], currents: list[float], pf: float, frequency_hz: float
) -> dict[str, float]:
    """What a three-phase meter computes from phase voltages and currents at power factor pf."""
    out: dict[str, float] = {"frequency_hz": frequency_hz}
    sin = math.sqrt(max(0.0, 1 - pf * pf))
    p_sum = s_sum = q_sum = 0.0
    for k in range(3):
        v, i = voltages[k], currents[k]
        n = k + 1
        s = v * i
        p, q = round(s * pf, 1), round(s * sin, 1)
        out[f"voltage_l{n}"] = v
        out[f"current_l{n}"] = i
        out[f"power_l{n}_w"] = p
        out[f"apparent_power_l{n}_va"] = round(s, 1)
        out[f"reactive_power_l{n}_var"] = q
        out[f"power_factor_l{n}"] = pf if i > 0 else 1.0
        p_sum, s_sum, q_sum = p_sum + p, s_sum + s, q_sum + q
    for a, b in ((1, 2), (2, 3), (3, 1)):
        va, vb = voltages[a - 1], voltages[b - 1]
        # Phasors 120° apart: |Va - Vb| = sqrt(Va² + Vb² + Va·Vb).
        out[f"voltage_l{a}_l{b}"] = round(math.sqrt(va * va + vb * vb + va * vb), 1)
    i1, i2, i3 = currents
    out["current_n"] = round(
        math.sqrt(max(0.0, i1 * i1 + i2 * i2 + i3 * i3 - i1 * i2 - i2 * i3 - i3 * i1)), 2
    )
    out["power_w"] = round(p_sum, 1)
    out["apparent_power_va"] = round(s_sum, 1)
    out["reactive_power_var"] = round(q_sum, 1)
    out["power_factor"] = round(p_sum / s_sum, 3) if s_sum > 0 else 1.0
    return out


@dataclass
class Meter:
    """Energy registers that integrate power into exact integer Wh.

    The sub-Wh remainder is kept as an exact Fraction of watt-seconds, so a million ticks
    add up to exactly the integral of the power shown, with no float drift.
    """

    import_wh: int = 0
    phase_wh: list[int] = field(default_factory=lambda: [0, 0, 0])
    reactive_varh: int = 0
    _rem_ws: Fraction = Fraction(0)
    _phase_rem_ws: list[Fraction] = field(default_factory=lambda: [Fraction(0)] * 3)
    _reactive_rem: Fraction = Fraction(0)

    def integrate(self, values: dict[str, float], dt: float) -> None:
        """Add `dt` seconds of the powers in `values` (from electrical_values)."""
        if dt <= 0:
            return
        t = Fraction(dt)
        total = Fraction(0)
        for k in range(3):
            e = Fraction(values[f"power_l{k + 1}_w"]) * t
            total += e
            self._phase_rem_ws[k] += e
            whole = int(self._phase_rem_ws[k] // 3600)
            self.phase_wh[k] += whole
            self._phase_rem_ws[k] -= whole * 3600
        self._rem_ws += total
        whole = int(self._rem_ws // 3600)
        self.import_wh += whole
        self._rem_ws -= whole * 3600
        self._reactive_rem += Fraction(values["reactive_power_var"]) * t
        whole = int(self._reactive_rem // 3600)
        self.reactive_varh += whole
        self._reactive_rem -= whole * 3600

    def energy_values(self) -> dict[str, int]:
        """The true counters as canonical quantities (before any energy fault)."""
        return {
            "energy_import_wh": self.import_wh,
            "energy_export_wh": 0,
            "energy_total_wh": self.import_wh,
            "energy_import_l1_wh": self.phase_wh[0],
            "energy_import_l2_wh": self.phase_wh[1],
            "energy_import_l3_wh": self.phase_wh[2],
            "reactive_energy_import_varh": self.reactive_varh,
            "reactive_energy_export_varh": 0,
        }
