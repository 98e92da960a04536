"""Block-read planner: coalesce a device's values into the fewest Modbus requests.

Values of one function code are sorted by address and merged greedily into blocks while
the block stays within the device's request limit and the unused registers between two
values stay within the gap tolerance. For intervals on a line, extending each block as far
as the limits allow is optimal (an exchange argument: any optimal plan's first block can
be stretched to the greedy one without needing more blocks after it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.profile import Function, Limits, Profile, Register


@dataclass(frozen=True, order=True)
class Span:
    """Registers (or bits) one value needs: [address, address + words)."""

    function: Function
    address: int
    words: int

    @property
    def end(self) -> int:
        return self.address + self.words


@dataclass(frozen=True)
class Block:
    """One read request covering one or more spans."""

    function: Function
    start: int
    count: int
    spans: tuple[Span, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


_BITS = ("coil", "discrete")


def spans_of(reg: Register) -> list[Span]:
    """The spans a register needs: its own words, and its exponent register if it has one."""
    out = [Span(reg.function, reg.address, reg.words)]
    if reg.exponent_address is not None:
        out.append(Span(reg.function, reg.exponent_address, 1))
    return out


def _limit(function: Function, limits: Limits) -> int:
    return limits.max_bits if function in _BITS else limits.max_registers


def plan(spans: Iterable[Span], limits: Limits) -> list[Block]:
    """Cover every span with the fewest blocks that respect `limits`.

    A value is never split across requests. Overlapping spans share a block. Raises
    ValueError if a single value is larger than the request limit (a profile error).
    """
    blocks: list[Block] = []
    by_function: dict[Function, list[Span]] = {}
    for s in sorted(set(spans)):
        by_function.setdefault(s.function, []).append(s)
    for function, group in by_function.items():
        limit = _limit(function, limits)
        current: list[Span] = []
        start = end = 0
        for s in group:
            if s.words > limit:
                raise ValueError(
                    f"{function} value at {s.address} needs {s.words} registers, "
                    f"more than the device limit of {limit}"
                )
            fits = (
                current
                and not limits.single_value_reads
                and s.address - end <= limits.max_gap
                and max(end, s.end) - start <= limit
            )
            if fits:
                current.append(s)
                end = max(end, s.end)
                continue
            if current:
                blocks.append(Block(function, start, end - start, tuple(current)))
            current, start, end = [s], s.address, s.end
        if current:
            blocks.append(Block(function, start, end - start, tuple(current)))
    return blocks


def plan_profile(profile: Profile, once: bool = False) -> list[Block]:
    """Plan the cyclic reads of a profile (or, with once=True, its identity reads)."""
    spans = [s for r in profile.readable() if r.once == once for s in spans_of(r)]
    return plan(spans, profile.limits)


def split(block: Block) -> list[Block]:
    """Split a block the device refused (exception 02/03) into two smaller blocks.

    A single-value block cannot be split: it is returned unchanged and the caller marks
    that value unsupported.
    """
    if len(block.spans) < 2:
        return [block]
    mid = len(block.spans) // 2
    out = []
    for part in (block.spans[:mid], block.spans[mid:]):
        start = min(s.address for s in part)
        end = max(s.end for s in part)
        out.append(Block(block.function, start, end - start, part))
    return out
