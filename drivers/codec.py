"""Register codec: raw 16-bit words <-> canonical values, driven by a profile Register.

Scaling is done in Decimal so that 2301 x 0.1 is 230.1, not 230.10000000000002, and
energy ends up as integer Wh.
"""

from __future__ import annotations

import struct
from decimal import ROUND_HALF_EVEN, Decimal

from drivers import quantities
from drivers.profile import Register, WordOrder

Value = float | int | str | bool


class DecodeError(ValueError):
    """Registers could not be turned into a value (wrong length, unmapped state, bad text)."""


class NotAvailable(Exception):
    """The device reported its 'no value' marker for this register."""


def words_to_bytes(words: list[int], order: WordOrder) -> bytes:
    """Pack registers into big-endian bytes, most significant word first."""
    seq = words if order == "big" else list(reversed(words))
    return b"".join(w.to_bytes(2, "big") for w in seq)


def bytes_to_words(data: bytes, order: WordOrder) -> list[int]:
    """Inverse of words_to_bytes."""
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if order == "big" else list(reversed(words))


def _raw(reg: Register, words: list[int], order: WordOrder) -> int | float | str:
    if len(words) != reg.words:
        raise DecodeError(f"{reg.quantity}: expected {reg.words} registers, got {len(words)}")
    t = reg.type
    if t == "ascii":
        # Text is always high byte first within a register, registers in address order.
        data = b"".join(w.to_bytes(2, "big") for w in words)
        try:
            text = data.split(b"\x00", 1)[0].decode("ascii").strip()
        except UnicodeDecodeError:
            raise DecodeError(f"{reg.quantity}: text is not ASCII: {data.hex()}") from None
        if not text.isprintable():
            raise DecodeError(f"{reg.quantity}: text contains unprintable characters")
        return text
    if t == "bool":
        return int(words[0] != 0)
    data = words_to_bytes(words, order)
    if t == "float32":
        return struct.unpack(">f", data)[0]
    if t in ("t5", "t6"):
        # Iskra: high byte = signed decimal exponent, low 24 bits = mantissa.
        exp = struct.unpack(">b", data[:1])[0]
        mant = int.from_bytes(data[1:], "big", signed=(t == "t6"))
        return float(Decimal(mant).scaleb(exp))
    signed = t.startswith("s")
    return int.from_bytes(data, "big", signed=signed)


def _shortest_float32_text(x: float) -> str:
    """The shortest decimal text that is the same float32: what the meter meant, no noise.

    Binary search over 1..9 significant digits (9 always round-trips a float32): if d
    digits give back the same float32, so do d + 1 (the nearest (d+1)-digit decimal is at
    least as close), so the answer is the first d that works. 3-4 tries instead of up to 9
    for the noisy values a meter mostly sends, on every value of every poll."""
    packed = struct.pack(">f", x)
    lo, hi = 1, 9
    while lo < hi:
        mid = (lo + hi) // 2
        if struct.pack(">f", float(f"{x:.{mid}g}")) == packed:
            hi = mid
        else:
            lo = mid + 1
    return f"{x:.{lo}g}"


def _kind(reg: Register) -> str:
    return quantities.get(reg.quantity).kind


def _to_kind(reg: Register, value: Decimal) -> Value:
    kind = _kind(reg)
    if kind == "int":
        return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if kind == "bool":
        return value != 0
    return float(value)


def decode(
    reg: Register, words: list[int], order: WordOrder = "big", exponent: int | None = None
) -> Value:
    """Decode a register's words into its canonical value.

    `exponent` is the value of the register's exponent register, when it has one.
    Raises NotAvailable for the device's 'no value' marker, DecodeError for nonsense.
    """
    raw = _raw(reg, words, order)
    if isinstance(raw, str):
        return raw
    if isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise DecodeError(f"{reg.quantity}: register holds NaN or infinity")
        if reg.type != "float32":
            dec = Decimal(repr(raw))
        else:
            text = _shortest_float32_text(raw)
            if reg.scale == 1 and exponent is None and _kind(reg) == "float":
                return float(text)  # what the Decimal path gives, without it (the common case)
            dec = Decimal(text)
    else:
        if reg.byte == "low":
            raw &= 0xFF
        elif reg.byte == "high":
            raw = (raw >> 8) & 0xFF
        if raw in reg.not_available:
            raise NotAvailable(reg.quantity)
        if reg.map is not None:
            try:
                word = reg.map[raw]
            except KeyError:
                raise DecodeError(f"{reg.quantity}: raw value {raw} is not in the map") from None
            if quantities.get(reg.quantity).kind == "bool":
                return word == "true"
            return word
        if quantities.get(reg.quantity).kind == "str":
            return str(raw)  # numeric identity, e.g. a u32 serial number
        dec = Decimal(raw)
    dec *= Decimal(repr(reg.scale))
    if exponent is not None:
        dec = dec.scaleb(exponent)
    return _to_kind(reg, dec)


def encode(reg: Register, value: Value, order: WordOrder = "big", exponent: int = 0) -> list[int]:
    """Encode a canonical value into the register's words (for writes and the simulator)."""
    t = reg.type
    if t == "ascii":
        try:
            data = str(value).encode("ascii")
        except UnicodeEncodeError:
            raise DecodeError(f"{reg.quantity}: {value!r} is not ASCII") from None
        data = data[: reg.words * 2].ljust(reg.words * 2, b"\x00")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if reg.map is not None:
        want = str(value).lower() if isinstance(value, bool) else str(value)
        for raw, word in reg.map.items():
            if word == want:
                return _encode_int(reg, raw, order)
        raise DecodeError(f"{reg.quantity}: {value!r} has no raw value in the map")
    if isinstance(value, str):
        if not value.strip().lstrip("-").isdigit():
            raise DecodeError(f"{reg.quantity}: {value!r} is not a number")
        return _encode_int(reg, int(value), order)
    if t == "bool" or isinstance(value, bool):
        return _encode_int(reg, int(bool(value)), order)
    dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    dec = dec.scaleb(-exponent) / Decimal(repr(reg.scale))
    if t == "float32":
        return bytes_to_words(struct.pack(">f", float(dec)), order)
    if t in ("t5", "t6"):
        return bytes_to_words(_pack_t(dec, signed=(t == "t6")), order)
    return _encode_int(reg, int(dec.to_integral_value(rounding=ROUND_HALF_EVEN)), order)


def _pack_t(dec: Decimal, signed: bool) -> bytes:
    # Smallest exponent whose mantissa still fits 24 bits keeps the most precision.
    limit = (1 << 23) - 1 if signed else (1 << 24) - 1
    for exp in range(-6, 10):
        mant = int(dec.scaleb(-exp).to_integral_value(rounding=ROUND_HALF_EVEN))
        if abs(mant) <= limit and (signed or mant >= 0):
            return struct.pack(">b", exp) + mant.to_bytes(3, "big", signed=signed)
    raise DecodeError(f"{dec} does not fit a T5/T6 register")


def _encode_int(reg: Register, raw: int, order: WordOrder) -> list[int]:
    t = reg.type
    n = reg.words
    if reg.byte == "low":
        raw &= 0xFF
    elif reg.byte == "high":
        raw = (raw & 0xFF) << 8
    signed = t.startswith("s")
    try:
        data = raw.to_bytes(2 * n, "big", signed=signed)
    except OverflowError:
        raise DecodeError(f"{reg.quantity}: {raw} does not fit type {t}") from None
    return bytes_to_words(data, order)
