"""The readings ring's retention policy (agent/store/thinning.py) through the real writer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agent.bus import EventBus
from agent.events import DeviceReadings, Quality, Reading
from agent.store import Store, StoreWriter
from agent.store.thinning import Deadband

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Deadband(pct=1.0, absolute={"current_l1": 0.5}, keep_s=60)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "evedge.db", telemetry=True) as s:
        yield s


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


async def run_writer(store: Store, events: list, policy: Deadband = POLICY) -> StoreWriter:
    """Publish `events` to a writer with `policy`, committing each one, then stop it."""
    bus = EventBus()
    writer = StoreWriter(
        store, bus, max_age_days=365_000, commit_interval_s=0.001, retention=policy
    )
    task = asyncio.create_task(writer.run())
    for ev in events:
        bus.publish(ev)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while writer.stats.written + writer.stats.skipped < sum(len(e.samples()) for e in events):
        assert loop.time() < deadline, "the writer did not take every reading"
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return writer


def values(store: Store, quantity: str, device: str = "m1") -> list:
    return [(r.ts, r.value) for r in store.history(device, quantity)]


async def test_a_value_is_stored_when_it_moves_beyond_its_deadband_or_ages(store):
    v = [230.0, 231.0, 232.4, 233.0, 233.5, 233.6, 233.7]  # 1 % of 230 is 2.3
    t = [0, 1, 2, 3, 64, 65, 66]
    events = [
        Reading(ts=at(s), device="m1", quantity="voltage_l1", value=x)
        for s, x in zip(t, v, strict=True)
    ]
    writer = await run_writer(store, events)
    # 230 first; 232.4 moved > 2.3; 233.5 aged 62 s; 233.7 the newest, stored at the stop.
    assert values(store, "voltage_l1") == [
        (at(0), 230.0),
        (at(2), 232.4),
        (at(64), 233.5),
        (at(66), 233.7),
    ]
    assert writer.stats.skipped == 3


async def test_per_quantity_absolute_band_quality_and_text_changes_always_count(store):
    cycle = [  # (s, current_l1 with its 0.5 A band, cp_state, energy (*_wh: 10 Wh), quality)
        (0, 0.0, "A", 1000, Quality.GOOD),
        (1, 0.4, "A", 1005, Quality.GOOD),
        (2, 0.6, "B", 1011, Quality.GOOD),
        (3, 0.7, "B", 1015, Quality.NOT_AVAILABLE),
        (4, 0.8, "B", 1030, Quality.NOT_AVAILABLE),
    ]
    events = [
        DeviceReadings(
            ts=at(s), device="m1", values={"current_l1": i, "cp_state": cp, "energy_import_wh": e}
        )
        for s, i, cp, e, _ in cycle
    ]
    events += [
        Reading(ts=at(s), device="m1", quantity="power_w", value=100.0, quality=q)
        for s, _, _, _, q in cycle
    ]
    policy = Deadband(pct=1.0, absolute={"current_l1": 0.5, "*_wh": 10}, keep_s=60)
    await run_writer(store, events, policy)
    assert [x for _, x in values(store, "current_l1")] == [0.0, 0.6, 0.8]  # 0.8: the stop
    assert [x for _, x in values(store, "energy_import_wh")] == [1000, 1011, 1030]
    assert [x for _, x in values(store, "cp_state")] == ["A", "B", "B"]
    qualities = [r.quality for r in store.history("m1", "power_w")]
    assert Quality.NOT_AVAILABLE in qualities and qualities[0] == Quality.GOOD
    latest = {r.quantity: r.value for r in store.latest("m1")}
    assert latest == {
        "current_l1": 0.8,
        "cp_state": "B",
        "energy_import_wh": 1030,
        "power_w": 100.0,
    }


async def test_no_policy_stores_every_reading(store):
    events = [Reading(ts=at(s), device="m1", quantity="voltage_l1", value=230.0) for s in range(5)]
    writer = await run_writer(store, events, Deadband())
    assert len(values(store, "voltage_l1")) == 5 and writer.stats.skipped == 0


async def test_an_int_code_counts_on_every_change_unless_it_has_a_band(store):
    codes = [1000, 1000, 1001, 1001, 1002]  # 1 % of 1000 would hide every change
    events = [
        Reading(ts=at(s), device="m1", quantity=q, value=c)
        for s, c in enumerate(codes)
        for q in ("evse_error_code", "energy_import_wh")
    ]
    await run_writer(store, events, Deadband(pct=1.0, absolute={"*_wh": 10}, keep_s=60))
    assert [x for _, x in values(store, "evse_error_code")] == [1000, 1001, 1002]
    assert [x for _, x in values(store, "energy_import_wh")] == [1000, 1002]  # 1002: the stop
