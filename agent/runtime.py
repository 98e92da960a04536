"""The agent's main job: poll every device, publish on the bus, keep the store."""

from __future__ import annotations

import asyncio
import signal

import structlog

from agent.bus import EventBus
from agent.config import StationConfig
from agent.diagnosis.service import DiagnosisService
from agent.sessions.engine import SessionEngine
from agent.station import Station, build_station
from agent.store.db import Store
from agent.store.writer import StoreWriter
from agent.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


class Agent:
    """The running agent: station pollers plus the store writer, on one event bus."""

    def __init__(self, cfg: StationConfig, bus: EventBus | None = None):
        self.cfg = cfg
        self.bus = bus or EventBus()
        self.station: Station = build_station(cfg, self.bus)
        self.store = Store(cfg.store.path)
        self.writer = StoreWriter(
            self.store,
            self.bus,
            max_rows=cfg.store.readings_max_rows,
            max_age_days=cfg.store.readings_max_age_days,
        )
        # Sessions and billing run only when the config has a [billing] section.
        self.sessions = SessionEngine(cfg, self.bus, self.station.devices) if cfg.billing else None
        profiles = {name: d.profile for name, d in self.station.devices.items()}
        self.diagnosis = (
            DiagnosisService(cfg, self.bus, profiles) if cfg.diagnosis.enabled else None
        )
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start the store writer and one poller task per link."""
        log.info(
            "agent.start",
            station=self.cfg.station.id,
            devices=len(self.cfg.device),
            links=len(self.station.pollers),
            store=str(self.cfg.store.path),
        )
        self._tasks.append(asyncio.create_task(self.writer.run(), name="store-writer"))
        for p in self.station.pollers:
            self._tasks.append(asyncio.create_task(p.run(), name=f"poll {p.link.name}"))
        if self.sessions is not None:
            self._tasks.append(asyncio.create_task(self.sessions.run(), name="sessions"))
        if self.diagnosis is not None:
            self._tasks.append(asyncio.create_task(self.diagnosis.run(), name="diagnosis"))

    async def stop(self) -> None:
        """Stop pollers first, then let the writer commit what it holds, then close."""
        pollers, writer = self._tasks[1:], self._tasks[:1]
        for group in (pollers, writer):
            await cancel_and_wait(group)
        self._tasks.clear()
        if self.sessions is not None:
            self.sessions.close()
        self.store.close()
        log.info("agent.stop", written=self.writer.stats.written)

    async def wait(self) -> None:
        """Return when any task ends (a crash is re-raised)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()


async def run_agent(cfg: StationConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop cleanly."""
    agent = Agent(cfg)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(agent.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stopper.cancel()
        await agent.stop()
    if waiter.done() and not waiter.cancelled() and waiter.exception():
        raise waiter.exception()
