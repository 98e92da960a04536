"""Faults over MQTT against a real mosquitto: a fault injected into the simulated station is
raised by diagnosis, published on `faults/events` (raised, then cleared) and mirrored in the
retained `faults/active` snapshot (with the fault, then empty) that a subscriber arriving
late still gets; every message validates against the committed JSON Schemas."""

from __future__ import annotations

import asyncio

from mqtt_helpers import Backend, Broker, Received
from test_mqtt_sync import validate, with_mqtt

from agent.runtime import Agent
from hil.scenarios.stations import station_config
from hil.station import SimStation

FAST = "[diagnosis.rule.device_not_answering]\nraise_after_s = 0.5\nclear_after_s = 0.5\n"
RULE = "device_not_answering"


def events(backend: Backend) -> list[dict]:
    """`faults/events` payloads of our rule, in arrival order."""
    docs = [m.json() for m in backend.on("faults/events")]
    return [d for d in docs if (d.get("raised") or d.get("cleared") or {}).get("rule") == RULE]


def active_ids(msg: Received | None) -> list[str] | None:
    """The fault ids of our rule in a `faults/active` snapshot (None: no snapshot yet)."""
    if msg is None:
        return None
    return [f["fault_id"] for f in msg.json()["faults"] if f["rule"] == RULE]


def latest_snapshot(backend: Backend) -> Received | None:
    """The newest `faults/active` message the backend received."""
    got = backend.on("faults/active")
    return got[-1] if got else None


async def retained_snapshot(broker: Broker, name: str) -> Received:
    """What a subscriber arriving now gets on `faults/active`: the retained message."""
    late = Backend(broker, client_id=name).connect()
    try:
        await asyncio.to_thread(late.wait, lambda ms: late.on("faults/active"), 10, "retained")
        return late.on("faults/active")[-1]
    finally:
        late.close()


async def wait(backend: Backend, pred, what: str) -> None:
    await asyncio.to_thread(backend.wait, lambda _ms: pred(), 20, what)


async def test_fault_raised_and_cleared_reach_events_and_the_retained_snapshot(tmp_path, broker):
    cfg = with_mqtt(station_config("tcp", store=str(tmp_path / "evedge.db"), extra=FAST), broker)
    backend = Backend(broker).connect()
    try:
        async with SimStation(cfg, tick_s=0.1) as sim:
            agent = Agent(cfg)
            await agent.start()
            try:
                await wait(backend, lambda: backend.on("telemetry"), "telemetry (meter polled)")
                sim.inject({"kind": "no_response", "device": "meter1"})
                await wait(backend, lambda: events(backend), "FaultRaised on faults/events")
                (raised,) = events(backend)
                fault_id = raised["raised"]["fault_id"]
                await wait(
                    backend,
                    lambda: active_ids(latest_snapshot(backend)) == [fault_id],
                    "the snapshot with the fault",
                )
                with_fault = await retained_snapshot(broker, "late-1")

                sim.clear()
                await wait(backend, lambda: len(events(backend)) == 2, "FaultCleared")
                await wait(
                    backend,
                    lambda: active_ids(latest_snapshot(backend)) == [],
                    "the snapshot without the fault",
                )
                without = await retained_snapshot(broker, "late-2")
            finally:
                await agent.stop()
        msgs = backend.snapshot()
    finally:
        backend.close()

    assert raised["kind"] == "raised" and raised["cleared"] is None
    assert raised["raised"]["scope"] == "device:meter1"
    assert raised["raised"]["codes"]["error_code"] == "PowerMeterFailure"
    cleared = events(backend)[1]
    assert cleared["kind"] == "cleared" and cleared["raised"] is None
    assert cleared["cleared"]["fault_id"] == fault_id
    assert cleared["cleared"]["reason"] == "resolved"
    # One stream, one sequence: raised before cleared, numbered without gaps.
    seqs = [m.json()["seq"] for m in backend.on("faults/events")]
    assert seqs == list(range(1, len(seqs) + 1))

    # Late subscribers get the retained snapshot: first with the fault, then without it.
    assert with_fault.retain and active_ids(with_fault) == [fault_id]
    assert without.retain and active_ids(without) == []
    (shown,) = [f for f in with_fault.json()["faults"] if f["rule"] == RULE]
    assert shown == raised["raised"]

    faults = [m for m in msgs if m.topic.split("/", 3)[3].startswith("faults/")]
    assert len(faults) >= 4  # raised, cleared, a snapshot after each
    validate([*faults, with_fault, without])  # jsonschema raises on the first invalid one
