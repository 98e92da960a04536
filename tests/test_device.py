"""Device.read_cycle and Device.write against the simulated station's real Modbus servers."""

from __future__ import annotations

import pytest
from conftest import free_port, station_config

from drivers.device import Device, WriteVerifyError
from drivers.profile import load_profile, profile_names
from drivers.transport import Link, ModbusFailure, TcpSettings
from hil.station import SimStation

PHOENIX = load_profile("phoenix-ev-charge-control")
SDM630 = load_profile("eastron-sdm630")


def tcp_link(port: int, timeout_s: float = 2.0) -> Link:
    """A link to the simulator; generous: a busy CI machine may be slow to accept."""
    return Link(TcpSettings("127.0.0.1", port), timeout_s=timeout_s)


@pytest.mark.parametrize("name", profile_names())
async def test_read_cycle_of_every_profile_decodes_the_sim_values(name):
    profile = load_profile(name)
    port = free_port()
    device = dict(name="dev", profile=name, unit=profile.default_unit, port=port)
    if profile.kind == "evse":  # a car charging, so the EVSE's values are not all zero
        cfg = station_config(device, connectors=({"id": 1, "evse": "dev", "max_current_a": 32},))
    else:
        cfg = station_config(device)  # a meter on its own shows the site's base load
    sim = SimStation(cfg, tick_s=None, seed=7)
    if profile.kind == "evse":
        sim.plug_in(1)
        sim.connectors[1].evse.enabled = True
        sim.connectors[1].evse.offered_current_a = 16.0
    sim.step(1.0)
    async with sim:
        link = tcp_link(port)
        dev = Device("dev", profile, link, profile.default_unit, retries=0)
        try:
            ident = await dev.read_identity()
            cycle = await dev.read_cycle()
        finally:
            link.close()
    assert ident.ok and cycle.ok, ident.failures + cycle.failures
    got = {**ident.values, **cycle.values}
    want = sim.snapshot()["devices"]["dev"]["values"]
    assert got == want
    assert {r.quantity for r in profile.readable()} == set(got)
    for q, v in want.items():
        assert type(got[q]) is type(v), q
        if q.startswith("energy_"):
            assert type(got[q]) is int, q  # energy is integer Wh, never a float
    if profile.kind == "evse" and "cp_state" in got:
        assert got["cp_state"] == "C"
    if "current_l1" in got:
        assert got["current_l1"] > 0


async def _meter(port: int, profile=SDM630):
    cfg = station_config(dict(name="meter1", profile="eastron-sdm630", unit=1, port=port))
    sim = SimStation(cfg, tick_s=None)
    await sim.start()
    link = tcp_link(port)
    return sim, link, Device("meter1", profile, link, 1, retries=0)


async def test_exception_02_on_one_value_splits_the_block_and_remembers_the_layout():
    port = free_port()
    sim, link, dev = await _meter(port)
    try:
        reg = next(r for r in SDM630.readable() if r.quantity == "frequency_hz")
        first = next(b for b in dev.layout if b.start <= reg.address < b.end)
        assert len(first.spans) > 1  # the refused value shares a block with others
        planned = len(dev.layout)
        sim.inject(
            {
                "kind": "exception",
                "device": "meter1",
                "code": 2,
                "function": reg.function,
                "first": reg.address,
                "last": reg.address + reg.words - 1,
            }
        )
        n0 = link.requests
        cycle = await dev.read_cycle()
        split_requests = link.requests - n0
        assert not cycle.aborted
        assert [f.code for f in cycle.failures] and {f.code for f in cycle.failures} == {2}
        assert "frequency_hz" not in cycle.values
        assert set(cycle.values) == {r.quantity for r in SDM630.readable() if not r.once} - {
            "frequency_hz"
        }
        assert (reg.function, reg.address, reg.words) in {
            (s.function, s.address, s.words) for s in dev.unsupported
        }
        assert all(reg.address not in range(b.start, b.end) for b in dev.layout)

        # Second cycle: the adapted layout, no refused request, no failure.
        n0 = link.requests
        again = await dev.read_cycle()
        assert again.ok
        assert link.requests - n0 == len(dev.layout) == again.requests
        assert planned < len(dev.layout) < split_requests
        want = sim.snapshot()["devices"]["meter1"]["values"]
        assert again.values == {q: want[q] for q in again.values}
    finally:
        link.close()
        await sim.stop()


async def test_device_request_limit_exception_03_splits_the_block():
    # The profile claims 125 registers per read; the simulated SDM630 refuses more than 80.
    greedy = SDM630.model_copy(
        update={"limits": SDM630.limits.model_copy(update={"max_registers": 125, "max_gap": 125})}
    )
    port = free_port()
    sim, link, dev = await _meter(port, greedy)
    try:
        assert max(b.count for b in dev.layout) > 80
        n0 = link.requests
        cycle = await dev.read_cycle()
        assert not cycle.aborted
        assert [f.code for f in cycle.failures] == [3]
        assert not dev.unsupported
        assert max(b.count for b in dev.layout) <= 80
        want = sim.snapshot()["devices"]["meter1"]["values"]
        assert cycle.values == {q: want[q] for q in cycle.values}
        assert len(cycle.values) == len([r for r in SDM630.readable() if not r.once])
        first = link.requests - n0
        n0 = link.requests
        assert (await dev.read_cycle()).ok
        assert link.requests - n0 == len(dev.layout) == first - 1
    finally:
        link.close()
        await sim.stop()


@pytest.fixture
async def phoenix():
    eport, mport = free_port(), free_port()
    cfg = station_config(
        dict(name="evse1", profile="phoenix-ev-charge-control", unit=255, port=eport),
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=mport),
        connectors=({"id": 1, "evse": "evse1", "meter": "meter1", "max_current_a": 32},),
    )
    sim = SimStation(cfg, tick_s=None)
    await sim.start()
    link = tcp_link(eport)
    try:
        yield sim, Device("evse1", PHOENIX, link, 255, retries=0)
    finally:
        link.close()
        await sim.stop()


async def test_write_with_read_back_drives_the_evse(phoenix):
    sim, evse = phoenix
    sim.plug_in(1)
    conn = lambda: sim.snapshot()["connectors"][1]  # noqa: E731
    assert conn()["cp_state"] == "B"
    assert conn()["evse"]["enabled"] is False

    assert await evse.write("offered_current_a", 16.0) == 16.0
    assert conn()["evse"]["offered_current_a"] == 16.0
    assert await evse.write("charging_enabled", True) is True
    assert conn()["evse"]["enabled"] is True
    sim.step(1.0)
    assert conn()["cp_state"] == "C"
    assert conn()["currents_a"][0] > 15
    cycle = await evse.read_cycle()
    assert cycle.values["cp_state"] == "C"
    assert cycle.values["offered_current_a"] == 16.0

    assert await evse.write("charging_enabled", False) is False
    assert conn()["cp_state"] == "B"
    assert conn()["evse"]["enabled"] is False


async def test_write_the_device_refuses_raises_modbus_failure(phoenix):
    sim, evse = phoenix
    with pytest.raises(ModbusFailure) as e:
        await evse.write("offered_current_a", 3.0)  # IEC 61851: 0 or 6..80 A
    assert (e.value.kind, e.value.code) == ("exception", 3)
    assert sim.snapshot()["connectors"][1]["evse"]["offered_current_a"] == 0.0

    sim.inject({"kind": "exception", "device": "evse1", "code": 4, "function": "coil"})
    with pytest.raises(ModbusFailure) as e:
        await evse.write("charging_enabled", True)
    assert (e.value.kind, e.value.code) == ("exception", 4)
    assert sim.snapshot()["connectors"][1]["evse"]["enabled"] is False


async def test_read_back_mismatch_raises_write_verify_error(phoenix):
    sim, evse = phoenix
    # The controller limits the setpoint to the connector's 32 A: it accepts 40, reads 32.
    with pytest.raises(WriteVerifyError, match=r"offered_current_a=40.0, read back 32.0"):
        await evse.write("offered_current_a", 40.0)
    assert sim.snapshot()["connectors"][1]["evse"]["offered_current_a"] == 32.0
    assert await evse.write("offered_current_a", 40.0, verify=False) == 40.0


async def test_write_to_a_silent_device_is_a_timeout(phoenix):
    sim, evse = phoenix
    sim.inject({"kind": "no_response", "device": "evse1"})
    with pytest.raises(ModbusFailure) as e:
        await evse.write("offered_current_a", 16.0)
    assert e.value.kind == "timeout"
