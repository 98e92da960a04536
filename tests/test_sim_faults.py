"""Every injectable fault, observed the way the agent will see it: through Modbus."""

from __future__ import annotations

import contextlib
import time

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from agent.config import load_config, parse_config
from drivers.profile import load_profile
from hil.faults import FAULT_DOCS, FaultError, parse_fault
from hil.probe import read_value, write_value
from hil.procs import free_port, write_station
from hil.serial_pair import SerialPair
from hil.station import SimStation

EVSE = load_profile("phoenix-ev-charge-control")
METER = load_profile("eastron-sdm630")
CODE = {f.fault: c for c, f in sorted(EVSE.error_codes.items(), reverse=True)}  # lowest code


# A second meter on an RS-485 bus next to the TCP pair of hil.procs' station.
RTU_METER = """[[bus]]
name = "rs485"
kind = "rtu"
port = "{rtu}"
baudrate = 38400
[[device]]
name = "meter2"
profile = "eastron-sdm630"
bus = "rs485"
unit = 2
"""


class Rig:
    """A started station with a client per endpoint."""

    def __init__(self, sim: SimStation, meter, evse, rtu):
        self.sim, self.meter, self.evse, self.rtu = sim, meter, evse, rtu

    async def m(self, quantity: str):
        return await read_value(self.meter, METER, quantity, 1)

    async def e(self, quantity: str):
        return await read_value(self.evse, EVSE, quantity, 255)

    async def charge(self, amps: float = 16.0) -> None:
        self.sim.plug_in(1)
        await write_value(self.evse, EVSE, "charging_enabled", True, 255)
        await write_value(self.evse, EVSE, "offered_current_a", amps, 255)
        self.sim.step(1.0)
        assert await self.e("cp_state") == "C"


@pytest.fixture
async def rig(tmp_path):
    async with SerialPair() as (agent_end, sim_end):
        st = write_station(tmp_path, station_id="SIM-FAULTS", extra=RTU_METER.format(rtu=agent_end))
        mport, eport = st.meter_port, st.evse_port
        cfg = load_config(st.path)
        sim = SimStation(cfg, {"rs485": sim_end}, tick_s=None)
        await sim.start()
        clients = [
            AsyncModbusTcpClient("127.0.0.1", port=mport, timeout=0.3, retries=0),
            AsyncModbusTcpClient("127.0.0.1", port=eport, timeout=0.3, retries=0),
            AsyncModbusSerialClient(
                agent_end, framer=FramerType.RTU, baudrate=38400, timeout=0.3, retries=0
            ),
        ]
        try:
            for c in clients:
                assert await c.connect()
            yield Rig(sim, *clients)
        finally:
            for c in clients:
                c.close()
            await sim.stop()


async def _fails(coro) -> bool:
    """True if a request gets no usable answer (timeout, garbage, bad CRC)."""
    try:
        resp = await coro
    except ModbusException:
        return True
    return resp.isError() and not hasattr(resp, "exception_code")


def test_every_fault_kind_has_a_test_here():
    names = {n for n in globals() if n.startswith("test_")}
    assert [k for k in FAULT_DOCS if f"test_{k}" not in names] == []


# -------------------------------------------------------------------- communication


async def test_no_response(rig):
    fid = rig.sim.inject({"kind": "no_response", "device": "meter1"})
    with pytest.raises(ModbusException):
        await rig.meter.read_input_registers(0, count=2, device_id=1)
    assert await rig.e("cp_state") == "A"  # the other device still answers
    rig.sim.clear(fid)
    assert await rig.m("voltage_l1") > 200


async def test_exception(rig):
    rig.sim.inject({"kind": "exception", "device": "meter1", "code": 4})
    resp = await rig.meter.read_input_registers(0, count=2, device_id=1)
    assert resp.isError() and resp.exception_code == 4
    rig.sim.clear()
    rig.sim.inject(
        {"kind": "exception", "device": "meter1", "code": 2, "function": "input",
         "first": 0x48, "last": 0x49}
    )  # fmt: skip
    resp = await rig.meter.read_input_registers(0x46, count=4, device_id=1)
    assert resp.isError() and resp.exception_code == 2
    assert await rig.m("voltage_l1") > 200  # outside the range


async def test_garbage(rig):
    rig.sim.inject({"kind": "garbage", "device": "meter1"})
    rig.sim.inject({"kind": "garbage", "device": "meter2"})
    assert await _fails(rig.meter.read_input_registers(0, count=2, device_id=1))
    assert await _fails(rig.rtu.read_input_registers(0, count=2, device_id=2))
    rig.sim.clear()
    assert await read_value(rig.rtu, METER, "voltage_l1", 2) > 200


async def test_truncated(rig):
    rig.sim.inject({"kind": "truncated", "device": "evse1"})
    rig.sim.inject({"kind": "truncated", "device": "meter2"})
    assert await _fails(rig.evse.read_input_registers(100, count=1, device_id=255))
    assert await _fails(rig.rtu.read_input_registers(0, count=2, device_id=2))


async def test_crc_error(rig):
    rig.sim.inject({"kind": "crc_error", "device": "meter2"})
    assert await _fails(rig.rtu.read_input_registers(0, count=2, device_id=2))
    with pytest.raises(FaultError, match="no CRC"):
        rig.sim.inject({"kind": "crc_error", "device": "meter1"})  # TCP


async def test_slow(rig):
    rig.sim.inject({"kind": "slow", "device": "meter1", "delay_s": 0.5})
    assert await _fails(rig.meter.read_input_registers(0, count=2, device_id=1))  # 0.3 s timeout
    rig.sim.clear()
    rig.sim.inject({"kind": "slow", "device": "meter2", "delay_s": 0.15})
    start = time.perf_counter()
    assert await read_value(rig.rtu, METER, "voltage_l1", 2) > 200
    assert time.perf_counter() - start >= 0.15


# ---------------------------------------------------------------------------- supply


async def test_voltage_loss(rig):
    await rig.charge()
    rig.sim.inject({"kind": "voltage_loss", "connector": 1, "phase": 2})
    assert await rig.m("voltage_l2") == 0.0
    assert await rig.m("current_l2") == 0.0
    assert await rig.m("current_l1") > 15
    assert await rig.e("voltage_l2") == 0.0  # the EVSE measures the same supply


async def test_voltage_sag(rig):
    rig.sim.inject({"kind": "voltage_sag", "device": "meter1", "phase": 1, "volts": 30})
    assert await rig.m("voltage_l1") == pytest.approx(200, abs=3)
    assert await rig.m("voltage_l3") == pytest.approx(230, abs=3)


async def test_voltage_swell(rig):
    rig.sim.inject({"kind": "voltage_swell", "connector": 1, "volts": 25})
    for n in (1, 2, 3):
        assert await rig.m(f"voltage_l{n}") == pytest.approx(255, abs=3)


async def test_supply_outage(rig):
    await rig.charge()
    e0 = await rig.m("energy_import_wh")
    rig.sim.inject({"kind": "supply_outage", "connector": 1})
    for _ in range(100):
        rig.sim.step(1.0)
    for n in (1, 2, 3):
        assert await rig.m(f"voltage_l{n}") == 0.0
        assert await rig.m(f"current_l{n}") == 0.0
    assert await rig.m("frequency_hz") == 0.0
    assert await rig.m("energy_import_wh") == e0  # still answers; nothing counted


async def test_supply_fault_on_a_meter_without_connector(rig):
    rig.sim.inject({"kind": "voltage_loss", "device": "meter2", "phase": 3})
    assert await read_value(rig.rtu, METER, "voltage_l3", 2) == 0.0
    assert await rig.m("voltage_l3") > 200  # another supply


# ---------------------------------------------------------------------------- energy


async def test_energy_frozen(rig):
    await rig.charge()
    e0 = await rig.m("energy_import_wh")
    rig.sim.inject({"kind": "energy_frozen", "device": "meter1"})
    for _ in range(60):
        rig.sim.step(1.0)
    assert await rig.m("energy_import_wh") == e0
    assert await rig.m("power_w") > 10_000  # power goes on
    assert rig.sim.devices["meter1"].meter.import_wh > e0 + 100
    rig.sim.clear()
    assert await rig.m("energy_import_wh") > e0 + 100  # jumps to the true count


async def test_energy_backwards(rig):
    e0 = await rig.m("energy_import_wh")
    rig.sim.inject({"kind": "energy_backwards", "device": "meter1", "wh": 500})
    assert await rig.m("energy_import_wh") == e0 - 500
    assert await rig.m("energy_total_wh") == e0 - 500


async def test_energy_jump(rig):
    e0 = await rig.e("energy_import_wh")
    rig.sim.inject({"kind": "energy_jump", "device": "evse1", "wh": 1_000_000})
    assert await rig.e("energy_import_wh") == e0 + 1_000_000


# ------------------------------------------------------------------------------ EVSE


async def test_cp_state_e(rig):
    await rig.charge()
    rig.sim.inject({"kind": "cp_state_e", "connector": 1})
    assert await rig.e("cp_state") == "E"
    assert await rig.e("evse_error_code") == CODE["pilot_short"] == 4
    assert await rig.m("current_l1") == 0.0


async def test_cp_state_f(rig):
    await rig.charge()
    rig.sim.inject({"kind": "cp_state_f", "device": "evse1"})
    assert await rig.e("cp_state") == "F"
    assert await rig.e("evse_error_code") == CODE["evse_unavailable"] == 5
    assert await rig.m("current_l1") == 0.0
    rig.sim.clear()
    assert await rig.e("cp_state") == "C"
    assert await rig.e("evse_error_code") == 0


async def test_welded_contactor(rig):
    await rig.charge()
    rig.sim.inject({"kind": "welded_contactor", "connector": 1})
    assert await rig.e("evse_error_code") == 0  # not detectable while closed on purpose
    await write_value(rig.evse, EVSE, "charging_enabled", False, 255)
    assert await rig.e("cp_state") == "C"  # the car keeps requesting, no PWM
    assert await rig.m("current_l1") > 15  # current keeps flowing
    assert await rig.e("current_l1") > 15  # the controller's own meter sees it too
    # A Phoenix has no contactor feedback: it cannot know, its code stays 0.
    assert await rig.e("evse_error_code") == 0


async def test_contactor_stuck_open(rig):
    rig.sim.inject({"kind": "contactor_stuck_open", "connector": 1})
    rig.sim.plug_in(1)
    await write_value(rig.evse, EVSE, "charging_enabled", True, 255)
    await write_value(rig.evse, EVSE, "offered_current_a", 16.0, 255)
    assert await rig.e("cp_state") == "C"
    assert await rig.m("current_l1") == 0.0
    assert await rig.e("evse_error_code") == 0  # no feedback: the Phoenix cannot tell


async def test_over_temperature(rig):
    await rig.charge()
    rig.sim.inject({"kind": "over_temperature", "connector": 1, "temperature_c": 92})
    # Phoenix has no temperature register and no code for it: charging just stops.
    assert await rig.e("cp_state") == "B"
    assert await rig.m("current_l1") == 0.0
    assert await rig.e("evse_error_code") == 0
    snap = rig.sim.snapshot()["connectors"][1]["evse"]
    assert (snap["temperature_c"], snap["error"]) == (92, "overtemperature")


async def test_rcd_trip(rig):
    await rig.charge()
    rig.sim.inject({"kind": "rcd_trip", "connector": 1})
    assert await rig.e("cp_state") == "F"
    assert await rig.e("evse_error_code") == CODE["rcd_dc"] == 15
    assert await rig.m("current_l1") == 0.0


async def test_lock_failure(rig):
    rig.sim.inject({"kind": "lock_failure", "connector": 1})
    assert await rig.e("evse_error_code") == 0  # no plug, nothing to lock
    rig.sim.plug_in(1)
    await write_value(rig.evse, EVSE, "charging_enabled", True, 255)
    await write_value(rig.evse, EVSE, "offered_current_a", 16.0, 255)
    assert await rig.e("cp_state") == "B"
    assert await rig.e("evse_error_code") == CODE["lock_failure"] == 8


async def test_diode_fault(rig):
    rig.sim.inject({"kind": "diode_fault", "connector": 1})
    rig.sim.plug_in(1)
    await write_value(rig.evse, EVSE, "charging_enabled", True, 255)
    await write_value(rig.evse, EVSE, "offered_current_a", 16.0, 255)
    assert await rig.e("evse_error_code") == CODE["diode_missing"] == 13
    assert await rig.e("cp_state") == "F"  # the controller's reaction to the car's fault
    assert await rig.m("current_l1") == 0.0


async def test_ev_overcurrent(rig):
    await rig.charge(16.0)
    rig.sim.inject({"kind": "ev_overcurrent", "connector": 1, "current_a": 21})
    assert await rig.m("current_l1") == 21.0
    rig.sim.step(1.0)
    assert await rig.e("evse_error_code") == CODE["overcurrent"] == 9
    for _ in range(5):
        rig.sim.step(1.0)
    assert await rig.m("current_l1") == 0.0  # the EVSE opened
    assert await rig.e("cp_state") == "B"


# ------------------------------------------------------------------- requests, targets


def test_fault_requests_are_validated_with_clear_messages():
    with pytest.raises(FaultError, match="unknown fault kind 'melt'"):
        parse_fault({"kind": "melt", "device": "x"})
    with pytest.raises(FaultError, match="code must be a Modbus exception code"):
        parse_fault({"kind": "exception", "device": "x", "code": 99})
    with pytest.raises(FaultError, match="phase: Input should be 1, 2 or 3"):
        parse_fault({"kind": "voltage_loss", "connector": 1, "phase": 4})
    with pytest.raises(FaultError, match="exactly one target"):
        parse_fault({"kind": "garbage", "device": "a", "connector": 1})
    with pytest.raises(FaultError, match="volts: unknown parameter"):
        parse_fault({"kind": "garbage", "device": "a", "volts": 3})
    with pytest.raises(FaultError, match="not valid JSON"):
        parse_fault("{")
    assert parse_fault('{"kind": "slow", "device": "a", "delay_s": 1}').delay_s == 1


async def test_targets_are_checked(rig):
    with pytest.raises(FaultError, match="meter1 is not an EVSE"):
        rig.sim.inject({"kind": "rcd_trip", "device": "meter1"})
    with pytest.raises(FaultError, match="meter2 is on no connector"):
        rig.sim.inject({"kind": "cp_state_e", "device": "meter2"})
    with pytest.raises(FaultError, match="no connector 3"):
        rig.sim.inject({"kind": "cp_state_e", "connector": 3})
    with pytest.raises(FaultError, match="no active fault 'f1'"):
        rig.sim.clear("f1")
    assert rig.sim.snapshot()["faults"] == []


async def test_connector_comm_fault_hits_both_devices_and_clear_all(rig):
    fid = rig.sim.inject({"kind": "no_response", "connector": 1})
    assert await _fails(rig.meter.read_input_registers(0, count=2, device_id=1))
    assert await _fails(rig.evse.read_input_registers(100, count=1, device_id=255))
    assert rig.sim.snapshot()["faults"][0]["devices"] == ["evse1", "meter1"]
    assert rig.sim.clear("all") == [fid]
    with contextlib.suppress(ModbusException):  # a TCP client may need to reconnect
        await rig.meter.read_input_registers(0, count=2, device_id=1)
    assert await rig.m("voltage_l1") > 200


# ------------------------------------------------- added for diagnosis scenarios (issue 3)


async def test_frequency_deviation(rig):
    hz = await rig.m("frequency_hz")
    rig.sim.inject({"kind": "frequency_deviation", "connector": 1, "hz": -1.2})
    assert await rig.m("frequency_hz") == pytest.approx(hz - 1.2, abs=0.06)
    assert await rig.m("voltage_l1") > 200  # only the frequency moves
    rig.sim.clear()
    assert await rig.m("frequency_hz") == pytest.approx(50, abs=0.06)
    with pytest.raises(FaultError, match="hz must not be 0"):
        parse_fault({"kind": "frequency_deviation", "connector": 1, "hz": 0})


async def test_not_available():
    from drivers.codec import NotAvailable as NA

    port = free_port()
    toml = f"""
[station]
id = "SIM-NA"
[[bus]]
name = "lan"
kind = "tcp"
[[device]]
name = "meter1"
profile = "abb-b23"
bus = "lan"
host = "127.0.0.1"
port = {port}
unit = 1
"""
    abb = load_profile("abb-b23")
    sim = SimStation(parse_config(toml), tick_s=None)
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
    try:
        assert await client.connect()
        fid = sim.inject({"kind": "not_available", "device": "meter1", "quantity": "voltage_l1"})
        sim.step(1.0)  # the model publishes again: the marker stays
        with pytest.raises(NA):
            await read_value(client, abb, "voltage_l1", 1)
        assert await read_value(client, abb, "voltage_l2", 1) > 200
        sim.clear(fid)
        assert await read_value(client, abb, "voltage_l1", 1) > 200
        with pytest.raises(FaultError, match="no 'not available' marker"):
            sim.inject({"kind": "not_available", "device": "meter1", "quantity": "model"})
        with pytest.raises(FaultError, match="has no readable cp_state"):
            sim.inject({"kind": "not_available", "device": "meter1", "quantity": "cp_state"})
    finally:
        client.close()
        await sim.stop()


async def test_evse_error_code(rig):
    rig.sim.inject({"kind": "evse_error_code", "connector": 1, "code": 99})  # not in the table
    assert await rig.e("evse_error_code") == 99
    rig.sim.clear()
    assert await rig.e("evse_error_code") == 0
    with pytest.raises(FaultError, match="meter1 is not an EVSE"):
        rig.sim.inject({"kind": "evse_error_code", "device": "meter1", "code": 3})
