"""Normal charging sessions, varied the way real ones are: the clean-run workload.

Cars differ (their identity, 1 or 3 phases, 6..32 A), drivers differ (short and long
stays), cars pause and resume on their own, the agent changes the offered current
mid-session and switches charging off at the end (the welded-contactor check watches
every stop). Run on a rig with realistic noise (hil.models.Noise.realistic) not a single
fault may be raised.
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
FLEET = 40  # vehicles that come back now and then, each with its own identity and car


def vehicle(rng: random.Random) -> tuple[str, float, int]:
    """(identity, max current A, phases) of the next vehicle to arrive."""
    n = rng.randrange(FLEET)
    amps, phases = CARS[n % len(CARS)]
    return f"EV{n:03d}", amps, phases


async def normal_session(d: Driver, rng: random.Random, connector: int = 1) -> str:
    """One plug-in cycle: arrive, authorize, charge (maybe pause, maybe re-limit), leave;
    returns the vehicle's identity."""
    ident, amps, phases = vehicle(rng)
    await d.plug_in(connector, amps, phases, vehicle=ident)
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
    return ident
