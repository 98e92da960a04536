"""Benchmark: one full SDM630 poll cycle, planned block reads vs one request per value.

Runs over a socat serial pair against the simulated station with baud-accurate wire
timing at 9600 baud 8N1, so the cycle time can be compared with the theoretical time the
same requests need on a real RS-485 line:

    wire time = sum over requests of (request bytes + response bytes) * 10 bits / baud
                + 2 x 3.5 characters of silence per request (after the request frame,
                  and after the response before the next request)

(a) is the agent's planner (fewest blocks the device allows), (b) is one request per
value, as mbmd polls. Prints requests and time per cycle for both, their ratios, and the
ratio of (a) to its wire time. Goals: (a) <= 1.10 x wire time; (a) <= 1/10 the requests
of (b). Usage: .venv/bin/python bench/poll_efficiency.py [--cycles N] [--baud B]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from agent.config import parse_config
from drivers.device import Device
from drivers.planner import Block
from drivers.profile import load_profile
from drivers.transport import Link, SerialSettings
from hil.serial_pair import SerialPair
from hil.station import SimStation

PROFILE = "eastron-sdm630"
CONFIG = """
[station]
id = "BENCH"
[[bus]]
name = "rs485"
kind = "rtu"
port = "{port}"
baudrate = {baud}
timeout_s = 2.0
retries = 0
[[device]]
name = "meter"
profile = "{profile}"
bus = "rs485"
unit = 1
[sim]
control_port = 1
"""


def wire_time_s(blocks: list[Block], baud: int, bits: int = 10) -> float:
    """Theoretical RTU time of one cycle of `blocks` (FC03/04 reads), gaps included."""
    char = bits / baud
    total = 0.0
    for b in blocks:
        request = 8  # unit, function, address (2), count (2), CRC (2)
        response = 5 + 2 * b.count  # unit, function, byte count, data, CRC (2)
        total += (request + response) * char + 2 * 3.5 * char
    return total


def one_per_value(device: Device) -> list[Block]:
    """The mbmd way: a request for every value."""
    return [
        Block(s.function, s.address, s.words, (s,))
        for s in sorted({s for b in device.layout for s in b.spans})
    ]


async def measure(device: Device, layout: list[Block], cycles: int) -> tuple[int, list[float]]:
    """Run `cycles` read cycles with a fixed layout; returns (requests/cycle, seconds each)."""
    times = []
    requests = 0
    for _ in range(cycles):
        device.layout = list(layout)
        before = device.link.requests
        t0 = time.perf_counter()
        result = await device.read_cycle()
        times.append(time.perf_counter() - t0)
        if not result.ok:
            raise RuntimeError(f"cycle failed: {[str(f) for f in result.failures]}")
        requests = device.link.requests - before
    return requests, times


async def main(cycles: int, baud: int) -> None:
    with SerialPair() as (agent_end, sim_end):
        cfg = parse_config(CONFIG.format(port=agent_end, baud=baud, profile=PROFILE))
        async with SimStation(cfg, {"rs485": sim_end}, wire_timing=True):
            link = Link(SerialSettings(agent_end, baud, "N", 1), timeout_s=2.0)
            device = Device("meter", load_profile(PROFILE), link, 1, retries=0)
            planned = list(device.layout)
            single = one_per_value(device)
            await device.read_cycle()  # connect and warm up
            req_a, t_a = await measure(device, planned, cycles)
            req_b, t_b = await measure(device, single, cycles)
            link.close()
    values = len({s for b in planned for s in b.spans})
    a, b = statistics.median(t_a), statistics.median(t_b)
    wire_a, wire_b = wire_time_s(planned, baud), wire_time_s(single, baud)
    print(f"SDM630 full cycle: {values} values, RTU {baud} baud 8N1, median of {cycles} cycles")
    print(f"{'':28}{'requests':>10}{'time (ms)':>12}{'wire (ms)':>12}{'time/wire':>11}")
    for label, req, t, wire in (
        ("(a) planner", req_a, a, wire_a),
        ("(b) one request per value", req_b, b, wire_b),
    ):
        print(f"{label:28}{req:>10}{t * 1000:>12.1f}{wire * 1000:>12.1f}{t / wire:>11.3f}")
    print(f"requests (a)/(b) = {req_a / req_b:.3f}   (goal <= 0.100)")
    print(f"time     (a)/(b) = {a / b:.3f}   (b is {b / a:.1f}x slower)")
    print(f"(a) / wire time  = {a / wire_a:.3f}   (goal <= 1.10)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--baud", type=int, default=9600)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.baud))
