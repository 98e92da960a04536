"""Pollers: one task per link schedules every device on it; links run concurrently.

An RS-485 line carries one request at a time, so its devices are polled one after the
other in due-time order; each TCP endpoint is its own link and polls alongside the others.
A device that stops answering backs off (interval doubling up to a cap) and publishes no
readings: stale is a health state, never a value with a fresh timestamp.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field

import structlog

from agent.bus import EventBus
from agent.events import DeviceHealth, DeviceReadings, HealthState, utcnow
from drivers import quantities as quantities_registry
from drivers.device import CycleResult, Device
from drivers.transport import Link, ModbusFailure

log = structlog.get_logger(__name__)

MAX_BACKOFF_S = 30.0


@dataclass
class HealthTracker:
    """Mutable health counters of one device; `event()` snapshots them for the bus."""

    device: str
    bus: str
    offline_after: int = 3
    state: HealthState = HealthState.UNKNOWN
    last_good: object = None
    latency_ms: float | None = None
    consecutive_failures: int = 0
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: dict[int, int] = field(default_factory=dict)
    last_error: str | None = None

    def record(self, result: CycleResult) -> bool:
        """Account one cycle; returns True if the state changed."""
        self.polls += 1
        for f in result.failures:
            if f.kind == "timeout":
                self.timeouts += 1
            elif f.kind == "bad_frame":
                self.crc_errors += 1
            elif f.kind == "exception" and f.code is not None:
                self.exceptions[f.code] = self.exceptions.get(f.code, 0) + 1
        if result.failures:
            self.last_error = str(result.failures[-1])
        before = self.state
        if result.aborted:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.offline_after:
                self.state = HealthState.OFFLINE
            elif self.state == HealthState.UNKNOWN:
                self.state = HealthState.DEGRADED
        else:
            self.consecutive_failures = 0
            if result.values or not result.failures:  # something was read
                self.last_good = utcnow()
                self.latency_ms = round(result.latency_s * 1000, 1)
            self.state = HealthState.DEGRADED if result.failures else HealthState.OK
        return self.state != before

    def event(self) -> DeviceHealth:
        return DeviceHealth(
            device=self.device,
            bus=self.bus,
            state=self.state,
            last_good=self.last_good,
            latency_ms=self.latency_ms,
            consecutive_failures=self.consecutive_failures,
            polls=self.polls,
            timeouts=self.timeouts,
            crc_errors=self.crc_errors,
            exceptions=dict(self.exceptions),
            last_error=self.last_error,
        )


@dataclass
class PolledDevice:
    """A device with its schedule and health."""

    device: Device
    interval_s: float
    health: HealthTracker
    due: float = 0.0
    identified: bool = False

    def next_due(self, now: float) -> float:
        if self.health.consecutive_failures:
            backoff = self.interval_s * 2 ** min(self.health.consecutive_failures, 8)
            return now + min(max(backoff, self.interval_s), MAX_BACKOFF_S)
        return now + self.interval_s


def readings_of(device: str, values: dict, ts) -> DeviceReadings:
    """A cycle's decoded values as one event, stamped with the read time."""
    return DeviceReadings(device=device, values=values, units=units_of(tuple(values)), ts=ts)


@functools.cache
def units_of(quantities: tuple[str, ...]) -> dict[str, str]:
    """quantity -> unit of a cycle's quantities (a device reads the same set every cycle)."""
    return {q: quantities_registry.get(q).unit for q in quantities}


class LinkPoller:
    """Owns one link and polls all its devices, one request at a time."""

    def __init__(self, link: Link, devices: list[PolledDevice], bus: EventBus, bus_name: str):
        self.link = link
        self.devices = devices
        self.bus = bus
        self.bus_name = bus_name
        # Set while a device is being polled (monotonic start time), None while waiting for
        # the next due time: the watchdog calls a poll that never ends a stuck poller.
        self.busy_since: float | None = None
        self.busy_device: str | None = None

    async def poll(self, pd: PolledDevice) -> CycleResult:
        """Poll one device once and publish its readings and health."""
        dev = pd.device
        refused: list[ModbusFailure] = []
        if not pd.identified:
            ident = await dev.read_identity()
            if ident.aborted:
                return self._account(pd, ident)
            # A refused identity read (04 busy, a split) is counted and asked for again next
            # poll; values the device does not have are unsupported by then.
            pd.identified = ident.ok
            refused = ident.failures
            if ident.values:
                self.bus.publish(readings_of(dev.name, ident.values, utcnow()))
        ts = utcnow()
        result = await dev.read_cycle()
        result.failures[:0] = refused
        if not result.aborted and result.values:
            self.bus.publish(readings_of(dev.name, result.values, ts))
        return self._account(pd, result)

    def _account(self, pd: PolledDevice, result: CycleResult) -> CycleResult:
        if result.aborted:
            pd.identified = False  # re-read identity after an outage: the meter may be new
        if pd.health.record(result):
            _log_health(pd, result)
        self.bus.publish(pd.health.event())
        return result

    async def run(self) -> None:
        """Poll forever in due-time order; cancel to stop."""
        log.info(
            "poller.start",
            link=self.link.name,
            devices=[p.device.name for p in self.devices],
        )
        try:
            while True:
                pd = min(self.devices, key=lambda p: p.due)
                wait = pd.due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.busy_since, self.busy_device = time.monotonic(), pd.device.name
                try:
                    await self.poll(pd)
                except Exception:
                    # A bug in decoding one device must not stop the others on the line.
                    log.exception("poller.device_crashed", device=pd.device.name)
                    pd.health.record(
                        CycleResult(failures=[ModbusFailure("bad_frame", "internal error")])
                    )
                self.busy_since = self.busy_device = None
                pd.due = pd.next_due(time.monotonic())
        finally:
            self.link.close()


def _log_health(pd: PolledDevice, result: CycleResult) -> None:
    h = pd.health
    fields = dict(
        device=h.device,
        bus=h.bus,
        link=pd.device.link.name,
        unit=pd.device.unit,
        state=h.state.value,
        consecutive_failures=h.consecutive_failures,
    )
    if h.state == HealthState.OK:
        log.info("device.ok", latency_ms=h.latency_ms, **fields)
    elif h.state == HealthState.OFFLINE:
        log.warning(
            "device.offline",
            error=h.last_error,
            hint="check power, wiring (A/B), unit id and serial settings of this device",
            **fields,
        )
    else:
        log.warning("device.degraded", error=h.last_error, **fields)
