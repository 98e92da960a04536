"""Scenarios in real time: the whole Agent (pollers, store, diagnosis) against the simulated
station ticking in real time, as `evedge run` would poll hardware.

The scenario Driver here acts through the agent's own device drivers (writes) and the
simulator (the world); bench/fault_latency.py uses it to time injection -> FaultRaised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from agent.config import StationConfig
from agent.diagnosis.facts import ManualFacts
from agent.events import FaultCleared, FaultRaised, utcnow
from agent.runtime import Agent
from hil.scenarios.rig import ScenarioConnectors
from hil.station import SimStation


class RealtimeStation:
    """A started SimStation (10 Hz model tick) and Agent, with manual station facts."""

    def __init__(
        self,
        cfg: StationConfig,
        serial_ports: dict[str, str] | None = None,
        tick_s: float = 0.1,
    ):
        self.cfg = cfg
        self.sim = SimStation(cfg, serial_ports, tick_s=tick_s)
        self.agent = Agent(cfg)
        assert self.agent.diagnosis is not None, "diagnosis is disabled in this config"
        self.facts = ManualFacts()
        # The station's real clock / disk say what this host says; scenarios set them.
        self.agent.diagnosis.engine.facts = self.facts
        # No session engine here: the scenario switches the EVSEs, on the wall clock.
        self.connectors = ScenarioConnectors(cfg, self.agent.station.devices, utcnow)
        self.agent.diagnosis.engine.connectors = self.connectors
        self.faults = self.agent.bus.subscribe(FaultRaised, FaultCleared)
        self.driver = RealtimeDriver(self)

    async def start(self) -> None:
        await self.sim.start()
        await self.agent.start()

    async def stop(self) -> None:
        await self.agent.stop()
        await self.sim.stop()


@contextlib.asynccontextmanager
async def realtime_station(
    cfg: StationConfig, serial_ports: dict[str, str] | None = None
) -> AsyncIterator[RealtimeStation]:
    """A running RealtimeStation, stopped on exit."""
    station = RealtimeStation(cfg, serial_ports)
    await station.start()
    try:
        yield station
    finally:
        await station.stop()


class RealtimeDriver:
    """The scenario Driver (hil/scenarios/base.py) of a RealtimeStation."""

    def __init__(self, station: RealtimeStation):
        self.s = station

    async def plug_in(
        self, connector: int, amps: float | None = None, phases: int = 3, vehicle: str | None = None
    ) -> None:
        self.s.sim.plug_in(connector, amps, phases)
        self.s.connectors.plugged(connector, vehicle)

    async def authorize(self, connector: int, amps: float = 32.0) -> None:
        await self.s.connectors.switch(connector, True, amps)

    async def stop(self, connector: int) -> None:
        await self.s.connectors.switch(connector, False)

    async def unplug(self, connector: int) -> None:
        self.s.sim.unplug(connector)
        self.s.connectors.plugged(connector, None)

    async def suspend(self, connector: int, suspended: bool) -> None:
        self.s.sim.ev_suspend(connector, suspended)

    async def inject(self, fault: dict[str, Any]) -> str:
        return self.s.sim.inject(fault)

    async def clear(self) -> None:
        self.s.sim.clear()

    def set_facts(self, **facts: Any) -> None:
        offline = facts.pop("cloud_offline_s", None)
        if offline is not None:
            facts["cloud_configured"] = True
            facts["cloud_last_contact"] = utcnow() - timedelta(seconds=offline)
        self.s.facts.set(**facts)

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
