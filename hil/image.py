"""A simulated device's register image, built from its profile with the driver's own codec.

The image never hand-codes an address: every word it serves comes from `codec.encode` on a
profile Register, so the simulator and the agent read the same file and a profile mistake
shows up as a failing round trip, not as two wrong copies that agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from pymodbus.constants import ExcCodes

from drivers import codec
from drivers.codec import Value
from drivers.profile import Function, Profile, Register

# Function code -> the table it addresses. Reads and writes are kept apart because a
# write function never reaches the input or discrete tables.
READ_FC: dict[int, Function] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
WRITE_FC: dict[int, Function] = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
BIT_TABLES: tuple[Function, ...] = ("coil", "discrete")
TABLES: tuple[Function, ...] = ("coil", "discrete", "holding", "input")

WriteCallback = Callable[[str, Value], "ExcCodes | None"]


class RegisterExtension(Protocol):
    """Registers served by code instead of the profile's value map."""

    def claims(self, fn: Function, address: int, count: int) -> bool: ...
    def read(self, address: int, count: int) -> list[int] | ExcCodes: ...
    def peek(self, address: int, count: int) -> list[int]: ...
    def write(self, address: int, values: list[int]) -> ExcCodes | None: ...


class DeviceImage:
    """The four Modbus tables of one device, laid out by its profile.

    `strict_addresses`: a read touching an address the profile does not define, a
    write-only register, or only part of a multi-word value gets exception 02 (many real
    devices answer gaps this way; lenient mode reads them as 0).
    `max_request`: a register read of more than N registers gets exception 03.
    `single_value_reads`: every read must cover exactly one value (Keba), else 02.
    `exponent`: the fixed power of ten served in every exponent register.
    `on_write(quantity, value)`: called for each value a Modbus write changed, with the
    decoded canonical value; returning an ExcCodes member rejects the write with it.
    `extension`: registers that are a protocol rather than values (a meter's OCMF signing
    registers, hil/signing_meter.py): requests to addresses it claims go to it.
    """

    extension: RegisterExtension | None = None

    def __init__(
        self,
        profile: Profile,
        *,
        strict_addresses: bool = False,
        max_request: int | None = None,
        single_value_reads: bool = False,
        exponent: int = 0,
        on_write: WriteCallback | None = None,
    ):
        self.profile = profile
        self.strict_addresses = strict_addresses
        self.max_request = max_request
        self.single_value_reads = single_value_reads
        self.exponent = exponent
        self.on_write = on_write
        self._words: dict[Function, dict[int, int]] = {fn: {} for fn in TABLES}
        # Registers covering each word, to find what a read splits or a write changes.
        self._slots: dict[Function, dict[int, list[Register]]] = {fn: {} for fn in TABLES}
        self._readable: dict[Function, set[int]] = {fn: set() for fn in TABLES}
        self._by_quantity: dict[str, list[Register]] = {}
        for reg in profile.registers:
            self._by_quantity.setdefault(reg.quantity, []).append(reg)
            table = self._words[reg.function]
            for a in range(reg.address, reg.address + reg.words):
                table.setdefault(a, 0)
                self._slots[reg.function].setdefault(a, []).append(reg)
                if reg.readable:
                    self._readable[reg.function].add(a)
            if reg.map:
                # Start mapped registers on a value the map knows, so a fresh image decodes.
                first = next(iter(reg.map.values()))
                self._put(reg, codec.encode(reg, first, profile.order(reg), self._exp(reg)))
        for reg in profile.registers:
            if reg.exponent_address is not None:
                # The exponent register lives in the same table as its value (Iskra).
                a = reg.exponent_address
                self._words[reg.function][a] = self.exponent & 0xFFFF
                self._readable[reg.function].add(a)

    # ----------------------------------------------------------------- canonical side

    @property
    def views(self) -> set[str]:
        """Read-only quantities that decode another quantity's writable register.

        Bender reads charging_enabled as "the limit at 1000 is not 0": the writable
        offered_current_a owns those words, so setting the view would overwrite it.
        """
        writable = [r for r in self.profile.registers if r.writable]
        out: set[str] = set()
        for reg in self.profile.registers:
            if reg.writable or reg.byte is not None:
                continue
            if any(
                w.quantity != reg.quantity
                and w.function == reg.function
                and w.address < reg.address + reg.words
                and reg.address < w.address + w.words
                for w in writable
            ):
                out.add(reg.quantity)
        return out

    def owned_quantities(self) -> list[str]:
        """Every quantity of the profile once, in profile order."""
        return list(self._by_quantity)

    @property
    def quantities(self) -> set[str]:
        """Every quantity this device has a register for (readable or write-only)."""
        return set(self._by_quantity)

    def registers(self, quantity: str) -> list[Register]:
        """The profile's registers for `quantity`; KeyError if the device has none."""
        try:
            return self._by_quantity[quantity]
        except KeyError:
            raise KeyError(f"profile {self.profile.name} has no register for {quantity}") from None

    def set(self, quantity: str, value: Value) -> None:
        """Encode `value` into every register of `quantity` (codec.DecodeError if it can't)."""
        for reg in self.registers(quantity):
            self._put(reg, self._encode(reg, value))

    def set_not_available(self, quantity: str) -> None:
        """Serve the device's "not available" marker for `quantity` (its readable register)."""
        reg = next(r for r in self.registers(quantity) if r.readable)
        if not reg.not_available:
            raise ValueError(f"{quantity}: profile {self.profile.name} has no marker")
        raw = reg.not_available[0] & ((1 << (16 * reg.words)) - 1)
        words = codec.bytes_to_words(raw.to_bytes(2 * reg.words, "big"), self.profile.order(reg))
        self._put(reg, words)

    def get(self, quantity: str) -> Value:
        """Decode `quantity` from the image, preferring its readable register."""
        regs = self.registers(quantity)
        reg = next((r for r in regs if r.readable), regs[0])
        return self._decode(reg, self._words[reg.function])

    def values(self) -> dict[str, Value]:
        """Every readable quantity, decoded as a poller would see it (undecodable ones left out)."""
        out: dict[str, Value] = {}
        for reg in self.profile.readable():
            try:
                out[reg.quantity] = self._decode(reg, self._words[reg.function])
            except (codec.DecodeError, codec.NotAvailable):
                continue
        return out

    # ------------------------------------------------------------------ Modbus side

    def read(self, fc: int, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        """Serve a read request (FC1-4): the words or bits, or the exception a device sends."""
        fn = READ_FC.get(fc)
        if fn is not None and self.extension and self.extension.claims(fn, address, count):
            return self.extension.read(address, count)
        if fn is None or not self._words[fn]:
            # A device without a given table does not implement that function at all.
            return ExcCodes.ILLEGAL_FUNCTION
        if fn not in BIT_TABLES and self.max_request is not None and count > self.max_request:
            return ExcCodes.ILLEGAL_VALUE
        end = address + count
        if self.strict_addresses:
            readable = self._readable[fn]
            if any(a not in readable for a in range(address, end)):
                return ExcCodes.ILLEGAL_ADDRESS
            if self._splits(fn, address, end):
                return ExcCodes.ILLEGAL_ADDRESS
        if self.single_value_reads and not self._one_value(fn, address, end):
            return ExcCodes.ILLEGAL_ADDRESS
        return self.peek(fn, address, count)

    def peek(self, fn: Function, address: int, count: int) -> list[int] | list[bool]:
        """The raw table contents, no checks (a write's read-back, tests); gaps read 0."""
        if self.extension and self.extension.claims(fn, address, count):
            return self.extension.peek(address, count)
        table = self._words[fn]
        words = [table.get(a, 0) for a in range(address, address + count)]
        return [bool(w) for w in words] if fn in BIT_TABLES else words

    def write(self, fc: int, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        """Serve a write request (FC5/6/15/16): update the image and report each value.

        A write touching a read-only register, an address outside the profile, or only
        part of a multi-word value gets exception 02 ILLEGAL DATA ADDRESS: the device does
        implement the write function (01 would tell the master it never can write), it is
        the address that is wrong. A value the register cannot hold, or that on_write
        rejects, gets 03 ILLEGAL DATA VALUE (or what on_write returned); the image is left
        as it was.
        """
        fn = WRITE_FC.get(fc)
        if fn is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if self.extension and self.extension.claims(fn, address, len(values)):
            return self.extension.write(address, [int(v) for v in values])
        words = [int(bool(v)) for v in values] if fn in BIT_TABLES else [int(v) for v in values]
        end = address + len(words)
        changed: list[Register] = []
        for a in range(address, end):
            owners = [r for r in self._slots[fn].get(a, []) if r.writable]
            if not owners:
                return ExcCodes.ILLEGAL_ADDRESS
            changed.extend(r for r in owners if r not in changed)
        if any(r.address < address or r.address + r.words > end for r in changed):
            return ExcCodes.ILLEGAL_ADDRESS
        table = self._words[fn]
        staged = dict(table)
        staged.update(zip(range(address, end), words, strict=True))
        decoded: list[tuple[Register, Value]] = []
        for reg in changed:
            try:
                decoded.append((reg, self._decode(reg, staged)))
            except (codec.DecodeError, codec.NotAvailable):
                return ExcCodes.ILLEGAL_VALUE
        old = {a: table[a] for a in range(address, end)}
        table.update(zip(range(address, end), words, strict=True))
        for reg, value in decoded:
            rc = self.on_write(reg.quantity, value) if self.on_write else None
            if rc:
                table.update(old)
                return rc
        for reg, value in decoded:
            # The device now reads back what was written at the quantity's other
            # registers (Keba: setpoint written at 5004 reads at 1100).
            for other in self._by_quantity[reg.quantity]:
                if other is not reg:
                    with contextlib.suppress(codec.DecodeError):
                        self._put(other, self._encode(other, value))
        return None

    # ------------------------------------------------------------------- internals

    def _encode(self, reg: Register, value: Value) -> list[int]:
        return codec.encode(reg, value, self.profile.order(reg), self._exp(reg))

    def _exp(self, reg: Register) -> int:
        return self.exponent if reg.exponent_address is not None else 0

    def _decode(self, reg: Register, table: dict[int, int]) -> Value:
        words = [table.get(a, 0) for a in range(reg.address, reg.address + reg.words)]
        exponent = None
        if reg.exponent_address is not None:
            raw = table.get(reg.exponent_address, 0)
            exponent = raw - 0x10000 if raw & 0x8000 else raw
        return codec.decode(reg, words, self.profile.order(reg), exponent)

    def _put(self, reg: Register, words: list[int]) -> None:
        table = self._words[reg.function]
        for a, w in zip(range(reg.address, reg.address + reg.words), words, strict=True):
            # Two quantities may share one register, one byte each (a state in the low
            # byte): keep the other byte.
            if reg.byte == "low":
                w = (table.get(a, 0) & 0xFF00) | (w & 0x00FF)
            elif reg.byte == "high":
                w = (table.get(a, 0) & 0x00FF) | (w & 0xFF00)
            table[a] = w

    def _splits(self, fn: Function, start: int, end: int) -> bool:
        """True if [start, end) cuts a multi-word value (real devices reject half a float)."""
        slots = self._slots[fn]
        first = any(r.address < start for r in slots.get(start, []))
        last = any(r.address + r.words > end for r in slots.get(end - 1, []))
        return first or last

    def _one_value(self, fn: Function, start: int, end: int) -> bool:
        return any(
            r.address == start and r.address + r.words == end
            for r in self._slots[fn].get(start, [])
        )
