"""One bus event per device cycle (DeviceReadings): its values one by one, and into the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agent.bus import EventBus
from agent.events import READINGS, DeviceHealth, DeviceReadings, HealthState, Quality, Reading
from agent.poller import readings_of
from agent.store.db import Store
from agent.store.writer import StoreWriter

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
VALUES = {"voltage_l1": 231.5, "energy_import_wh": 12345, "cp_state": "C", "power_w": None}


def test_samples_carry_each_value_with_unit_quality_and_the_read_time():
    ev = readings_of("meter1", VALUES, T0)
    assert isinstance(ev, DeviceReadings)
    got = {s.quantity: s for s in ev.samples()}
    assert list(got) == list(VALUES)  # the cycle's order
    assert {q: s.value for q, s in got.items()} == VALUES
    assert {s.device for s in got.values()} == {"meter1"}
    assert {s.ts for s in got.values()} == {T0}  # stamped once, at the read
    assert got["voltage_l1"].unit == "V"
    assert got["energy_import_wh"].unit == "Wh"
    assert got["power_w"].quality == Quality.NOT_AVAILABLE
    assert got["voltage_l1"].quality == Quality.GOOD
    assert ev.samples() is ev.samples()  # built once, shared by every consumer


def test_a_sample_is_the_reading_it_stands_for():
    ev = readings_of("meter1", VALUES, T0)
    for s in ev.samples():
        r = s.reading()
        assert r == Reading(
            device=s.device, quantity=s.quantity, value=s.value, unit=s.unit,
            quality=s.quality, ts=T0,
        )  # fmt: skip
        assert r.samples() == (r,)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="values"):
        DeviceReadings(device="meter1", values={"voltage_l1": [1, 2]}, ts=T0)


async def test_the_store_gets_one_row_per_value(tmp_path):
    store = Store(tmp_path / "evedge.db")
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=365_000, commit_interval_s=0.02)
    task = asyncio.create_task(writer.run())
    cycles = 40
    for i in range(cycles):
        ts = T0 + timedelta(seconds=i)
        bus.publish(readings_of("meter1", {**VALUES, "energy_import_wh": i}, ts))
    bus.publish(Reading(device="evse1", quantity="cp_state", value="B", ts=T0))  # single ones too
    deadline = asyncio.get_running_loop().time() + 10
    while store.count_readings() < cycles * len(VALUES) + 1:
        assert asyncio.get_running_loop().time() < deadline, store.count_readings()
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        history = store.history("meter1", "energy_import_wh", limit=cycles)
        assert [r.value for r in history] == list(range(cycles))
        latest = {(r.device, r.quantity): r for r in store.latest()}
        assert latest[("meter1", "voltage_l1")].unit == "V"
        assert latest[("meter1", "power_w")].quality == Quality.NOT_AVAILABLE
        assert latest[("evse1", "cp_state")].value == "B"
        assert writer.stats.written == cycles * len(VALUES) + 1
        assert writer.dropped == 0
    finally:
        store.close()


def test_consumers_subscribe_to_both_shapes():
    bus = EventBus()
    sub = bus.subscribe(*READINGS)
    bus.publish(readings_of("meter1", VALUES, T0))
    bus.publish(Reading(device="meter1", quantity="voltage_l1", value=230.0, ts=T0))
    got = [s.quantity for ev in iter(sub.get_nowait, None) for s in ev.samples()]
    assert got == [*VALUES, "voltage_l1"]


async def test_the_store_keeps_the_newest_health_of_each_device(tmp_path):
    """Health comes with every poll; a batch upserts only each device's newest."""
    store = Store(tmp_path / "evedge.db")
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=365_000, commit_interval_s=60)
    task = asyncio.create_task(writer.run())
    for i in range(5):
        for dev in ("meter1", "evse1"):
            bus.publish(DeviceHealth(
                ts=T0 + timedelta(seconds=i), device=dev, bus="lan", state=HealthState.OK, polls=i
            ))  # fmt: skip
    await asyncio.sleep(0)
    task.cancel()  # the flush on cancel commits the one batch
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        assert {h.device: h.polls for h in store.health()} == {"meter1": 4, "evse1": 4}
        assert writer.stats.written == 2
        assert writer.stats.batches == 1
    finally:
        store.close()
