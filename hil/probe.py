"""Read and write a device's canonical values over Modbus, driven by its profile.

What a HIL scenario (or a test) uses to observe a device from the outside, simulated or
real: one request per value, decoded with the driver's codec. It is deliberately not the
agent's poller — a scenario checks the device, not the planner.
"""

from __future__ import annotations

from pymodbus.client.base import ModbusBaseClient
from pymodbus.pdu import ModbusPDU

from drivers import codec
from drivers.codec import Value
from drivers.profile import Profile, Register


class ProbeError(RuntimeError):
    """The device answered with a Modbus exception; `code` is its exception code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _check(resp: ModbusPDU, what: str) -> ModbusPDU:
    if resp.isError():
        code = getattr(resp, "exception_code", 0)
        raise ProbeError(f"{what}: device answered exception {code}", code)
    return resp


async def read_words(
    client: ModbusBaseClient, function: str, address: int, count: int, unit: int
) -> list[int]:
    """Read `count` registers (or bits, as 0/1) from a table; ProbeError on an exception."""
    what = f"read {function} {address}+{count} unit {unit}"
    if function == "input":
        resp = await client.read_input_registers(address, count=count, device_id=unit)
    elif function == "holding":
        resp = await client.read_holding_registers(address, count=count, device_id=unit)
    elif function == "coil":
        resp = await client.read_coils(address, count=count, device_id=unit)
    elif function == "discrete":
        resp = await client.read_discrete_inputs(address, count=count, device_id=unit)
    else:
        raise ValueError(f"unknown function {function!r}")
    _check(resp, what)
    if function in ("coil", "discrete"):
        return [int(b) for b in resp.bits[:count]]
    return list(resp.registers)


def readable_register(profile: Profile, quantity: str) -> Register:
    """The register a poller reads `quantity` from; KeyError if there is none."""
    for reg in profile.readable():
        if reg.quantity == quantity:
            return reg
    raise KeyError(f"profile {profile.name} has no readable register for {quantity}")


async def read_value(client: ModbusBaseClient, profile: Profile, quantity: str, unit: int) -> Value:
    """Read and decode one canonical value (with its exponent register, if any)."""
    reg = readable_register(profile, quantity)
    words = await read_words(client, reg.function, reg.address, reg.words, unit)
    exponent = None
    if reg.exponent_address is not None:
        (raw,) = await read_words(client, reg.function, reg.exponent_address, 1, unit)
        exponent = raw - 0x10000 if raw & 0x8000 else raw
    return codec.decode(reg, words, profile.order(reg), exponent)


async def write_value(
    client: ModbusBaseClient, profile: Profile, quantity: str, value: Value, unit: int
) -> None:
    """Encode and write one canonical value to the register the profile marks writable
    (FC5 for a coil, FC6 for one register, FC16 for more); ProbeError on an exception."""
    reg = profile.writable(quantity)
    words = codec.encode(reg, value, profile.order(reg))
    what = f"write {quantity}={value!r} unit {unit}"
    if reg.function == "coil":
        resp = await client.write_coil(reg.address, bool(words[0]), device_id=unit)
    elif len(words) == 1:
        resp = await client.write_register(reg.address, words[0], device_id=unit)
    else:
        resp = await client.write_registers(reg.address, words, device_id=unit)
    _check(resp, what)
