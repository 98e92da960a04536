"""Benchmark: CPU of evedge's whole pipeline per poll cycle vs bare pymodbus, same meter, same run.

One simulated Eastron SDM630 (`evedge sim`, its own process) is read by two workers, each
its own process so neither pays for the other, one after the other, three rounds:

(a) bare: pymodbus's AsyncModbusTcpClient reads the same blocks evedge's planner asks for
    and decodes every value (struct), nothing else: the floor for "read these values".
(b) evedge: the agent (agent.runtime.Agent) polling the meter with its full pipeline: poll,
    decode, bus, diagnosis, the readings store, MQTT telemetry to mosquitto (hil/broker.py;
    left out, and said so, when mosquitto is not installed).

Each runs at the agent's default 1 Hz for --cycles cycles and then flat out (1 ms interval)
for --seconds; CPU is the worker's own (getrusage: user + system, children included) between
two cycle counts, so idle housekeeping between polls counts too. Printed: CPU per cycle and
per value, evedge / bare, and at flat-out polling evedge's overhead per value
((evedge - bare) / values per cycle). Goals (issue 16): 1 Hz ratio <= 1.5, overhead per
value <= 20 us. No assertion. PYTHONPATH chooses the evedge code measured (see
bench/footprint.py). Usage: .venv/bin/python bench/pipeline.py [--cycles N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = "eastron-sdm630"
STATION = """[station]
id = "BENCH"
[[bus]]
name = "lan"
kind = "tcp"
timeout_s = 1.0
retries = 0
[[device]]
name = "meter1"
profile = "{profile}"
bus = "lan"
host = "127.0.0.1"
port = {port}
unit = 1
interval_s = {interval}
[store]
path = "{tmp}/evedge.db"
[log]
level = "warning"
[sim]
control_port = {control}
{mqtt}"""
MQTT = """[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
telemetry_interval_s = 5
"""


def cpu_s() -> float:
    """This process's CPU time so far (all threads, reaped children included), in s."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rss_mb() -> float:
    """This process's resident set now."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measured(cycles, interval: float, n: int, seconds: float) -> dict:
    """Wait for 2 cycles, then measure CPU over `n` cycles (or `seconds`, flat out)."""
    start = time.monotonic()
    while cycles() < 2:
        if time.monotonic() - start > 60:
            raise RuntimeError("no poll cycle within 60 s: is the simulator answering?")
        await asyncio.sleep(0.01)
    c0, k0, t0 = cpu_s(), cycles(), time.monotonic()
    while cycles() - k0 < n and time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.25)  # rarely: this loop's own wake-ups count in the CPU
    return {"cpu_s": cpu_s() - c0, "cycles": cycles() - k0, "rss_mb": rss_mb()}


async def bare(port: int, interval: float, n: int, seconds: float) -> dict:
    """Worker (a): bare pymodbus, the planner's blocks, every value decoded."""
    from pymodbus.client import AsyncModbusTcpClient

    from drivers.planner import plan_profile
    from drivers.profile import load_profile

    blocks = [(b.function, b.start, b.count) for b in plan_profile(load_profile(PROFILE))]
    regs = [
        (r.function, r.address, r.words) for r in load_profile(PROFILE).readable() if not r.once
    ]
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    done = 0
    values: dict[tuple[str, int], float] = {}

    async def loop() -> None:
        nonlocal done
        due = time.monotonic()
        while True:
            image: dict[tuple[str, int], int] = {}
            for function, start, count in blocks:
                call = (
                    client.read_input_registers
                    if function == "input"
                    else client.read_holding_registers
                )
                rsp = await call(start, count=count, device_id=1)
                for i, w in enumerate(rsp.registers):
                    image[(function, start + i)] = w
            for function, address, words in regs:
                ws = [image[(function, address + i)] for i in range(words)]
                raw = struct.pack(f">{words}H", *ws)
                values[(function, address)] = (
                    struct.unpack(">f", raw)[0] if words == 2 else int.from_bytes(raw)
                )
            done += 1
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    task = asyncio.create_task(loop())
    measuring = asyncio.create_task(measured(lambda: done, interval, n, seconds))
    try:
        await asyncio.wait({task, measuring}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the read loop failed: its error, not a hang
        out = measuring.result()
    finally:
        task.cancel()
        measuring.cancel()
        client.close()
    return {**out, "values": len(values)}


async def evedge(cfg_path: Path, interval: float, n: int, seconds: float) -> dict:
    """Worker (b): the agent's pipeline (as `evedge run` builds it, minus signals)."""
    from agent.config import load_config
    from agent.logsetup import setup_logging
    from agent.runtime import Agent

    cfg = load_config(cfg_path)
    setup_logging("warning", json=True)
    agent = Agent(cfg)
    await agent.start()
    pd = agent.station.pollers[0].devices[0]
    try:
        out = await measured(lambda: pd.health.polls, interval, n, seconds)
        values = len(agent.store.latest("meter1"))
    finally:
        await agent.stop()
    return {**out, "values": values}


def worker(args: argparse.Namespace) -> None:
    """Run one worker and print its figures as one JSON line."""
    if args.worker == "bare":
        out = asyncio.run(bare(args.port, args.interval, args.cycles, args.seconds))
    else:
        out = asyncio.run(evedge(Path(args.cfg), args.interval, args.cycles, args.seconds))
    print(json.dumps(out))


def run_worker(kind: str, cfg: Path, port: int, interval: float, n: int, s: float) -> dict:
    """One worker process; its JSON figures."""
    cmd = [sys.executable, __file__, "--worker", kind, "--port", str(port), "--cfg", str(cfg)]
    cmd += ["--interval", str(interval), "--cycles", str(n), "--seconds", str(s)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=s + 180)
    if p.returncode != 0:
        raise SystemExit(f"pipeline: {kind} worker failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def station(tmp: Path, interval: float, mqtt_port: int | None) -> tuple[Path, int, int]:
    """Write the one-meter station for `interval`; (path, modbus port, control port)."""
    from hil.procs import free_port

    port, control = free_port(), free_port()
    mqtt = MQTT.format(port=mqtt_port) if mqtt_port else ""
    text = STATION.format(
        profile=PROFILE, port=port, interval=interval, tmp=tmp, control=control, mqtt=mqtt
    )
    path = tmp / f"station-{interval:g}.toml"
    path.write_text(text)
    return path, port, control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=("bare", "evedge"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cfg", default="")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--cycles", type=int, default=30, help="cycles measured at 1 Hz")
    parser.add_argument("--seconds", type=float, default=10.0, help="flat-out window")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    asyncio.run(compare(args))


async def compare(args: argparse.Namespace) -> None:
    """Start the simulator (and mosquitto), run both workers per round, print the figures."""
    import agent
    from hil.broker import Mosquitto, mosquitto_path
    from hil.control import send_command

    print(f"pipeline of {Path(agent.__file__).parent.parent}, profile {PROFILE}")
    with tempfile.TemporaryDirectory(prefix="evedge-pipeline-", dir="/var/tmp") as d:
        tmp = Path(d)
        broker = None
        if mosquitto_path() is not None:
            broker = Mosquitto(tmp / "broker")
            await broker.start_async()
        else:
            print("mosquitto not installed: evedge runs without MQTT sync")
        cfg, port, control = station(tmp, 1.0, broker.port if broker else None)
        with (tmp / "sim.log").open("ab") as log:
            sim = subprocess.Popen(
                [sys.executable, "-m", "agent.cli.main", "sim", "-c", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,  # not the checkout: `-m` puts the working directory first
            )
        try:
            for _ in range(300):
                try:
                    if (await send_command(control, {"cmd": "snapshot"}, timeout_s=1))["ok"]:
                        break
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.1)
            rows: dict[str, list[dict]] = {}
            for r in range(args.rounds):
                for mode, interval, n, s in (
                    ("1 Hz", 1.0, args.cycles, args.cycles * 3.0),
                    ("flat out", 0.001, 10**9, args.seconds),
                ):
                    # The same [mqtt] and store for both intervals; the sim serves one port.
                    path = tmp / f"run-{mode.replace(' ', '')}.toml"
                    path.write_text(
                        cfg.read_text().replace("interval_s = 1.0", f"interval_s = {interval}")
                    )
                    for kind in ("bare", "evedge"):
                        out = await asyncio.to_thread(run_worker, kind, path, port, interval, n, s)
                        out["us_per_cycle"] = out["cpu_s"] / out["cycles"] * 1e6
                        rows.setdefault(f"{mode} {kind}", []).append(out)
                print(f"round {r + 1} done")
        finally:
            sim.terminate()
            sim.wait(30)
            if broker is not None:
                broker.stop()
    show(rows)


def show(rows: dict[str, list[dict]]) -> None:
    """Per-round figures, medians and ratios."""
    med = {k: statistics.median(o["us_per_cycle"] for o in v) for k, v in rows.items()}
    print(
        f"{'worker':18}{'values':>7}{'cycles':>8}{'CPU us/cycle (per round)':>32}"
        f"{'median':>9}{'us/value':>9}{'RSS MB':>8}"
    )
    for k, v in rows.items():
        values = v[0]["values"]
        per = " ".join(f"{o['us_per_cycle']:8.0f}" for o in v)
        cyc = sum(o["cycles"] for o in v) // len(v)
        rss = max(o["rss_mb"] for o in v)
        print(f"{k:18}{values:>7}{cyc:>8}{per:>32}{med[k]:>9.0f}{med[k] / values:>9.1f}{rss:>8.1f}")
    for mode in ("1 Hz", "flat out"):
        ratios = [
            e["us_per_cycle"] / b["us_per_cycle"]
            for b, e in zip(rows[f"{mode} bare"], rows[f"{mode} evedge"], strict=True)
        ]
        print(
            f"{mode}: evedge / bare CPU per cycle = "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + f" (median {statistics.median(ratios):.2f}; goal <= 1.5 at 1 Hz)"
        )
    values = rows["flat out evedge"][0]["values"]
    over = [
        (e["us_per_cycle"] - b["us_per_cycle"]) / values
        for b, e in zip(rows["flat out bare"], rows["flat out evedge"], strict=True)
    ]
    print(
        "flat out: evedge overhead per value = "
        + ", ".join(f"{x:.1f}" for x in over)
        + f" us (median {statistics.median(over):.1f}; goal <= 20 us)"
    )


if __name__ == "__main__":
    main()
