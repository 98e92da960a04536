"""Failsafe heartbeat (profile [failsafe]: Keba, Bender): while the agent runs it keeps the
EVSE's watchdog fed; when the agent dies the simulated EVSE falls back to the failsafe
current. Real Modbus on loopback, the simulator in real time."""

from __future__ import annotations

import asyncio

import pytest
from sessions_helpers import billed_config, running

from agent.config import ConfigError
from drivers.profile import load_profile
from hil.station import SimStation


@pytest.mark.parametrize("profile", ["keba-p30x", "bender-cc612"])
async def test_heartbeat_keeps_the_watchdog_fed_and_the_evse_falls_back_without_it(
    tmp_path, profile
):
    cfg = billed_config(
        tmp_path,
        evse_profile=profile,
        sessions="failsafe_timeout_s = 3\nfailsafe_current_a = 6",
    )
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        conn = sim.connectors[1]
        async with running(cfg, sim=sim) as rig:
            await rig.until(
                lambda: conn.failsafe_timeout_s == 3 and conn.failsafe_current_a == 6,
                5,
                "failsafe set",
            )
            # For two timeouts the watchdog never fires: the heartbeat comes every 1.5 s.
            fired = False
            for _ in range(60):
                fired = fired or conn.evse.limit_a is not None
                await asyncio.sleep(0.1)
            assert not fired
        # The agent is gone; the simulated station runs on and nobody writes any more.
        while conn.evse.limit_a != 6:
            await asyncio.sleep(0.05)
    finally:
        await sim.stop()


def test_profiles_declare_their_failsafe_as_data():
    keba = load_profile("keba-p30x").failsafe
    assert keba is not None and keba.heartbeat == "failsafe_timeout_s" and keba.every == 0.5
    assert load_profile("phoenix-ev-charge-control").failsafe is None


def test_illegal_failsafe_current_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        billed_config(tmp_path, sessions="failsafe_current_a = 3")
    assert any("failsafe_current_a" in p and "0 (stop" in m for p, m in e.value.problems)
