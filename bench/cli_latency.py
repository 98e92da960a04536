"""Benchmark: how fast the CLI answers, against mbpoll reading the same registers.

Runs `evedge demo` (simulator + agent with its local API) on free loopback ports, then
times, as a technician types them (a fresh process each time, wall clock):

- `evedge --help`
- `evedge status --json` against the running service (goal: ≤ 200 ms wall, issue 14)
- `evedge modbus raw` reading the meter's three phase voltages (3 × f32, input registers 0-5)
- the baseline: `mbpoll` reading the same registers (`-t 3:float -B -0 -r 0 -c 3 -1`);
  skipped with a message when mbpoll is not installed (`apt-get install mbpoll`)

Prints median and min of N runs, the CPU time (user + system) per run — what the command
costs whatever the machine's load — the ratio of each median to mbpoll's, and the goal check
(no assertion: the load shows in the wall figures).
Usage: .venv/bin/python bench/cli_latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.cli.fastpath import service_answer  # noqa: E402
from hil.procs import free_port  # noqa: E402

EVEDGE = str(Path(sys.executable).with_name("evedge"))
GOAL_MS = 200.0


def demo_config(tmp: Path) -> tuple[Path, int]:
    """config/demo.toml on free ports, files under `tmp`, without MQTT; and the meter's port."""
    text = (ROOT / "config" / "demo.toml").read_text()
    meter = free_port()
    for old, new in (
        ("control_port = 15020", f"control_port = {free_port()}"),
        ("port = 15021", f"port = {meter}"),
        ("port = 15022", f"port = {free_port()}"),
        ("ws://127.0.0.1:15023", f"ws://127.0.0.1:{free_port()}"),
        ("port = 15024", f"port = {free_port()}"),
        ('".demo/', f'"{tmp}/'),
        ('"config/tariffs/', f'"{ROOT}/config/tariffs/'),
    ):
        text = text.replace(old, new)
    path = tmp / "demo.toml"
    path.write_text(text)
    return path, meter


CPU_MS: list[float] = []  # per timed() call: mean CPU time per run (ms)


def _children_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def timed(cmd: list[str], runs: int) -> list[float]:
    """Wall times (ms) of `runs` runs of `cmd` (their mean CPU time appended to CPU_MS);
    exits if one fails."""
    times = []
    cpu0 = _children_cpu_s()
    for _ in range(runs):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
        if res.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    CPU_MS.append((_children_cpu_s() - cpu0) * 1000 / runs)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="evedge-cli-") as d:
        tmp = Path(d)
        config, meter = demo_config(tmp)
        demo = subprocess.Popen(
            [EVEDGE, "demo", "--config", str(config), "--json"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "EVEDGE_MOSQUITTO": str(tmp / "none")},
        )
        try:
            deadline = time.monotonic() + 60
            while service_answer(config, "status") is None:
                if demo.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the demo did not start")
                time.sleep(0.2)
            rows = {
                "evedge --help": timed([EVEDGE, "--help"], runs),
                "evedge status --json": timed(
                    [EVEDGE, "status", "--json", "-c", str(config)], runs
                ),
                "evedge modbus raw (3 × f32)": timed(
                    [
                        EVEDGE,
                        "modbus",
                        "raw",
                        "--tcp",
                        f"127.0.0.1:{meter}",
                        "--fc",
                        "4",
                        "--address",
                        "0",
                        "--count",
                        "3",
                        "--type",
                        "f32",
                        "--json",
                    ],
                    runs,
                ),
            }
            mbpoll = shutil.which("mbpoll")
            base = None
            if mbpoll is None:
                print("mbpoll is not installed (apt-get install mbpoll): no baseline")
            else:
                mb = [mbpoll, "-m", "tcp", "-p", str(meter), "-a", "1", "-t", "3:float"]
                baseline = timed([*mb, "-B", "-0", "-r", "0", "-c", "3", "-1", "127.0.0.1"], runs)
                base = statistics.median(baseline)
                rows["mbpoll (same registers, baseline)"] = baseline
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    print(f"CLI latency, wall clock, {runs} runs each, load {os.getloadavg()[0]:.1f}")
    print(f"{'command':36} {'median':>9} {'min':>9} {'CPU/run':>9} {'× mbpoll':>9}")
    for (name, t), cpu in zip(rows.items(), CPU_MS, strict=True):
        med = statistics.median(t)
        ratio = f"{med / base:8.1f}×" if base else "      —"
        print(f"{name:36} {med:6.0f} ms {min(t):6.0f} ms {cpu:6.0f} ms {ratio}")
    for name in ("evedge --help", "evedge status --json"):
        med = statistics.median(rows[name])
        verdict = "meets" if med <= GOAL_MS else "misses"
        print(f"goal {name} ≤ {GOAL_MS:.0f} ms: {verdict} ({med:.0f} ms)")


if __name__ == "__main__":
    main()
