"""What rule conditions see: device readings and health, scopes, thresholds, station facts.

The engine keeps one `DeviceState` per configured device, fed by the bus. A rule runs once
per `Scope` instance (a connector, a device, a bus, the station); `ScopeEnv` resolves the
condition's names for that instance at one moment and notes every value it hands out as
evidence. Only fresh, good readings are values: a reading older than the device's stale
limit, or one the device reported as not available, is unknown (None).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.config import StationConfig
from agent.diagnosis.codes import UNMAPPED
from agent.diagnosis.config import DiagnosisConfig
from agent.diagnosis.expr import Ref, Value
from agent.events import DeviceHealth, Evidence, HealthState, Quality, Reading
from drivers import quantities
from drivers.profile import Profile

# Gateway answers meaning "the device behind me said nothing" count as no answer.
NO_ANSWER_EXCEPTIONS = (10, 11)
MIN_STALE_S = 3.0


# ------------------------------------------------------------------------------ history


class History:
    """Recent values of one reading as change points: (first time seen, value).

    Storing changes only keeps a flat register cheap, and makes `rate` measure from when the
    value last changed, so a register that catches up after standing still is not mistaken
    for a jump.
    """

    def __init__(self, keep_s: float):
        self.keep_s = keep_s
        self.points: deque[tuple[float, Any]] = deque()
        self.start: float | None = None

    def add(self, t: float, value: Any) -> None:
        """Record `value` read at engine time `t` (a repeat only extends the last point)."""
        if self.start is None:
            self.start = t
        if not self.points or self.points[-1][1] != value:
            self.points.append((t, value))
        # Keep the point in force at now - keep_s (it is the window's reference).
        while len(self.points) > 1 and self.points[1][0] <= t - self.keep_s:
            self.points.popleft()
            self.start = max(self.start, self.points[0][0])

    def at(self, when: float) -> tuple[float, Any] | None:
        """The change point in force at `when` (None before the history began)."""
        if self.start is None or when < self.start:
            return None
        found = None
        for p in self.points:
            if p[0] > when:
                break
            found = p
        return found

    def window(self, now: float, seconds: float) -> list[Any] | None:
        """Every value in force during [now - seconds, now], or None if not covered."""
        ref = self.at(now - seconds)
        if ref is None:
            return None
        return [ref[1], *(v for t, v in self.points if t > now - seconds)]


# --------------------------------------------------------------------------- devices


@dataclass
class HealthSample:
    t: float
    polls: int
    timeouts: int
    crc_errors: int
    exceptions: dict[int, int]


@dataclass
class DeviceState:
    """Everything the engine knows about one device."""

    name: str
    kind: str  # meter | evse
    bus: str
    profile: Profile | None
    stale_after_s: float
    window_s: float
    keep: dict[str, float] = field(default_factory=dict)  # quantity -> history kept (s)
    latest: dict[str, tuple[Value, float, datetime]] = field(default_factory=dict)
    na_since: dict[str, tuple[float, datetime]] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)
    health: DeviceHealth | None = None
    health_t: float = 0.0
    health_hist: deque[HealthSample] = field(default_factory=deque)
    # Engine time the current run of clean cycles (every request answered) began.
    clean_since: float | None = None

    def ingest_reading(self, r: Reading, t: float) -> None:
        """Take one reading that arrived at engine time `t`."""
        if r.quality != Quality.GOOD or r.value is None:
            self.latest.pop(r.quantity, None)
            self.na_since.setdefault(r.quantity, (t, r.ts))
            return
        self.na_since.pop(r.quantity, None)
        self.latest[r.quantity] = (r.value, t, r.ts)
        keep = self.keep.get(r.quantity)
        if keep is not None:
            hist = self.histories.get(r.quantity)
            if hist is None:
                hist = self.histories[r.quantity] = History(keep)
            hist.add(t, r.value)

    def latest_t(self, quantity: str, default: float | None = 0.0) -> float | None:
        """Engine time the last good reading of `quantity` arrived (`default` if none)."""
        entry = self.latest.get(quantity)
        return entry[1] if entry else default

    def ingest_health(self, h: DeviceHealth, t: float) -> None:
        """Take one health report that arrived at engine time `t`."""
        self.health, self.health_t = h, t
        # A cycle with an error: DEGRADED, or aborted (which leaves OK standing until the
        # device counts as offline).
        if h.state != HealthState.OK or h.consecutive_failures:
            self.clean_since = None
        elif self.clean_since is None:
            self.clean_since = t
        self.health_hist.append(
            HealthSample(t, h.polls, h.timeouts, h.crc_errors, dict(h.exceptions))
        )
        while len(self.health_hist) > 1 and self.health_hist[1].t <= t - self.window_s:
            self.health_hist.popleft()

    def fresh(self, quantity: str, now: float) -> tuple[Value, datetime] | None:
        """(value, measured at) of a good reading no older than the stale limit."""
        entry = self.latest.get(quantity)
        if entry is None or now - entry[1] > self.stale_after_s:
            return None
        return entry[0], entry[2]

    def decoded_fault(self, now: float) -> tuple[str, int, str] | None:
        """(canonical fault, vendor code, vendor text) of the EVSE's error register."""
        got = self.fresh("evse_error_code", now)
        if got is None or self.profile is None:
            return None
        code = int(got[0])
        meaning = self.profile.error_codes.get(code)
        if meaning is None:
            return UNMAPPED, code, f"code {code} not in profile {self.profile.name}"
        return meaning.fault, code, meaning.text

    def health_field(self, name: str, now: float) -> Value:
        """A health figure; counters are differences over the health window."""
        h = self.health
        if name == "seen":
            return h is not None
        if h is None:
            return None
        if name == "state":
            return h.state.value
        if name == "failing":
            return h.consecutive_failures > 0
        if name == "consecutive_failures":
            return h.consecutive_failures
        if name == "latency_ms":
            return h.latency_ms
        if name == "clean_s":
            return 0.0 if self.clean_since is None else round(now - self.clean_since, 3)
        first, last = self.health_hist[0], self.health_hist[-1]
        # The sample in force at the start of the window is the baseline; a history younger
        # than the window counts from zero, as the poller's counters start with the agent.
        base = first if first.t <= now - self.window_s else None
        polls = last.polls - (base.polls if base else 0)
        if name == "polls":
            return polls
        if name == "no_answer":
            gw = sum(last.exceptions.get(c, 0) for c in NO_ANSWER_EXCEPTIONS)
            gw0 = sum(base.exceptions.get(c, 0) for c in NO_ANSWER_EXCEPTIONS) if base else 0
            return last.timeouts - (base.timeouts if base else 0) + gw - gw0
        frames = last.crc_errors - (base.crc_errors if base else 0)
        if name == "frame_errors":
            return frames
        if name == "frame_error_rate":
            return frames / polls if polls > 0 else None
        if name.startswith("exceptions_"):
            code = int(name.removeprefix("exceptions_"))
            return last.exceptions.get(code, 0) - (base.exceptions.get(code, 0) if base else 0)
        raise KeyError(name)


# ---------------------------------------------------------------------------- scopes


@dataclass(frozen=True)
class Scope:
    """One place a rule is evaluated: a connector, a device, a bus, or the station."""

    key: str  # "connector:1", "device:meter1", "bus:lan", "station"
    kind: str
    devices: frozenset[str]
    connectors: tuple[int, ...]
    roles: tuple[tuple[str, str], ...] = ()  # (role, device) e.g. ("meter", "meter1")
    labels: tuple[tuple[str, str], ...] = ()  # placeholder values for texts
    thresholds: tuple[tuple[str, float], ...] = ()

    def role(self, name: str) -> str | None:
        """The device playing `name` (evse, meter, device) in this scope."""
        return self.role_map.get(name)

    # Built once per scope, not per lookup: every name in every condition goes through them.
    @functools.cached_property
    def role_map(self) -> dict[str, str]:
        """role -> device."""
        return dict(self.roles)

    @functools.cached_property
    def threshold_map(self) -> dict[str, float]:
        """threshold name -> value (cfg.* in conditions)."""
        return dict(self.thresholds)

    def related(self, other: Scope) -> bool:
        """True if the two scopes share a device (the station relates to everything)."""
        return "station" in (self.kind, other.kind) or bool(self.devices & other.devices)


def build_scopes(cfg: StationConfig, dcfg: DiagnosisConfig, kinds: dict[str, str]) -> list[Scope]:
    """Every scope instance of a station; `kinds` maps device name -> meter / evse."""
    base = dcfg.thresholds()
    station_t = tuple(base.items())
    scopes: list[Scope] = []
    # A meter shared by connectors carries all of them: its power limit is their sum.
    meter_of = {c.id: (c.meter or c.evse) for c in cfg.connector}
    for c in cfg.connector:
        meter = meter_of[c.id]
        sharing = [x for x in cfg.connector if meter_of[x.id] == meter]
        max_power = sum(dcfg.nominal_voltage_v * x.max_current_a * x.phases for x in sharing)
        roles = tuple((r, d) for r, d in (("evse", c.evse), ("meter", meter)) if d)
        scopes.append(
            Scope(
                key=f"connector:{c.id}",
                kind="connector",
                devices=frozenset(d for _, d in roles),
                connectors=(c.id,),
                roles=roles,
                labels=(
                    ("connector", str(c.id)),
                    ("evse", c.evse or "-"),
                    ("meter", meter or "-"),
                ),
                thresholds=(
                    *station_t,
                    ("max_current_a", c.max_current_a),
                    ("phases", float(c.phases)),
                    ("max_power_w", max_power),
                ),
            )
        )
    using = {
        d.name: tuple(c.id for c in cfg.connector if d.name in (c.evse, c.meter))
        for d in cfg.device
    }
    for d in cfg.device:
        scopes.append(
            Scope(
                key=f"device:{d.name}",
                kind="device",
                devices=frozenset({d.name}),
                connectors=using[d.name],
                roles=(("device", d.name),),
                labels=(("device", d.name), ("bus", d.bus), ("kind", kinds.get(d.name, "?"))),
                thresholds=station_t,
            )
        )
    for b in cfg.bus:
        names = [d.name for d in cfg.device if d.bus == b.name]
        if not names:
            continue
        scopes.append(
            Scope(
                key=f"bus:{b.name}",
                kind="bus",
                devices=frozenset(names),
                connectors=tuple(sorted({c for n in names for c in using[n]})),
                labels=(("bus", b.name), ("devices", ", ".join(names))),
                thresholds=station_t,
            )
        )
    scopes.append(
        Scope(
            key="station",
            kind="station",
            devices=frozenset(d.name for d in cfg.device),
            connectors=tuple(c.id for c in cfg.connector),
            labels=(("station", cfg.station.id),),
            thresholds=station_t,
        )
    )
    return scopes


# ------------------------------------------------------------------------------- env


class ScopeEnv:
    """The names of one scope at one moment; records what it hands out as evidence."""

    def __init__(
        self,
        scope: Scope,
        devices: dict[str, DeviceState],
        bus_kinds: dict[str, str],
        facts: dict[str, Value],
        sessions: dict[int, dict[str, Value]],
        now: float,
    ):
        self.scope = scope
        self.devices = devices
        self.bus_kinds = bus_kinds
        self.facts = facts
        self.sessions = sessions
        self.now = now
        self.thresholds = scope.threshold_map
        # name -> (value, unit, device, measured at); Evidence models only when raising
        self.evidence: dict[str, tuple[Value, str, str | None, datetime | None]] = {}
        # The earliest engine time a value handed out changes by time alone (a look-back
        # window's edge, `unavailable(q) > 30` reached): the engine wakes then.
        self.wake: float | None = None

    # The Env protocol -----------------------------------------------------------------

    def lookup(self, ref: Ref) -> Value:
        """Value of a name (see rules.py for the catalogue)."""
        root = ref.root
        if root == "cfg":
            return self.thresholds.get(ref.parts[1])
        if root == "station":
            return self._note(f"station.{ref.parts[1]}", self.facts.get(ref.parts[1]))
        if root == "bus":
            return self._note(f"{self.scope.key}.{ref.parts[1]}", self._bus(ref.parts[1]))
        if root == "session":
            return self._session(ref.parts[1])
        if root == "health":
            dev = self._device(ref.parts[1])
            if dev is None:
                return None
            v = dev.health_field(ref.parts[2], self.now)
            when = dev.health.ts if dev.health else None
            return self._note(f"health.{dev.name}.{ref.parts[2]}", v, device=dev.name, ts=when)
        dev = self._device(root)
        if dev is None:
            return None
        q = ref.parts[1]
        if q in ("fault", "code", "code_text"):
            decoded = dev.decoded_fault(self.now)
            got = self.fresh(dev, "evse_error_code")
            v = None if decoded is None else decoded[("fault", "code", "code_text").index(q)]
            return self._note(f"{dev.name}.{q}", v, device=dev.name, ts=got[1] if got else None)
        got = self.fresh(dev, q)
        unit = quantities.QUANTITIES[q].unit
        if got is None:
            return self._note(f"{dev.name}.{q}", None, unit, dev.name)
        return self._note(f"{dev.name}.{q}", got[0], unit, dev.name, got[1])

    def reading_fn(self, fn: str, ref: Ref, seconds: float | None) -> Value:
        """age / unavailable / delta / rate / min_over / max_over of a reading."""
        dev = self._device(ref.root)
        if dev is None:
            return None
        q = ref.parts[1]
        label = f"{fn}({dev.name}.{q}" + (f", {seconds:g}s)" if seconds else ")")
        value = self._reading_fn(dev, fn, q, seconds)
        unit = "s" if fn in ("age", "unavailable") else quantities.QUANTITIES[q].unit
        if fn == "rate":
            unit += "/s"
        return self._note(label, value, unit, dev.name)

    def wake_in(self, seconds: float) -> None:
        """See Env.wake_in; 1 ms later, when `>` has turned too (values are rounded to ms)."""
        self._wake_at(self.now + max(seconds, 0.0) + 0.001)

    # helpers ----------------------------------------------------------------------------

    def _wake_at(self, t: float) -> None:
        if self.wake is None or t < self.wake:
            self.wake = t

    def fresh(self, dev: DeviceState, q: str) -> tuple[Value, datetime] | None:
        """(value, measured at) of a fresh good reading of `dev`, now."""
        return dev.fresh(q, self.now)

    def _reading_fn(self, dev: DeviceState, fn: str, q: str, seconds: float | None) -> Value:
        now = self.now
        if fn == "age":
            t = dev.latest_t(q, default=None)
            return None if t is None else round(now - t, 3)
        if fn == "unavailable":
            if q in dev.na_since:
                return round(now - dev.na_since[q][0], 3)
            return 0.0 if q in dev.latest else None
        current = dev.fresh(q, now)
        hist = dev.histories.get(q)
        if current is None or hist is None or seconds is None:
            return None
        self._window_edge(hist, seconds)
        if fn in ("min_over", "max_over"):
            values = hist.window(now, seconds)
            if not values:
                return None
            return min(values) if fn == "min_over" else max(values)
        ref = hist.at(now - seconds)
        if ref is None:
            return None
        diff = current[0] - ref[1]  # type: ignore[operator]
        if fn == "delta":
            return diff
        span = now - ref[0]
        return diff / span if span > 0 else None

    def _window_edge(self, hist: History, seconds: float) -> None:
        """Wake when the window first covers `seconds` of history, and when the last change
        leaves it: if the reading stays as it is, that is when delta() turns 0 and
        min_over()/max_over() settle (a frozen register between two polls). Earlier
        changes leave it while readings still arrive, which evaluate anyway."""
        for t in (hist.start, hist.points[-1][0] if hist.points else None):
            if t is not None and t + seconds > self.now:
                self._wake_at(t + seconds)

    def _device(self, role: str) -> DeviceState | None:
        name = self.scope.role(role)
        return self.devices.get(name) if name else None

    def _bus(self, name: str) -> Value:
        devs = [self.devices[d] for d in sorted(self.scope.devices) if d in self.devices]
        if name == "devices":
            return len(devs)
        if name == "kind":
            return self.bus_kinds.get(self.scope.key.removeprefix("bus:"))
        if name == "failing":
            return sum(1 for d in devs if d.health and d.health.consecutive_failures > 0)
        if name == "offline":
            return sum(1 for d in devs if d.health and d.health.state == HealthState.OFFLINE)
        if name == "answering":
            return sum(1 for d in devs if d.health and d.health.consecutive_failures == 0)
        if name == "frame_errors":
            return sum(int(d.health_field("frame_errors", self.now) or 0) for d in devs)
        raise KeyError(name)

    def _session(self, name: str) -> Value:
        (cid,) = self.scope.connectors
        facts = self.sessions.get(cid, {})
        if name == "active":
            return facts.get("charging") is not None
        if name == "charging":
            return facts.get("charging")
        unit = "s" if name.endswith("_s") else ""
        return self._note(f"{self.scope.key}.{name}", facts.get(name), unit)

    def _note(
        self,
        name: str,
        value: Value,
        unit: str = "",
        device: str | None = None,
        ts: datetime | None = None,
    ) -> Value:
        self.evidence[name] = (value, unit, device, ts)
        return value

    def evidence_list(self) -> list[Evidence]:
        """What this evaluation looked at, as Evidence (floats rounded for reading)."""
        return [
            Evidence(
                name=name,
                value=round(v, 4) if isinstance(v, float) else v,
                unit=unit,
                device=device,
                ts=when,
            )
            for name, (v, unit, device, when) in self.evidence.items()
        ]

    def labels(self) -> dict[str, str]:
        """Placeholder values for the rule's texts (EVSE code fields when known)."""
        out = dict(self.scope.labels)
        evse = self._device("evse")
        if evse is not None:
            decoded = evse.decoded_fault(self.now)
            out["code"] = str(decoded[1]) if decoded else "-"
            out["code_text"] = decoded[2] if decoded else "no code"
            out["manufacturer"] = evse.profile.manufacturer if evse.profile else "the vendor"
        return out


def stale_after(interval_s: float) -> float:
    """How old a device's reading may be and still count: three poll intervals (min 3 s)."""
    return max(3 * interval_s, MIN_STALE_S)


def device_states(
    cfg: StationConfig,
    dcfg: DiagnosisConfig,
    profiles: dict[str, Profile],
    keep: dict[str, float],
) -> dict[str, DeviceState]:
    """One DeviceState per configured device; `keep` is the history each quantity needs."""
    return {
        d.name: DeviceState(
            name=d.name,
            kind=profiles[d.name].kind if d.name in profiles else "?",
            bus=d.bus,
            profile=profiles.get(d.name),
            stale_after_s=stale_after(d.interval_s),
            window_s=dcfg.health_window_s,
            keep=dict(keep),
        )
        for d in cfg.device
    }
