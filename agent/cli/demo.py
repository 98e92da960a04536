"""`evedge demo`: the whole agent against the simulated station, cars charging back to back.

The simulated station (hil/) serves the config's devices on loopback; the agent polls them
exactly as it polls hardware. A script plays the driver: plug in, authorize (the agent
enables the EVSE and sets the offered current through the driver layer, verified by
read-back), charge, stop, unplug, pause — per connector, for as long as the demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from rich.live import Live

from agent.cli.common import console, emit_json
from agent.cli.live import LiveState, render
from agent.config import ConnectorConfig, StationConfig
from agent.events import DeviceHealth, Reading, utcnow
from agent.runtime import Agent
from drivers.device import Device
from drivers.transport import ModbusFailure
from hil.station import SimStation

log = structlog.get_logger(__name__)


class DemoDriver:
    """Plays the driver and the authorizer on one connector, session after session."""

    def __init__(self, agent: Agent, sim: SimStation, connector: ConnectorConfig, state: LiveState):
        self.agent = agent
        self.sim = sim
        self.c = connector
        self.state = state
        self.sessions = 0

    def _say(self, text: str) -> None:
        self.state.note(f"connector {self.c.id}: {text}")

    async def _wait_cp(self, want: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.state.value(self.c.evse, "cp_state") in want:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _enable(self, evse: Device, on: bool) -> None:
        current = self.c.max_current_a if on else 0
        quantities = {r.quantity for r in evse.profile.registers if r.writable}
        if "offered_current_a" in quantities and (on or "charging_enabled" not in quantities):
            await evse.write("offered_current_a", float(current))
        if "charging_enabled" in quantities:
            await evse.write("charging_enabled", on)

    async def run(self) -> None:
        """Sessions back to back until cancelled."""
        sim_cfg = self.agent.cfg.sim
        evse = self.agent.station.devices.get(self.c.evse or "")
        meter = self.c.meter or self.c.evse
        while True:
            await asyncio.sleep(2)
            self.sim.plug_in(self.c.id)
            self._say("vehicle plugged in")
            if not await self._wait_cp({"B", "C"}, 5):
                self._say("no vehicle seen on the control pilot")
            start_wh = self.state.value(meter, "energy_import_wh")
            if isinstance(start_wh, int):
                self.state.sessions[self.c.id] = (start_wh, utcnow())
            self._say("card DEMO-0042 accepted: charging authorized")
            try:
                if evse is not None:
                    await self._enable(evse, True)
            except ModbusFailure as e:
                self._say(f"could not enable the EVSE: {e}")
            await self._wait_cp({"C", "D"}, 5)
            await asyncio.sleep(sim_cfg.plugged_s)
            try:
                if evse is not None:
                    await self._enable(evse, False)
            except ModbusFailure as e:
                self._say(f"could not stop the EVSE: {e}")
            await self._wait_cp({"B", "A"}, 5)
            end_wh = self.state.value(meter, "energy_import_wh")
            self.sessions += 1
            if isinstance(start_wh, int) and isinstance(end_wh, int):
                self._say(f"session {self.sessions} done: {end_wh - start_wh:,} Wh delivered")
            self.state.sessions.pop(self.c.id, None)
            self.sim.unplug(self.c.id)
            self._say("vehicle unplugged")
            await asyncio.sleep(sim_cfg.pause_s)


async def run_demo(
    cfg: StationConfig, duration: float | None = None, as_json: bool = False
) -> None:
    """Start the simulator and the agent, drive sessions, show them live (or as JSON lines)."""
    sim = SimStation(cfg)
    await sim.start()
    agent = Agent(cfg)
    state = LiveState(cfg)
    sub = agent.bus.subscribe(Reading, DeviceHealth)
    await agent.start()
    drivers = [DemoDriver(agent, sim, c, state) for c in cfg.connector]
    tasks = [asyncio.create_task(d.run(), name=f"demo connector {d.c.id}") for d in drivers]
    deadline = None if duration is None else time.monotonic() + duration
    try:
        if as_json:
            await _pump_json(sub, state, deadline)
        else:
            with Live(render(state), console=console, refresh_per_second=4, screen=False) as live:
                while deadline is None or time.monotonic() < deadline:
                    while (ev := sub.get_nowait()) is not None:
                        state.feed(ev)
                    live.update(render(state))
                    await asyncio.sleep(0.25)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await agent.stop()
        await sim.stop()


async def _pump_json(sub, state: LiveState, deadline: float | None) -> None:
    # Demo script events interleave with readings, for scripts reading the stream.
    state.listeners.append(lambda text: emit_json({"type": "demo", "message": text}))
    while deadline is None or time.monotonic() < deadline:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ev = await asyncio.wait_for(sub.get(), timeout)
        except TimeoutError:
            break
        state.feed(ev)
        kind = "reading" if isinstance(ev, Reading) else "health"
        emit_json({"type": kind, **ev.model_dump(mode="json")})
