"""Run the agent's pollers and the diagnosis engine against the simulator in virtual time.

The devices are the simulator's real Modbus servers on loopback and the pollers are the
agent's own (`build_station`); only time is virtual: each step advances the simulated
station by `dt` (SimStation.step), polls the devices that are due by the agent's own
schedule and backoff (PolledDevice.next_due), and evaluates the engine on the same
virtual clock. A minute of station life takes well under a second, so scenarios and long
clean runs fit in the test suite. (bench/fault_latency.py measures real time instead.)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from agent.bus import EventBus
from agent.config import StationConfig
from agent.diagnosis.engine import DiagnosisEngine
from agent.diagnosis.facts import ManualFacts
from agent.diagnosis.rules import load_rules
from agent.diagnosis.store import FaultLog
from agent.events import (
    READINGS,
    DeviceHealth,
    Event,
    FaultCleared,
    FaultLatch,
    FaultRaised,
    utcnow,
)
from agent.sessions.evse import EvseControl
from agent.station import build_station
from drivers.device import Device
from drivers.transport import ModbusFailure
from hil.models import Noise
from hil.serial_pair import SerialPair
from hil.station import SimStation


class SimRig:
    """Simulator + the agent's pollers + the diagnosis engine, on one virtual clock."""

    def __init__(
        self,
        cfg: StationConfig,
        *,
        serial_ports: dict[str, str] | None = None,
        noise: Noise | None = None,
        seed: int = 0,
        dt: float = 0.5,
        facts: ManualFacts | None = None,
        fault_log: FaultLog | None = None,
        poll_jitter_s: float = 0.0,
    ):
        self.cfg = cfg
        self.dt = dt
        self.poll_jitter_s = poll_jitter_s
        self._rng = random.Random(f"{seed}:rig")
        self.t0 = utcnow()
        self.elapsed = 0.0
        self.sim = SimStation(cfg, serial_ports, seed=seed, tick_s=None, noise=noise)
        self.bus = EventBus()
        self.station = build_station(cfg, self.bus)
        self.facts = facts or ManualFacts()
        self.facts.cloud.since = self.t0
        profiles = {n: d.profile for n, d in self.station.devices.items()}
        rules = load_rules(cfg.diagnosis.rules_dir)
        self.connectors = ScenarioConnectors(cfg, self.station.devices, self.now)
        self.engine = DiagnosisEngine(
            cfg, rules, profiles, self.facts, self.now, cfg.diagnosis, self.connectors
        )
        self.fault_log = fault_log
        self._sub = self.bus.subscribe(*READINGS, DeviceHealth)
        self.events: list[FaultRaised | FaultLatch | FaultCleared] = []
        self.listeners: list[Callable[[Event], None]] = []
        self.driver = RigDriver(self)

    def now(self) -> datetime:
        """The virtual clock (UTC)."""
        return self.t0 + timedelta(seconds=self.elapsed)

    async def __aenter__(self) -> SimRig:
        await self.sim.start()
        if self.fault_log is not None:
            records = self.fault_log.active()
            latches = {r.raised.fault_id: r.latch for r in records if r.latch is not None}
            self._emit(list(self.engine.restore([r.raised for r in records], latches)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.station.pollers:
            p.link.close()
        await self.sim.stop()

    async def step(self) -> list[Event]:
        """One tick: advance the model and the clock, poll what is due, diagnose."""
        self.sim.step(self.dt)
        self.elapsed += self.dt
        await self.poll_due()
        self.engine.ingest_many(self._drain())
        out = self.engine.evaluate()
        self._emit(out)
        return out

    async def poll_due(self) -> None:
        """Poll every device whose (virtual) due time has come, in the agent's order."""
        for poller in self.station.pollers:
            for pd in sorted(poller.devices, key=lambda p: p.due):
                if pd.due <= self.elapsed:
                    await poller.poll(pd)
                    jitter = self._rng.uniform(0, self.poll_jitter_s) if self.poll_jitter_s else 0
                    pd.due = pd.next_due(self.elapsed) + jitter

    def _drain(self) -> list[Event]:
        out = []
        while (ev := self._sub.get_nowait()) is not None:
            out.append(ev)
        return out

    def _emit(self, events: list[Any]) -> None:
        for e in events:
            self.events.append(e)
            for listener in self.listeners:
                listener(e)
        if self.fault_log is not None and events:
            self.fault_log.record_many(events)

    async def run(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass."""
        end = self.elapsed + seconds
        while self.elapsed < end - 1e-9:
            await self.step()

    async def until(self, done: Callable[[], Any], within_s: float) -> Any:
        """Step until `done()` returns something truthy (returned) or `within_s` passed."""
        end = self.elapsed + within_s
        while True:
            got = done()
            if got:
                return got
            if self.elapsed >= end:
                return None
            await self.step()

    # ------------------------------------------------------------------ lookups

    def raised(self, rule: str, scope: str | None = None) -> list[FaultRaised]:
        """FaultRaised events of `rule` (on `scope`) so far."""
        return [
            e
            for e in self.events
            if isinstance(e, FaultRaised) and e.rule == rule and scope in (None, e.scope)
        ]

    def cleared(self, fault_id: str) -> FaultCleared | None:
        """The FaultCleared of `fault_id`, if it came."""
        return next(
            (e for e in self.events if isinstance(e, FaultCleared) and e.fault_id == fault_id),
            None,
        )

    def latch(self, fault_id: str) -> FaultLatch | None:
        """The last FaultLatch of `fault_id`, if any came."""
        return next(
            (
                e
                for e in reversed(self.events)
                if isinstance(e, FaultLatch) and e.fault_id == fault_id
            ),
            None,
        )

    def clear_manual(self, fault_id: str, note: str = "") -> FaultCleared:
        """A technician clears `fault_id` (as `evedge faults clear` does)."""
        cleared = self.engine.clear_manual(fault_id, "test", note)
        self._emit([cleared])
        return cleared

    def evse(self, connector: int) -> Device:
        """The agent's driver of the connector's EVSE controller."""
        c = next(c for c in self.cfg.connector if c.id == connector)
        assert c.evse is not None
        return self.station.devices[c.evse]


class RigDriver:
    """The scenario Driver of a SimRig (hil/scenarios/base.py)."""

    def __init__(self, rig: SimRig):
        self.rig = rig

    async def plug_in(
        self, connector: int, amps: float | None = None, phases: int = 3, vehicle: str | None = None
    ) -> None:
        self.rig.sim.plug_in(connector, amps, phases)
        self.rig.connectors.plugged(connector, vehicle)
        await self.rig.step()

    async def authorize(self, connector: int, amps: float = 32.0) -> None:
        await self.rig.connectors.switch(connector, True, amps)
        await self.rig.step()

    async def stop(self, connector: int) -> None:
        await self.rig.connectors.switch(connector, False)
        await self.rig.step()

    async def unplug(self, connector: int) -> None:
        self.rig.sim.unplug(connector)
        self.rig.connectors.plugged(connector, None)
        await self.rig.step()

    async def suspend(self, connector: int, suspended: bool) -> None:
        self.rig.sim.ev_suspend(connector, suspended)
        await self.rig.step()

    async def inject(self, fault: dict[str, Any]) -> str:
        return self.rig.sim.inject(fault)

    async def clear(self) -> None:
        self.rig.sim.clear()

    def set_facts(self, **facts: Any) -> None:
        offline = facts.pop("cloud_offline_s", None)
        if offline is not None:
            facts["cloud_configured"] = True
            facts["cloud_last_contact"] = self.rig.now() - timedelta(seconds=offline)
        self.rig.facts.set(**facts)

    async def wait(self, seconds: float) -> None:
        await self.rig.run(seconds)


class ScenarioConnectors:
    """The diagnosis' ConnectorFacts in a scenario run: the scenario switches the EVSEs
    through the session engine's own EvseControl (on the run's clock, so "charging off
    since" is virtual time in a SimRig) and names the vehicle it plugs in."""

    def __init__(
        self, cfg: StationConfig, devices: dict[str, Device], clock: Callable[[], datetime]
    ):
        self.controls = {c.id: EvseControl(devices[c.evse], clock) for c in cfg.connector if c.evse}
        self.vehicles: dict[int, str] = {}

    def plugged(self, connector: int, vehicle: str | None) -> None:
        """A vehicle (its identity, if the scenario gives one) plugged in; None: it left."""
        if vehicle is None:
            self.vehicles.pop(connector, None)
        else:
            self.vehicles[connector] = vehicle

    async def switch(self, connector: int, on: bool, amps: float = 32.0, attempts: int = 3) -> None:
        """Enable (offer `amps`) or disable an EVSE the way the session engine does; a
        switch whose answer is lost is tried again (writes are idempotent)."""
        control = self.controls[connector]
        for attempt in range(attempts):
            try:
                await (control.enable(amps) if on else control.disable())
                return
            except ModbusFailure:
                if attempt == attempts - 1:
                    raise

    def charging_disabled_since(self, connector: int) -> datetime | None:
        """When the scenario switched the connector off (read back), None while on."""
        control = self.controls.get(connector)
        return None if control is None else control.disabled_since

    def vehicle(self, connector: int) -> str | None:
        """The identity the scenario gave the plugged vehicle."""
        return self.vehicles.get(connector)


@contextlib.asynccontextmanager
async def scenario_rig(station: str, **kwargs: Any):
    """A started SimRig on one of hil/scenarios/stations.py's stations (serial pair
    included for the rtu one). Extra kwargs go to station_config (diagnosis=...) and
    SimRig (noise=, seed=, dt=, facts=, fault_log=, poll_jitter_s=)."""
    from hil.scenarios.stations import station_config

    cfg_keys = {"store", "timeout_s", "retries", "diagnosis", "extra"}
    cfg_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in cfg_keys}
    pair = None
    ports = None
    if station == "rtu":
        pair = SerialPair()
        agent_end, sim_end = pair.start()
        cfg_kw["rtu_port"] = agent_end
        ports = {"rs485": sim_end}
    try:
        cfg = station_config(station, **cfg_kw)
        async with SimRig(cfg, serial_ports=ports, **kwargs) as rig:
            yield rig
    finally:
        if pair is not None:
            pair.stop()
