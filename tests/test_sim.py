"""The simulated station over real Modbus: every profile over TCP, RTU on a socat pair, the
charge cycle through the EVSE's writable registers, wire timing, the control interface."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from agent.config import parse_config
from drivers import quantities
from drivers.profile import Profile, load_profile, profile_names
from hil.control import run_sim, send_command
from hil.models import EV_DRAW_RATIO
from hil.probe import read_value, write_value
from hil.procs import free_port
from hil.serial_pair import SerialPair
from hil.server import wire_time_s
from hil.station import SimError, SimStation

EVSE_PROFILES = [n for n in profile_names() if load_profile(n).kind == "evse"]


def station_toml(meter_port: int, evse_port: int, evse_profile: str = "phoenix-ev-charge-control"):
    return f"""
[station]
id = "SIM-TEST"

[[bus]]
name = "lan"
kind = "tcp"

[[device]]
name = "meter1"
profile = "eastron-sdm630"
bus = "lan"
host = "127.0.0.1"
port = {meter_port}
unit = 1

[[device]]
name = "evse1"
profile = "{evse_profile}"
bus = "lan"
host = "127.0.0.1"
port = {evse_port}
unit = 255

[[connector]]
id = 1
evse = "evse1"
meter = "meter1"
max_current_a = 32
"""


@contextlib.asynccontextmanager
async def tcp_client(port: int, timeout: float = 0.5):
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


# ------------------------------------------------------------- every profile, every value

BASE_VALUES = {
    "voltage": "230.1",
    "current": "16.02",
    "power_factor": "0.97",
    "power": "3456.7",
    "apparent_power": "3500.3",
    "reactive_power": "512.4",
    "frequency_hz": "49.98",
    "energy": "123456",
    "reactive_energy": "23456",
    "temperature_c": "41.5",
    "offered_current_a": "16",
    "cable_max_current_a": "32",
    "max_hw_current_a": "32",
    "failsafe_current_a": "6",
    "failsafe_timeout_s": "30",
    "thd": "3.2",
    "evse_error_code": "3",
}


def sample_value(profile: Profile, quantity: str):
    """A value every register of `quantity` represents exactly (rounded to the coarsest step)."""
    regs = [r for r in profile.registers if r.quantity == quantity]
    q = quantities.get(quantity)
    mapped = next((r.map for r in regs if r.map), None)
    if q.kind == "bool":
        return True
    if mapped:
        return list(mapped.values())[-1]
    if q.kind == "str":
        reg = regs[0]
        return "SIM-12345678"[: reg.words * 2] if reg.type == "ascii" else "12345678"
    if quantity == "evse_error_code" and profile.error_codes:
        return max(profile.error_codes)
    base = next(v for k, v in BASE_VALUES.items() if quantity.startswith(k))
    step = max(
        (Decimal(repr(r.scale)) for r in regs if r.type not in ("float32", "t5", "t6")),
        default=None,
    )
    value = Decimal(base)
    if step is not None:
        value = (value / step).to_integral_value(ROUND_HALF_EVEN) * step
    return int(value) if q.kind == "int" else float(value)


@pytest.mark.parametrize("name", profile_names())
async def test_every_profile_is_served_and_decodes_to_the_values_set(name):
    profile = load_profile(name)
    port = free_port()
    cfg = parse_config(f"""
[station]
id = "ONE"
[[bus]]
name = "lan"
kind = "tcp"
[[device]]
name = "dev"
profile = "{name}"
bus = "lan"
host = "127.0.0.1"
port = {port}
unit = {profile.default_unit}
""")
    sim = SimStation(cfg, tick_s=None)
    image = sim.devices["dev"].image
    expected = {}
    for q in image.owned_quantities():
        if q not in image.views:
            expected[q] = sample_value(profile, q)
            image.set(q, expected[q])
    async with sim, tcp_client(port) as client:
        for reg in profile.readable():
            got = await read_value(client, profile, reg.quantity, profile.default_unit)
            if reg.quantity in image.views:
                continue  # decodes; its value is the owner's
            assert got == expected[reg.quantity], reg.quantity
            assert type(got) is type(expected[reg.quantity]), reg.quantity


async def test_unknown_unit_on_tcp_is_gateway_exception():
    mport, eport = free_port(), free_port()
    sim = SimStation(parse_config(station_toml(mport, eport)), tick_s=None)
    async with sim, tcp_client(mport) as client:
        resp = await client.read_input_registers(0, count=2, device_id=9)
        assert resp.isError() and resp.exception_code == 0x0B


# ------------------------------------------------------------------------------ RTU

RTU_TOML = """
[station]
id = "SIM-RTU"
[[bus]]
name = "rs485"
kind = "rtu"
port = "{port}"
baudrate = {baud}
[[device]]
name = "meter1"
profile = "eastron-sdm630"
bus = "rs485"
unit = 1
[[device]]
name = "meter2"
profile = "iskra-wm3m4c"
bus = "rs485"
unit = 33
"""


@contextlib.asynccontextmanager
async def rtu_client(port: str, baud: int, timeout: float = 0.3):
    client = AsyncModbusSerialClient(
        port, framer=FramerType.RTU, baudrate=baud, timeout=timeout, retries=0
    )
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def test_rtu_bus_serves_two_units_and_ignores_a_third():
    async with SerialPair() as (agent_end, sim_end):
        cfg = parse_config(RTU_TOML.format(port=agent_end, baud=19200))
        sim = SimStation(cfg, {"rs485": sim_end}, tick_s=None)
        sim.devices["meter1"].image.set("voltage_l1", 231.4)
        sim.devices["meter2"].image.set("voltage_l1", 228.7)
        async with sim, rtu_client(agent_end, 19200) as client:
            assert (
                await read_value(client, load_profile("eastron-sdm630"), "voltage_l1", 1) == 231.4
            )
            assert await read_value(client, load_profile("iskra-wm3m4c"), "voltage_l1", 33) == 228.7
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=2, device_id=3)
            # The bus is still usable after the silent unit.
            assert (
                await read_value(client, load_profile("eastron-sdm630"), "voltage_l1", 1) == 231.4
            )


def test_rtu_bus_without_serial_port_is_a_clear_error():
    cfg = parse_config(RTU_TOML.format(port="/dev/ttyUSB9", baud=9600))
    with pytest.raises(SimError, match="serial_ports"):
        asyncio.run(SimStation(cfg, tick_s=None).start())


async def _timed_read(client, unit: int) -> float:
    start = time.perf_counter()
    resp = await client.read_input_registers(0, count=10, device_id=unit)
    assert not resp.isError()
    return time.perf_counter() - start


async def test_wire_timing_makes_rtu_answers_take_the_wire_time():
    baud = 2400
    wire = wire_time_s(8, 5 + 2 * 10, baud)  # FC04 request 8 bytes, response 5 + 2n
    assert wire == pytest.approx((8 + 25) * 10 / 2400 + 3.5 * 10 / 2400)  # 8N1: 10 bits
    for timed in (True, False):
        async with SerialPair() as (agent_end, sim_end):
            cfg = parse_config(RTU_TOML.format(port=agent_end, baud=baud))
            sim = SimStation(cfg, {"rs485": sim_end}, wire_timing=timed, tick_s=None)
            async with sim, rtu_client(agent_end, baud, timeout=2) as client:
                elapsed = min([await _timed_read(client, 1) for _ in range(3)])
        if timed:
            assert elapsed >= wire
        else:
            assert elapsed < wire / 2  # a pty alone is far faster: the delay is the sim's


# ---------------------------------------------------------------------- charge cycle


@pytest.mark.parametrize("evse_profile", EVSE_PROFILES)
async def test_charge_cycle_through_the_evse_registers(evse_profile):
    mport, eport = free_port(), free_port()
    sim = SimStation(parse_config(station_toml(mport, eport, evse_profile)), tick_s=None)
    evse, meter = load_profile(evse_profile), load_profile("eastron-sdm630")
    readable = {r.quantity for r in evse.readable()}
    writable = {r.quantity for r in evse.registers if r.writable}
    async with sim, tcp_client(mport) as mc, tcp_client(eport) as ec:

        async def evse_state():
            if "cp_state" in readable:
                return await read_value(ec, evse, "cp_state", 255)
            return await read_value(ec, evse, "charger_state", 255)

        assert await evse_state() in ("A", "not_ready")
        sim.plug_in(1)
        assert await evse_state() in ("B", "not_ready")
        assert sim.snapshot()["connectors"][1]["cp_state"] == "B"

        if "charging_enabled" in writable:
            await write_value(ec, evse, "charging_enabled", True, 255)
        await write_value(ec, evse, "offered_current_a", 16.0, 255)
        sim.step(1.0)
        assert await evse_state() in ("C", "charging")
        assert await read_value(ec, evse, "offered_current_a", 255) == 16.0
        if "contactor_closed" in readable:
            assert await read_value(ec, evse, "contactor_closed", 255) is True
        for n in (1, 2, 3):
            amps = await read_value(mc, meter, f"current_l{n}", 1)
            assert amps == pytest.approx(16 * EV_DRAW_RATIO, abs=0.1)
        if "current_l1" in readable:
            assert await read_value(ec, evse, "current_l1", 255) == pytest.approx(16, abs=0.7)

        e0 = await read_value(mc, meter, "energy_import_wh", 1)
        p = await read_value(mc, meter, "power_w", 1)
        for _ in range(600):
            sim.step(0.1)
        e1 = await read_value(mc, meter, "energy_import_wh", 1)
        assert e1 - e0 == pytest.approx(p * 60 / 3600, abs=3)  # ~180 Wh in a minute

        if "charging_enabled" in writable:
            await write_value(ec, evse, "charging_enabled", False, 255)
        else:
            await write_value(ec, evse, "offered_current_a", 0.0, 255)
        assert await evse_state() in ("B", "not_ready")
        assert await read_value(mc, meter, "current_l1", 1) == 0.0
        sim.unplug(1)
        assert sim.snapshot()["connectors"][1]["cp_state"] == "A"


async def test_offered_current_outside_iec_range_is_refused_and_clamped_to_hw_max():
    mport, eport = free_port(), free_port()
    sim = SimStation(parse_config(station_toml(mport, eport)), tick_s=None)
    evse = load_profile("phoenix-ev-charge-control")
    async with sim, tcp_client(eport) as ec:
        resp = await ec.write_register(528, 3, device_id=255)
        assert resp.isError() and resp.exception_code == 3
        await write_value(ec, evse, "offered_current_a", 63.0, 255)
        assert await read_value(ec, evse, "offered_current_a", 255) == 32.0  # connector max


async def test_ev_suspend_and_single_phase_car():
    mport, eport = free_port(), free_port()
    sim = SimStation(parse_config(station_toml(mport, eport)), tick_s=None)
    evse, meter = load_profile("phoenix-ev-charge-control"), load_profile("eastron-sdm630")
    async with sim, tcp_client(mport) as mc, tcp_client(eport) as ec:
        sim.plug_in(1, ev_max_current_a=10, phases=1)
        await write_value(ec, evse, "charging_enabled", True, 255)
        await write_value(ec, evse, "offered_current_a", 16.0, 255)
        assert await read_value(mc, meter, "current_l1", 1) == pytest.approx(9.8, abs=0.1)
        assert await read_value(mc, meter, "current_l2", 1) == 0.0
        sim.ev_suspend(1, True)
        assert await read_value(ec, evse, "cp_state", 255) == "B"
        assert await read_value(mc, meter, "current_l1", 1) == 0.0
        sim.ev_suspend(1, False)
        assert await read_value(ec, evse, "cp_state", 255) == "C"
    with pytest.raises(SimError, match="already has a car"):
        sim.plug_in(1)
    with pytest.raises(SimError, match="no connector 7"):
        sim.plug_in(7)


async def test_meter_without_connector_shows_base_load_and_tick_task_runs():
    port = free_port()
    cfg = parse_config(f"""
[station]
id = "BASE"
[[bus]]
name = "lan"
kind = "tcp"
[[device]]
name = "house"
profile = "eastron-sdm630"
bus = "lan"
host = "127.0.0.1"
port = {port}
unit = 1
[sim]
voltage_v = 240.0
""")
    meter = load_profile("eastron-sdm630")
    async with SimStation(cfg, tick_s=0.05, seed=3) as sim, tcp_client(port) as client:
        assert 0 < await read_value(client, meter, "current_l1", 1) < 2
        assert await read_value(client, meter, "voltage_l1", 1) == pytest.approx(240, abs=3)
        assert await read_value(client, meter, "frequency_hz", 1) == pytest.approx(50, abs=0.1)
        await asyncio.sleep(0.3)
        assert sim.time_s > 0.1  # the tick task advanced the model


def test_same_seed_same_station():
    cfg = parse_config(station_toml(free_port(), free_port()))

    def run(seed):
        sim = SimStation(cfg, seed=seed, tick_s=None)
        sim.plug_in(1)
        sim.connectors[1].evse.enabled = True
        sim.connectors[1].evse.offered_current_a = 16
        for _ in range(50):
            sim.step(0.1)
        return sim.snapshot()["devices"]

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---------------------------------------------------------------- control interface


async def test_control_interface_end_to_end(tmp_path):
    mport, eport, cport = free_port(), free_port(), free_port()
    rtu_link = tmp_path / "ttyEVSIM"
    toml = (
        station_toml(mport, eport)
        + f"""
[[bus]]
name = "rs485"
kind = "rtu"
port = "{rtu_link}"
baudrate = 19200
[[device]]
name = "meter2"
profile = "eastron-sdm72dm-v2"
bus = "rs485"
unit = 5
[sim]
control_port = {cport}
"""
    )
    cfg = parse_config(toml)
    ready = asyncio.Event()
    task = asyncio.create_task(run_sim(cfg, on_ready=lambda station, control: ready.set()))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        ok = await send_command(cport, {"cmd": "plug_in", "connector": 1})
        assert ok == {"ok": True, "result": {"connector": 1, "cp_state": "B"}}

        reply = await send_command(
            cport, {"cmd": "inject", "fault": {"kind": "cp_state_f", "connector": 1}}
        )
        assert reply["ok"], reply
        fid = reply["result"]["id"]
        async with tcp_client(eport) as ec:
            evse = load_profile("phoenix-ev-charge-control")
            assert await read_value(ec, evse, "cp_state", 255) == "F"
            assert await read_value(ec, evse, "evse_error_code", 255) == 5

        listed = await send_command(cport, {"cmd": "list_faults"})
        assert [f["id"] for f in listed["result"]["active"]] == [fid]
        assert "welded_contactor" in listed["result"]["kinds"]
        snap = (await send_command(cport, {"cmd": "snapshot"}))["result"]
        assert snap["connectors"]["1"]["cp_state"] == "F"
        assert snap["faults"][0]["kind"] == "cp_state_f"

        assert (await send_command(cport, {"cmd": "clear", "id": fid}))["result"] == {
            "cleared": [fid]
        }
        reply = await send_command(cport, {"cmd": "suspend", "connector": 1, "suspended": True})
        assert reply == {"ok": True, "result": {"connector": 1, "cp_state": "B"}}
        assert (await send_command(cport, {"cmd": "unplug", "connector": 1}))["ok"]

        # The rtu bus got a serial pair with the agent end at the configured port.
        async with rtu_client(str(rtu_link), 19200) as client:
            volts = await read_value(client, load_profile("eastron-sdm72dm-v2"), "voltage_l1", 5)
            assert volts == pytest.approx(230, abs=3)

        # Bad requests get clear errors and change nothing.
        bad = {
            "unknown command 'jump'": {"cmd": "jump"},
            "connector: required": {"cmd": "plug_in"},
            "no connector 9": {"cmd": "plug_in", "connector": 9},
            "unknown fault kind 'meltdown'": {
                "cmd": "inject",
                "fault": {"kind": "meltdown", "connector": 1},
            },
            "fault.delay_s: required": {
                "cmd": "inject",
                "fault": {"kind": "slow", "device": "meter1"},
            },
            "exactly one target": {"cmd": "inject", "fault": {"kind": "garbage"}},
            "no device 'nope'": {"cmd": "inject", "fault": {"kind": "garbage", "device": "nope"}},
            "has no CRC": {"cmd": "inject", "fault": {"kind": "crc_error", "device": "meter1"}},
            "no active fault 'f99'": {"cmd": "clear", "id": "f99"},
        }
        for message, command in bad.items():
            reply = await send_command(cport, command)
            assert reply["ok"] is False, command
            assert message in reply["error"], reply["error"]
        reader, writer = await asyncio.open_connection("127.0.0.1", cport)
        writer.write(b"not json\n")
        await writer.drain()
        line = await reader.readline()
        assert b"not valid JSON" in line
        writer.close()
        assert (await send_command(cport, {"cmd": "list_faults"}))["result"]["active"] == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not rtu_link.exists()  # socat stopped, its link is gone


async def test_keba_failsafe_drops_to_the_failsafe_current_without_writes():
    mport, eport = free_port(), free_port()
    sim = SimStation(parse_config(station_toml(mport, eport, "keba-p30x")), tick_s=None)
    keba, meter = load_profile("keba-p30x"), load_profile("eastron-sdm630")
    async with sim, tcp_client(mport) as mc, tcp_client(eport) as ec:
        sim.plug_in(1)
        await write_value(ec, keba, "failsafe_current_a", 6.0, 255)
        await write_value(ec, keba, "failsafe_timeout_s", 10.0, 255)
        assert await read_value(ec, keba, "failsafe_timeout_s", 255) == 10.0  # read back at 1602
        await write_value(ec, keba, "charging_enabled", True, 255)
        await write_value(ec, keba, "offered_current_a", 16.0, 255)
        sim.step(9.0)
        assert await read_value(mc, meter, "current_l1", 1) == pytest.approx(15.7, abs=0.1)
        sim.step(2.0)  # 11 s without a write
        assert await read_value(mc, meter, "current_l1", 1) == pytest.approx(5.9, abs=0.1)
        assert sim.snapshot()["connectors"][1]["evse"]["failsafe"] is True
        await write_value(ec, keba, "failsafe_timeout_s", 10.0, 255)  # the heartbeat
        assert await read_value(mc, meter, "current_l1", 1) == pytest.approx(15.7, abs=0.1)


def test_meter_shared_by_two_connectors_measures_both():
    cfg = parse_config(f"""
[station]
id = "TWO"
[[bus]]
name = "lan"
kind = "tcp"
[[device]]
name = "main"
profile = "eastron-sdm630"
bus = "lan"
host = "127.0.0.1"
port = {free_port()}
unit = 1
[[device]]
name = "evse1"
profile = "phoenix-ev-charge-control"
bus = "lan"
host = "127.0.0.1"
port = {free_port()}
unit = 255
[[device]]
name = "evse2"
profile = "bender-cc612"
bus = "lan"
host = "127.0.0.1"
port = {free_port()}
unit = 255
[[connector]]
id = 1
evse = "evse1"
meter = "main"
[[connector]]
id = 2
evse = "evse2"
meter = "main"
""")
    sim = SimStation(cfg, tick_s=None)
    for cid, amps in ((1, 16.0), (2, 10.0)):
        sim.plug_in(cid)
        sim.connectors[cid].evse.enabled = True
        sim.connectors[cid].evse.offered_current_a = amps
    sim.step(1.0)
    values = sim.snapshot()["devices"]["main"]["values"]
    assert values["current_l1"] == pytest.approx(26 * EV_DRAW_RATIO, abs=0.1)
    assert sim.connectors[1].supply is sim.connectors[2].supply
    fid = sim.inject({"kind": "voltage_loss", "connector": 2, "phase": 1})
    assert sim.snapshot()["connectors"][1]["voltages_v"][0] == 0.0  # one supply
    sim.clear(fid)
    assert sim.snapshot()["connectors"][1]["voltages_v"][0] > 200


async def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sim = SimStation(parse_config(station_toml(port, free_port())), tick_s=None)
        with pytest.raises(RuntimeError, match=f"cannot listen on tcp 127.0.0.1:{port}"):
            await sim.start()
        await sim.stop()
