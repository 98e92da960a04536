"""What a diagnosis scenario is: a station, a setup, a fault, a recovery, and what the
agent must conclude. Scenarios talk to a `Driver`, so the same definitions run against the
simulator (hil/scenarios/rig.py) or, later, real hardware (a driver that asks a technician
to plug in an EV simulator, opens a breaker, or flips a DIP switch).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Driver(Protocol):
    """The actions a scenario takes on a station."""

    async def plug_in(
        self, connector: int, amps: float | None = None, phases: int = 3, vehicle: str | None = None
    ) -> None:
        """A vehicle plugs in (amps: what it can draw; vehicle: its identity, if known)."""
        ...

    async def authorize(self, connector: int, amps: float = 32.0) -> None:
        """Enable the connector's EVSE and offer `amps` (as the agent would)."""
        ...

    async def stop(self, connector: int) -> None:
        """Stop charging (the agent disables the EVSE)."""
        ...

    async def unplug(self, connector: int) -> None:
        """The vehicle leaves."""
        ...

    async def suspend(self, connector: int, suspended: bool) -> None:
        """The vehicle pauses (True) or resumes (False) charging on its own."""
        ...

    async def inject(self, fault: dict[str, Any]) -> str:
        """Make a fault happen; returns its id."""
        ...

    async def clear(self) -> None:
        """End every injected fault."""
        ...

    def set_facts(self, **facts: Any) -> None:
        """Set station facts (clock_synced, disk_free_pct, cloud_offline_s...)."""
        ...

    async def wait(self, seconds: float) -> None:
        """Let time pass."""
        ...


Step = Callable[[Driver], Awaitable[None]]


async def nothing(_d: Driver) -> None:
    """A step that does nothing."""


async def clear_all(d: Driver) -> None:
    """The usual recovery: end the injected faults."""
    await d.clear()


def charging(amps: float = 32.0, connector: int = 1, settle_s: float = 3.0) -> Step:
    """Setup: a vehicle plugged in and charging at `amps`."""

    async def step(d: Driver) -> None:
        await d.plug_in(connector)
        await d.authorize(connector, amps)
        await d.wait(settle_s)

    return step


def idle(seconds: float) -> Step:
    """Setup: let the agent see the station working for `seconds` first."""

    async def step(d: Driver) -> None:
        await d.wait(seconds)

    return step


def inject(*faults: dict[str, Any]) -> Step:
    """Inject one or more faults at once."""

    async def step(d: Driver) -> None:
        for f in faults:
            await d.inject(f)

    return step


def then(*steps: Step) -> Step:
    """Several steps in order."""

    async def step(d: Driver) -> None:
        for s in steps:
            await s(d)

    return step


def plug_and_charge(amps: float = 16.0, connector: int = 1) -> Step:
    """A vehicle arrives and is authorized (after a fault was injected)."""

    async def step(d: Driver) -> None:
        await d.plug_in(connector)
        await d.authorize(connector, amps)

    return step


def stop_charging(connector: int = 1) -> Step:
    """The agent ends the session (disables the EVSE)."""

    async def step(d: Driver) -> None:
        await d.stop(connector)

    return step


def facts(**values: Any) -> Step:
    """Set station facts."""

    async def step(d: Driver) -> None:
        d.set_facts(**values)

    return step


@dataclass(frozen=True)
class Expect:
    """What the agent must report for a scenario."""

    rule: str
    scope: str
    error_code: str  # OCPP 1.6
    component: str  # OCPP 2.0.1 "Component.Variable"
    faulted: bool
    mrec: str | None = None
    vendor_error_code: str | None = None  # checked when given (MREC code otherwise)
    explains: frozenset[str] = frozenset()  # symptoms it must list (and not raise)
    not_raised: frozenset[str] = frozenset()  # rules that must stay silent meanwhile
    side: str | None = None


@dataclass(frozen=True)
class Scenario:
    """One fault, end to end: set up, inject, expect, recover, expect the clear."""

    name: str
    station: str
    expect: Expect
    fault: Step
    setup: Step = nothing
    recover: Step = clear_all
    raise_within_s: float = 30.0
    clear_within_s: float = 90.0
    facts: dict[str, Any] = field(default_factory=dict)
    diagnosis: dict[str, Any] = field(default_factory=dict)  # [diagnosis] overrides
    note: str = ""
