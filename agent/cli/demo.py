"""`evedge demo`: the whole agent against the simulated station, cars charging back to back.

The simulated station (hil/) serves the config's devices on loopback; the agent polls them
exactly as it polls hardware. A script plays the driver: plug in, present card DEMO-0042,
and later either let the car finish (battery full, it pauses, then is unplugged: parking
time is billed) or present the card again to stop — per connector, for as long as the demo
runs. The agent's session engine does the rest: authorizes the card from its local list,
enables the EVSE through the driver layer (verified by read-back), meters, prices, and
writes a signed, chained charge record for every session into the configured store.
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
from agent.events import ChargeRecordWritten, DeviceHealth, DriverMessage, Reading, SessionEvent
from agent.runtime import Agent
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from agent.tasks import cancel_and_wait
from hil.display import ConsoleDisplay
from hil.station import SimStation

log = structlog.get_logger(__name__)

DEMO_CARD = "DEMO-0042"
FULL_PARKING_S = 6.0  # how long a full car stays plugged in before its driver returns


class DemoDriver:
    """Plays the driver on one connector, session after session."""

    def __init__(self, agent: Agent, sim: SimStation, connector: ConnectorConfig, state: LiveState):
        self.agent = agent
        self.sim = sim
        self.c = connector
        self.state = state
        self.sessions = 0

    def _say(self, text: str) -> None:
        self.state.note(f"connector {self.c.id}: {text}")

    async def _wait_status(self, want: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ev = self.state.sessions.get(self.c.id)
            if ev is not None and ev.status in want:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _card(self) -> str | None:
        engine = self.agent.sessions
        if engine is None:
            self._say("no [billing] section in the config: no session engine to take the card")
            return None
        try:
            return await engine.authorize(self.c.id, card_token(DEMO_CARD))
        except CommandRefused as e:
            self._say(f"card {DEMO_CARD} refused: {e}")
            return None

    async def run(self) -> None:
        """Sessions back to back until cancelled."""
        sim_cfg = self.agent.cfg.sim
        while True:
            await asyncio.sleep(2)
            self.sim.plug_in(self.c.id)
            self._say("vehicle plugged in")
            await self._wait_status({"Preparing"}, 5)
            result = await self._card()
            if result is not None:
                self._say(f"card {DEMO_CARD} presented: {result}")
            await self._wait_status({"Charging"}, 5)
            await asyncio.sleep(sim_cfg.plugged_s)
            self.sessions += 1
            if self.sessions % 2:
                self.sim.ev_suspend(self.c.id, True)
                self._say("battery full: the car stops charging (parking time starts)")
                await asyncio.sleep(FULL_PARKING_S)
            else:
                result = await self._card()
                self._say(f"card {DEMO_CARD} presented again: {result}")
                await self._wait_status({"Finishing", "Available"}, 10)
                await asyncio.sleep(1)
            self.sim.unplug(self.c.id)
            self._say("vehicle unplugged")
            await self._wait_status({"Available"}, 10)
            await asyncio.sleep(sim_cfg.pause_s)


def _record_note(state: LiveState, ev: ChargeRecordWritten) -> None:
    total = ev.total_incl_vat if ev.total_incl_vat is not None else ev.total_excl_vat
    cost = "not priced" if total is None else f"{total} {ev.currency}"
    flag = " — flagged for review" if ev.review else ""
    state.note(
        f"connector {ev.connector}: record {ev.record_id} signed and chained: "
        f"{ev.energy_wh:,} Wh, {cost} ({ev.stop_reason}){flag}"
    )


async def run_demo(
    cfg: StationConfig, duration: float | None = None, as_json: bool = False
) -> None:
    """Start the simulator and the agent, drive sessions, show them live (or as JSON lines)."""
    sim = SimStation(cfg)
    await sim.start()
    agent = Agent(cfg)
    state = LiveState(cfg)
    sub = agent.bus.subscribe(
        Reading, DeviceHealth, SessionEvent, ChargeRecordWritten, DriverMessage
    )
    if agent.driver is not None:  # the simulated display: `watch cat .demo/display.txt`
        agent.driver.add_display(ConsoleDisplay(path=cfg.store.path.parent / "display.txt"))
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
                        if isinstance(ev, ChargeRecordWritten):
                            _record_note(state, ev)
                    live.update(render(state))
                    await asyncio.sleep(0.25)
    finally:
        await cancel_and_wait(tasks)
        await _close_sessions(agent)
        await agent.stop()
        await sim.stop()


async def _close_sessions(agent: Agent) -> None:
    """End running sessions as a technician would, so the demo leaves only complete records
    (the simulator goes away with the demo; a restart could not resume them)."""
    engine = agent.sessions
    if engine is None:
        return
    for cid, conn in engine.connectors.items():
        if conn.session is not None:
            with contextlib.suppress(CommandRefused, TimeoutError):
                await asyncio.wait_for(engine.stop(cid, by="cli"), 15)


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
        kind = {
            Reading: "reading",
            DeviceHealth: "health",
            SessionEvent: "session",
            ChargeRecordWritten: "record",
            DriverMessage: "driver",
        }[type(ev)]
        emit_json({"type": kind, **ev.model_dump(mode="json")})
