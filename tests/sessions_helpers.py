"""Shared pieces of the session tests: a billed station config, a running sim + agent, waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import free_port, station_config

from agent.billing.checkpoint import checkpoint_path
from agent.config import StationConfig
from agent.events import ChargeRecordWritten, Event, SessionEvent
from agent.runtime import Agent
from agent.sessions.model import card_token
from agent.sessions.store import RecordRow, SessionStore
from hil.station import SimStation

ROOT = Path(__file__).resolve().parents[1]
TARIFFS = ROOT / "config" / "tariffs"
CARD = "DEMO-0042"


def billed_config(
    tmp_path: Path,
    *,
    tariff: Path | str | None = TARIFFS / "simple-energy.json",
    billing: str = "",
    sessions: str = "",
    auth: str = f'local_list = [{{ id = "{CARD}" }}, {{ id = "BLOCKED-1", status = "Blocked" }}]',
    evse_profile: str = "phoenix-ev-charge-control",
    meter: bool = True,
    diagnosis: str = "",
) -> StationConfig:
    """A one-connector station (SDM630 + EVSE on loopback) with [billing] in `tmp_path`;
    `diagnosis`: extra TOML tables such as `[diagnosis.rule.<id>]` tuning."""
    mport, eport = free_port(), free_port()
    devices = [
        dict(name="evse1", profile=evse_profile, unit=255, port=eport, interval_s=0.05),
    ]
    conn = {"id": 1, "evse": "evse1", "max_current_a": 32}
    if meter:
        devices.insert(
            0, dict(name="meter1", profile="eastron-sdm630", unit=1, port=mport, interval_s=0.1)
        )
        conn["meter"] = "meter1"
    if tariff is not None and Path(tariff).parent == TARIFFS:
        # A copy per test: a test may edit the station's tariff file, never the repo's.
        copy = tmp_path / "tariffs" / Path(tariff).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(Path(tariff).read_bytes())
        tariff = copy
    tariff_line = "" if tariff is None else f'tariff = "{tariff}"\n'
    extra = (
        f'[store]\npath = "{tmp_path / "evedge.db"}"\n'
        f"[billing]\n{tariff_line}"
        f'key_dir = "{tmp_path / "keys"}"\ntimezone = "Europe/Berlin"\n{billing}\n'
        f"[sessions]\nend_reading_timeout_s = 2\nrecovery_timeout_s = 3\n{sessions}\n"
        f"[auth]\n{auth}\n{diagnosis}"
    )
    return station_config(*devices, connectors=(conn,), timeout_s=0.3, extra=extra)


@dataclass
class Rig:
    """A running simulated station and agent, with every session event seen so far."""

    cfg: StationConfig
    sim: SimStation
    agent: Agent
    seen: list[Event] = field(default_factory=list)

    @property
    def engine(self):
        """The agent's session engine."""
        assert self.agent.sessions is not None
        return self.agent.sessions

    @property
    def conn(self):
        """Connector 1's engine."""
        return self.engine.connectors[1]

    def store(self) -> SessionStore:
        """A second connection to the agent's store (close it)."""
        return SessionStore(self.cfg.store.path)

    def register(self) -> int:
        """The simulated meter's import register now."""
        dev = self.cfg.connector[0].meter or self.cfg.connector[0].evse
        return self.sim.devices[dev].meter.import_wh

    async def until(self, pred: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
        """Wait for `pred()` (sessions events are collected meanwhile)."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or pred}")
            await asyncio.sleep(0.02)

    async def status(self, *want: str, timeout: float = 10) -> None:
        """Wait until connector 1 is in one of the statuses `want`."""
        await self.until(lambda: self.conn.status.value in want, timeout, f"status {want}")

    async def card_charging(self, card: str = CARD) -> None:
        """Plug a car into connector 1, present `card`: wait until it charges."""
        self.sim.plug_in(1)
        await self.status("Preparing")
        assert await self.engine.authorize(1, card_token(card)) == "started"
        await self.status("Charging")

    async def record(self, n: int = 1, timeout: float = 15) -> RecordRow:
        """Wait for the n-th charge record and return it."""
        await self.until(
            lambda: sum(isinstance(e, ChargeRecordWritten) for e in self.seen) >= n,
            timeout,
            f"record {n}",
        )
        ev = [e for e in self.seen if isinstance(e, ChargeRecordWritten)][n - 1]
        with self.store() as st:
            rec = st.record_of(ev.session_id)
        assert rec is not None
        return rec

    def events(self, kind: str | None = None) -> list[SessionEvent]:
        """Session events seen (of one kind)."""
        return [
            e for e in self.seen if isinstance(e, SessionEvent) and (kind is None or e.kind == kind)
        ]


@contextlib.asynccontextmanager
async def running(
    cfg: StationConfig,
    *,
    tick_s: float | None = 0.1,
    sim: SimStation | None = None,
    setup: Callable[[Agent], None] | None = None,
) -> AsyncIterator[Rig]:
    """Start the simulator (unless given) and an agent with sessions; stop both after."""
    own_sim = sim is None
    if sim is None:
        sim = SimStation(cfg, tick_s=tick_s)
        await sim.start()
    agent = Agent(cfg)
    if setup is not None:
        setup(agent)
    rig = Rig(cfg, sim, agent)
    sub = agent.bus.subscribe(SessionEvent, ChargeRecordWritten)

    async def collect() -> None:
        async for ev in sub:
            rig.seen.append(ev)

    collector = asyncio.create_task(collect())
    await agent.start()
    try:
        await rig.until(lambda: rig.conn.cp is not None and rig.conn.energy is not None, 5,
                        "first EVSE and meter readings")  # fmt: skip
        yield rig
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await agent.stop()
        if own_sim:
            await sim.stop()


def body(rec: RecordRow) -> dict:
    """The record's body."""
    return json.loads(rec.body)


async def plug_sessions(rig: Rig, n: int) -> None:
    """n short sessions on connector 1: plug in, charge a moment, unplug."""
    for i in range(1, n + 1):
        rig.sim.plug_in(1)
        await rig.status("Charging")
        await asyncio.sleep(0.4)
        rig.sim.unplug(1)
        await rig.record(i)
        await rig.status("Available")


def record_sessions(tmp: Path, n: int) -> tuple[StationConfig, Path]:
    """A store holding `n` real free-vend sessions priced by energy-parking-flat, and a
    config file for the CLI pointing at it."""
    tariff = TARIFFS / "energy-parking-flat.json"
    cfg = billed_config(tmp, tariff=tariff, billing="free_vend = true")

    async def make():
        async with running(cfg) as rig:
            await plug_sessions(rig, n)

    asyncio.run(make())
    toml = tmp / "station.toml"
    toml.write_text(
        f'[station]\nid = "TEST"\n[store]\npath = "{cfg.store.path}"\n[billing]\n'
        f'tariff = "{tariff}"\nkey_dir = "{tmp / "keys"}"\ntimezone = "Europe/Berlin"\n'
    )
    return cfg, toml


def copy_store(cfg: StationConfig, toml: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of a recorded store (with its signed checkpoint) and a config file
    pointing at it."""
    db = tmp_path / "evedge.db"
    shutil.copy(cfg.store.path, db)
    shutil.copy(checkpoint_path(cfg.store.path), checkpoint_path(db))
    conf = tmp_path / "station.toml"
    conf.write_text(toml.read_text().replace(str(cfg.store.path), str(db)))
    return db, conf
