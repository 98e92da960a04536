"""`evedge modbus raw`: read any registers of an unknown device, like mbpoll, with our
decoding — 16/32-bit integers and floats in any of the four byte orders — and, given the
device's `--profile`, each value's quantity and meaning (`evse_error_code 7 (unlocking in
progress)`). `--watch S` repeats the read and highlights what changed.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Literal

from rich.table import Table
from rich.text import Text

from agent.cli.common import Exit, console, emit_json, fail
from agent.cli.meaning import with_meaning
from drivers.profile import Profile, ProfileError, load_profile
from drivers.transport import Link, ModbusFailure, SerialSettings, TcpSettings, describe

RawType = Literal["u16", "s16", "u32", "s32", "f32"]
Order = Literal["abcd", "cdab", "badc", "dcba"]
# struct format and registers per value
TYPES: dict[str, tuple[str, int]] = {
    "u16": ("H", 1),
    "s16": ("h", 1),
    "u32": ("I", 2),
    "s32": ("i", 2),
    "f32": ("f", 2),
}
FUNCTIONS = {3: "holding", 4: "input"}


def decode_words(words: list[int], type_: str, order: str) -> list[int | float]:
    """The values in `words` (16-bit registers as read): `order` names the bytes of a 32-bit
    value A (most significant) to D as they arrive — abcd big-endian, cdab word-swapped,
    badc byte-swapped, dcba little-endian; a 16-bit value is ab (abcd, cdab) or ba."""
    fmt, per = TYPES[type_]
    values: list[int | float] = []
    for i in range(0, len(words) - per + 1, per):
        chunk = words[i : i + per]
        if per == 2 and order in ("cdab", "dcba"):
            chunk = chunk[::-1]
        data = b"".join(w.to_bytes(2, "big") for w in chunk)
        if order in ("badc", "dcba"):
            data = bytes(b for pair in zip(data[1::2], data[::2], strict=True) for b in pair)
        value = struct.unpack(">" + fmt, data)[0]
        values.append(float(f"{value:.7g}") if fmt == "f" else value)
    return values


def _quantities(profile: Profile | None, fc: int, address: int, per: int, n: int) -> list[str]:
    """The profile's quantity at each value's address ("" where it has none)."""
    if profile is None:
        return [""] * n
    at = {r.address: r.quantity for r in profile.readable() if r.function == FUNCTIONS[fc]}
    return [at.get(address + i * per, "") for i in range(n)]


def raw_read(
    settings: SerialSettings | TcpSettings,
    unit: int,
    fc: int,
    address: int,
    count: int,
    type_: RawType,
    order: Order,
    profile: str | None,
    watch: float | None,
    polls: int | None,
    timeout: float,
    json: bool,
) -> None:
    """Read (repeatedly, with `watch`) and print; exit 3 when the device does not answer."""
    prof = None
    if profile is not None:
        try:
            prof = load_profile(profile)
        except ProfileError as e:
            raise fail(str(e), Exit.USAGE) from None
    _, per = TYPES[type_]
    names = _quantities(prof, fc, address, per, count)
    where = f"{FUNCTIONS[fc]} registers {address}…{address + count * per - 1}, unit {unit}"

    async def go() -> None:
        link = Link(settings, timeout_s=timeout)
        previous: list[int | float] | None = None
        try:
            n = 0
            while True:
                n += 1
                words = await link.read(FUNCTIONS[fc], address, count * per, unit)
                values = decode_words([int(w) for w in words], type_, order)
                _show(link.name, where, type_, order, address, per, words, values, names,
                      previous, prof, json)  # fmt: skip
                previous = values
                if watch is None or (polls is not None and n >= polls):
                    return
                await asyncio.sleep(watch)
        finally:
            link.close()

    try:
        asyncio.run(go())
    except ModbusFailure as e:
        raise fail(f"{where} on {describe(settings)}: {e}", Exit.UNREACHABLE) from None
    except KeyboardInterrupt:
        pass


def _show(link, where, type_, order, address, per, words, values, names, previous, prof, json):
    if json:
        emit_json(
            {
                "link": link,
                "at": time.time(),
                "type": type_,
                "order": order,
                "registers": [int(w) for w in words],
                "values": [
                    {
                        "address": address + i * per,
                        "value": v,
                        "quantity": names[i] or None,
                        "meaning": with_meaning(prof, names[i], v) if names[i] else None,
                    }
                    for i, v in enumerate(values)
                ],
            }
        )
        return
    table = Table(title=f"{link} · {where} · {type_} {order} · {time.strftime('%H:%M:%S')}")
    for col in ("address", "registers", "value", "quantity"):
        table.add_column(col, justify="right" if col in ("address", "value") else "left")
    for i, v in enumerate(values):
        regs = " ".join(f"0x{int(w):04x}" for w in words[i * per : (i + 1) * per])
        changed = previous is not None and previous[i] != v
        table.add_row(
            str(address + i * per),
            regs,
            Text(f"{v:g}" if isinstance(v, float) else str(v),
                 style="bold reverse" if changed else ""),
            f"{names[i]} {with_meaning(prof, names[i], v)}" if names[i] else "",
        )  # fmt: skip
    console.print(table)
