"""A device on a link: reads its profile's values in planned blocks, writes with read-back.

The read layout starts as the planner's fewest blocks and adapts: when the device refuses a
block with exception 02 (illegal address) or 03 (illegal value, often "too many
registers"), the block is split and the working layout is remembered for this device. A
single value it still refuses is marked unsupported and no longer requested.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from drivers import codec
from drivers.codec import NotAvailable, Value
from drivers.planner import Block, Span, plan_profile, spans_of, split
from drivers.profile import Profile, Register
from drivers.transport import Link, ModbusFailure

log = structlog.get_logger(__name__)

SPLIT_CODES = (2, 3)
# A gateway answering for its target: 10 path unavailable, 11 target did not respond. The
# device itself said nothing, so the cycle fails like a timeout (Modbus spec §7).
UNREACHABLE_CODES = (10, 11)


class WriteVerifyError(RuntimeError):
    """A write was accepted but reading it back gave another value."""


@dataclass
class CycleResult:
    """What one read cycle of a device produced."""

    values: dict[str, Value | None] = field(default_factory=dict)  # None: not available
    failures: list[ModbusFailure] = field(default_factory=list)
    requests: int = 0
    latency_s: float = 0.0
    aborted: bool = False  # the device stopped answering mid-cycle: no values are fresh

    @property
    def ok(self) -> bool:
        return not self.aborted and not self.failures


class Device:
    """One Modbus device (meter or EVSE controller) described by a profile."""

    def __init__(self, name: str, profile: Profile, link: Link, unit: int, retries: int = 1):
        self.name = name
        self.profile = profile
        self.link = link
        self.unit = unit
        self.retries = retries
        self.layout: list[Block] = plan_profile(profile)
        self.identity_layout: list[Block] = plan_profile(profile, once=True)
        self.unsupported: set[Span] = set()
        self.identity: dict[str, Value | None] = {}
        self._delay_s = profile.limits.delay_ms / 1000

    async def _read_block(self, block: Block) -> list[int] | list[bool]:
        last: ModbusFailure | None = None
        for _ in range(self.retries + 1):
            try:
                return await self.link.read(
                    block.function, block.start, block.count, self.unit, self._delay_s
                )
            except ModbusFailure as e:
                if e.kind == "exception":
                    raise
                last = e
        assert last is not None
        raise last

    async def _read_layout(self, layout: list[Block], result: CycleResult) -> list[Block]:
        """Read every block into an image; returns the layout adapted to refusals."""
        image: dict[tuple[str, int], int] = {}
        adapted: list[Block] = []
        pending = list(layout)
        while pending:
            block = pending.pop(0)
            result.requests += 1
            try:
                words = await self._read_block(block)
            except ModbusFailure as e:
                result.failures.append(e)
                if e.kind != "exception" or e.code in UNREACHABLE_CODES:
                    result.aborted = True
                    adapted.extend([block, *pending])
                    break
                if e.code in SPLIT_CODES and len(block.spans) > 1:
                    parts = split(block)
                    log.info(
                        "modbus.block_split",
                        device=self.name,
                        block=f"{block.function} {block.start}+{block.count}",
                        code=e.code,
                        into=[f"{p.start}+{p.count}" for p in parts],
                    )
                    pending[:0] = parts
                    continue
                if e.code in SPLIT_CODES:
                    self.unsupported.update(block.spans)
                    log.warning(
                        "modbus.value_unsupported",
                        device=self.name,
                        address=block.start,
                        function=block.function,
                        code=e.code,
                        hint="the device refuses this register: check the profile and firmware",
                    )
                    continue
                adapted.append(block)
                continue
            adapted.append(block)
            for i, w in enumerate(words):
                image[(block.function, block.start + i)] = int(w)
        self._decode(image, result)
        return adapted

    def _decode(self, image: dict[tuple[str, int], int], result: CycleResult) -> None:
        for reg in self.profile.readable():
            words = [image.get((reg.function, reg.address + i)) for i in range(reg.words)]
            if any(w is None for w in words):
                continue
            exponent = None
            if reg.exponent_address is not None:
                raw = image.get((reg.function, reg.exponent_address))
                if raw is None:
                    continue
                exponent = raw - 0x10000 if raw & 0x8000 else raw
            try:
                result.values[reg.quantity] = codec.decode(
                    reg, words, self.profile.order(reg), exponent
                )
            except NotAvailable:
                result.values[reg.quantity] = None
            except codec.DecodeError as e:
                result.failures.append(ModbusFailure("bad_frame", f"{self.name}: {e}"))

    async def read_identity(self) -> CycleResult:
        """Read the identity registers (serial number, model); kept in `identity`."""
        result = CycleResult()
        self.identity_layout = await self._read_layout(self.identity_layout, result)
        self.identity.update(result.values)
        return result

    async def read_cycle(self) -> CycleResult:
        """Read every cyclic value once. Values of failed blocks are absent, never stale."""
        result = CycleResult()
        t0 = time.monotonic()
        known = set(self.unsupported)
        layout = await self._read_layout(self.layout, result)
        if self.layout and not layout:
            # Every value refused: not a device without them but one refusing us (wrong
            # profile or unit, or a passing state). Keep the layout and ask again; nothing
            # was read, so the cycle failed.
            self.unsupported = known
            result.aborted = True
        else:
            self.layout = layout
        result.latency_s = time.monotonic() - t0
        return result

    async def read_quantity(self, quantity: str) -> Value | None:
        """Read one quantity on its own (used to verify writes)."""
        reg = next((r for r in self.profile.readable() if r.quantity == quantity), None)
        if reg is None:
            raise KeyError(f"{self.profile.name} has no readable {quantity}")
        result = CycleResult()
        blocks = [Block(s.function, s.address, s.words, (s,)) for s in spans_of(reg)]
        await self._read_layout(blocks, result)
        if quantity not in result.values:
            raise result.failures[0] if result.failures else KeyError(quantity)
        return result.values[quantity]

    async def write(self, quantity: str, value: Value, verify: bool = True) -> Value | None:
        """Write a quantity (setpoint, enable) and, if verify, read it back and compare."""
        reg: Register = self.profile.writable(quantity)
        words = codec.encode(reg, value, self.profile.order(reg))
        await self.link.write(reg.function, reg.address, words, self.unit, self._delay_s)
        log.info("modbus.write", device=self.name, quantity=quantity, value=value)
        if not verify:
            return value
        check = reg.readback or quantity
        readable = {r.quantity: r for r in self.profile.readable()}
        if check not in readable:
            return value  # write-only with nothing to read back: trust the write response
        got = await self.read_quantity(check)
        if check == quantity and got != _normalized(readable[check], value, self.profile):
            raise WriteVerifyError(f"{self.name}: wrote {quantity}={value!r}, read back {got!r}")
        return got


def _normalized(reg: Register, value: Value, profile: Profile) -> Value | None:
    """The value as the device will report it (after the register's resolution)."""
    order = profile.order(reg)
    return codec.decode(reg, codec.encode(reg, value, order), order)
