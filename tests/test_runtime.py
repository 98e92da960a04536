"""The Agent end to end: pollers and the store writer against the simulated demo station."""

from __future__ import annotations

import asyncio
import contextlib

from conftest import free_port, station_config

from agent.events import READINGS, HealthState, utcnow
from agent.runtime import Agent
from agent.store.db import Store
from hil.station import SimStation


async def test_agent_polls_the_station_into_the_store(tmp_path):
    db = tmp_path / "evedge.db"
    mport, eport = free_port(), free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=mport, interval_s=0.2),
        dict(name="evse1", profile="phoenix-ev-charge-control", unit=255, port=eport,
             interval_s=0.1),
        connectors=({"id": 1, "evse": "evse1", "meter": "meter1", "max_current_a": 32},),
        timeout_s=0.5,
        # Every poll into the ring: the retention policy has its own tests (test_store_thinning).
        extra=f'[store]\npath = "{db}"\nreadings_keep_s = 0\n',
    )  # fmt: skip
    sim = SimStation(cfg, tick_s=None)
    sim.plug_in(1)
    await sim.start()
    agent = Agent(cfg)
    seen = agent.bus.subscribe(*READINGS)
    evse = agent.station.devices["evse1"]

    async def charge() -> None:  # the car charges at 22 kW, in fast-forward
        while True:
            await asyncio.sleep(0.05)
            sim.step(1.0)

    await agent.start()
    clock = asyncio.create_task(charge())
    try:
        await asyncio.sleep(0.3)
        await evse.write("offered_current_a", 32.0)  # through the same link as its poller
        await evse.write("charging_enabled", True)
        await asyncio.sleep(1.7)
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        final = sim.snapshot()["devices"]["meter1"]["values"]["energy_import_wh"]
        t_final = utcnow()
        # One more meter poll after the counter stopped, then stop.
        while True:
            ev = await asyncio.wait_for(seen.get(), 2)
            last = {r.quantity: r for r in ev.samples()}.get("energy_import_wh")
            if ev.device == "meter1" and last is not None and ev.ts > t_final:
                break
        assert last.value == final
    finally:
        clock.cancel()
        await agent.stop()
        await sim.stop()

    with Store(db) as store:
        latest = {(r.device, r.quantity): r for r in store.latest()}
        assert {d for d, _ in latest} == {"meter1", "evse1"}
        assert latest[("meter1", "energy_import_wh")].value == final
        assert latest[("evse1", "cp_state")].value == "C"
        assert latest[("evse1", "offered_current_a")].value == 32.0
        energy = [r.value for r in store.history("meter1", "energy_import_wh")]
        assert len(energy) >= 5
        assert energy == sorted(energy) and energy[-1] - energy[0] > 100  # it charged
        health = {h.device: h for h in store.health()}
        assert {d: h.state for d, h in health.items()} == {
            "meter1": HealthState.OK,
            "evse1": HealthState.OK,
        }
        assert store.integrity_check() == "ok"
    assert agent.writer.stats.written > 0
