"""The clean run: many normal sessions with realistic noise raise no fault at all.

Noise as in the field: each device's voltage readings ±3 %, current ripple ±2 %, answers
jittered, one answer in 500 lost (a one-off timeout that recovers), poll times jittered.
Virtual time (hil/scenarios/rig.py); bench/fault_latency.py runs 1,000 sessions.
"""

from __future__ import annotations

import random

from agent.events import FaultRaised
from hil.models import Noise
from hil.scenarios.clean import normal_session
from hil.scenarios.rig import scenario_rig

NOISE = Noise(voltage_pct=3.0, current_ripple_pct=2.0, jitter_s=0.001, drop_rate=0.004)


async def test_normal_sessions_with_noise_raise_nothing():
    rng = random.Random(7)
    # No retries: a lost answer fails its poll outright (the device shows degraded, backs
    # off, recovers) — the rules must ride that out.
    rig_kw = dict(noise=NOISE, seed=7, dt=1.0, poll_jitter_s=0.3, retries=0, timeout_s=0.1)
    async with scenario_rig("tcp", **rig_kw) as rig:
        for _ in range(10):
            await normal_session(rig.driver, rng)
        sessions = rig.engine.sessions[1].count
        assert sessions == 10
        assert rig.elapsed > 10 * 30  # several minutes of station life
        assert [e for e in rig.events if isinstance(e, FaultRaised)] == []
        assert rig.sim.answers_lost > 0  # the noise was there; the agent rode it out
        assert sum(d.health.timeouts for d in rig.engine.devices.values() if d.health) > 0


async def test_an_rs485_bus_with_noise_raises_nothing():
    rng = random.Random(3)
    async with scenario_rig("rtu", noise=NOISE, seed=3, dt=1.0, poll_jitter_s=0.3) as rig:
        for _ in range(3):
            await normal_session(rig.driver, rng)
        assert [e.rule for e in rig.events if isinstance(e, FaultRaised)] == []
        assert rig.sim.answers_lost > 0
