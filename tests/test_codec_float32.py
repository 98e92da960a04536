"""float32 decoding: the shortest decimal that is the same float32, found by binary search,
and the fast path (scale 1, no exponent) agrees with the Decimal path bit for bit."""

from __future__ import annotations

import random
import struct
from decimal import Decimal

from drivers import codec
from drivers.profile import Register


def _linear_shortest(x: float) -> str:
    packed = struct.pack(">f", x)
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return text
    raise AssertionError("9 digits always round-trip a float32")


def _samples(n: int = 5000) -> list[float]:
    rng = random.Random(16)
    out: list[float] = [0.0, -0.0, 230.1, 49.99, 1e-7, 3.4e38, -1.5]
    while len(out) < n:
        (x,) = struct.unpack(">f", rng.getrandbits(32).to_bytes(4, "big"))
        if x == x and abs(x) != float("inf"):
            out.append(x)
    out += [struct.unpack(">f", struct.pack(">f", rng.uniform(0, 400)))[0] for _ in range(n)]
    return out


def test_binary_search_finds_the_shortest_text():
    for x in _samples():
        assert codec._shortest_float32_text(x) == _linear_shortest(x), x


def _words(x: float) -> list[int]:
    data = struct.pack(">f", x)
    return [int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")]


def test_fast_path_equals_the_decimal_path():
    reg = Register(quantity="voltage_l1", function="input", address=0, type="float32", unit="V")
    scaled = Register(
        quantity="voltage_l1", function="input", address=0, type="float32", scale=0.1, unit="V"
    )
    for x in _samples(1000):
        x32 = struct.unpack(">f", struct.pack(">f", x))[0]
        via_decimal = float(Decimal(_linear_shortest(x32)))
        assert codec.decode(reg, _words(x)) == via_decimal
        assert codec.decode(scaled, _words(x)) == float(
            Decimal(_linear_shortest(x32)) * Decimal("0.1")
        )
    assert codec.decode(reg, _words(230.1)) == 230.1  # not 230.10000610351562
