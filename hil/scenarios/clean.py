"""Normal charging sessions, varied the way real ones are: the clean-run workload.

Cars differ (1 or 3 phases, 6..32 A), drivers differ (short and long stays), cars pause
and resume on their own, the agent changes the offered current mid-session. Run on a rig
with realistic noise (hil.models.Noise.realistic) not a single fault may be raised.
"""

from __future__ import annotations

import random

from hil.scenarios.base import Driver

CARS = (  # (max current A, phases)
    (32.0, 3),
    (16.0, 3),
    (16.0, 1),
    (32.0, 1),
    (11.0, 3),
    (6.0, 1),
)


async def normal_session(d: Driver, rng: random.Random, connector: int = 1) -> None:
    """One plug-in cycle: arrive, authorize, charge (maybe pause, maybe re-limit), leave."""
    amps, phases = rng.choice(CARS)
    await d.plug_in(connector, amps, phases)
    await d.wait(rng.uniform(1, 4))  # the driver presents a card
    offered = rng.choice((32.0, 16.0, 10.0))
    await d.authorize(connector, offered)
    await d.wait(rng.uniform(10, 30))
    if rng.random() < 0.3:
        await d.authorize(connector, rng.choice((8.0, 20.0)))  # load management
        await d.wait(rng.uniform(5, 15))
    if rng.random() < 0.3:
        await d.suspend(connector, True)  # battery conditioning, full, ...
        await d.wait(rng.uniform(5, 15))
        await d.suspend(connector, False)
        await d.wait(rng.uniform(5, 10))
    await d.stop(connector)
    await d.wait(rng.uniform(1, 5))
    await d.unplug(connector)
    await d.wait(rng.uniform(2, 10))
