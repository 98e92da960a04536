"""Benchmark: the whole daemon's footprint on a small controller, against the issue-16 goals.

Starts `evedge sim` and `evedge run` with the demo station (config/demo.toml: meter1, evse1,
plus a site meter, 3 devices at 1 Hz; OCPP to the test CSMS hil/csms.py served here, MQTT to
mosquitto via hil/broker.py, a session running on connector 1), lets it settle, then
measures the agent process over a fixed window:

- CPU % of one core (utime + stime from /proc/PID/stat, children included: a process the
  agent spawns costs the controller too)
- RSS and PSS (/proc/PID/smaps_rollup), threads (/proc/PID/status)
- SQLite connections: open fds on *.db files (/proc/PID/fd)
- bytes written (/proc/PID/io write_bytes: what reaches the block layer, the flash wear)
  and write syscalls' bytes (wchar), per hour and per day
- disk syncs per second and write() bytes per second by file (the store, its WAL, other),
  from `strace -f -y` in a second window when strace can attach; strace slows the process,
  so CPU is measured without it

Figures are printed against the goals (no assertion). The agent is run as
`python -m agent.cli.main`, so PYTHONPATH chooses the code measured: to measure another
checkout, `PYTHONPATH=/path/to/it .venv/bin/python bench/footprint.py`.
Usage: .venv/bin/python bench/footprint.py [--window S] [--settle S] [--strace-window S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hil.broker import Mosquitto, mosquitto_path
from hil.control import send_command
from hil.csms import TestCsms
from hil.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOALS = {"cpu_pct": 1.0, "rss_mb": 60.0, "syncs_per_s": 1.0, "write_mb_per_h": 5.0}
CARD = "DEMO-0042"


def station_toml(tmp: Path, csms_port: int, mqtt_port: int | None) -> tuple[str, int]:
    """The demo station on free ports, its files under `tmp`, a third device, all at 1 Hz."""
    text = (ROOT / "config" / "demo.toml").read_text()
    ports = {p: free_port() for p in ("15020", "15021", "15022")}
    for old, new in ports.items():
        text = text.replace(f"= {old}", f"= {new}")
    text = text.replace("interval_s = 0.5", "interval_s = 1.0")
    text = text.replace('".demo/', f'"{tmp}/')
    text = text.replace('"config/tariffs/', f'"{ROOT}/config/tariffs/')
    text = text.replace("ws://127.0.0.1:15023", f"ws://127.0.0.1:{csms_port}")
    if mqtt_port is None:  # no mosquitto: run without MQTT (said in the output)
        text = re.sub(r"\n\[mqtt\]\n(?:[^\[\n].*\n)*", "\n", text)
    else:
        text = text.replace("port = 15024", f"port = {mqtt_port}")
    site = free_port()
    text += f"""
[[device]]
name = "site"
profile = "carlo-gavazzi-em340"
bus = "lan"
host = "127.0.0.1"
port = {site}
unit = 1
interval_s = 1.0

[log]
level = "warning"
"""
    return text, int(ports["15020"])


def evedge(*args: str, log: Path) -> subprocess.Popen:
    """`evedge ARGS` with the code PYTHONPATH (else the installed package) provides."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli.main", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,  # not the checkout: `-m` puts the working directory first
        )


def cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def io(pid: int) -> dict[str, int]:
    """/proc/PID/io as a dict (write_bytes, wchar, syscw, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB from smaps_rollup."""
    kb = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        kb[parts[0].rstrip(":")] = int(parts[1])
    return kb["Rss"] / 1024, kb["Pss"] / 1024


def threads(pid: int) -> int:
    """The process's thread count."""
    m = re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def db_fds(pid: int) -> dict[str, int]:
    """Open file descriptors per SQLite database file name (connections hold one each)."""
    out: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(".db"):
            name = Path(target).name
            out[name] = out.get(name, 0) + 1
    return out


class TopicCounter:
    """Counts the agent's MQTT messages per stream (the topic's part after the station id),
    from a subscriber on the same broker: what the outbox commits and publishes."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.counts: dict[str, int] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="footprint-bench")
        self.client.on_connect = lambda c, *a: c.subscribe("evedge/v1/#", qos=0)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        stream = parts[3] if len(parts) > 3 else msg.topic
        self.counts[stream] = self.counts.get(stream, 0) + 1

    def take(self) -> dict[str, int]:
        """The counts so far, and start again."""
        counts, self.counts = self.counts, {}
        return counts

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


_CALL = re.compile(r"^(?:\[pid\s+(\d+)\]\s+)?(fsync|fdatasync|pwrite64|write)\(\d+<([^>]*)>")
_RESUMED = re.compile(r"^(?:\[pid\s+(\d+)\]\s+)?<\.\.\. (pwrite64|write) resumed>")
_RET = re.compile(r"\)\s+=\s+(\d+)\s*$")


def readings_rows(db: Path, start: float, end: float) -> int:
    """Readings rows stored with a timestamp in [start, end) (epoch s): what the retention
    policy keeps of the values polled."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = "SELECT count(*) FROM readings WHERE ts >= ? AND ts < ?"
        return conn.execute(sql, (int(start * 1e6), int(end * 1e6))).fetchone()[0]
    finally:
        conn.close()


def trace_io(pid: int, seconds: float) -> tuple[float | None, dict[str, float]]:
    """Over `seconds`, from strace: fsync + fdatasync per second (None if strace cannot
    attach), and bytes written per second by file kind (db, WAL, other)."""
    strace = shutil.which("strace")
    if strace is None:
        return None, {}
    # -C: each call's line (bytes by file) and the summary table (calls per syscall).
    cmd = [strace, "-f", "-C", "-y", "-qq", "-s", "0", "-e", "trace=fsync,fdatasync,pwrite64,write"]
    p = subprocess.Popen(
        [*cmd, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(seconds)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    if "attach" in err and "Operation not permitted" in err:
        return None, {}
    syncs = 0
    written: dict[str, float] = {}
    unfinished: dict[str | None, str] = {}  # thread -> file of its interrupted write
    for line in err.splitlines():
        call, resumed, ret = _CALL.match(line), _RESUMED.match(line), _RET.search(line)
        parts = line.split()
        if len(parts) in (5, 6) and parts[-1] in ("fsync", "fdatasync") and parts[-2].isdigit():
            syncs += int(parts[3] if len(parts) == 6 else parts[-2])  # the summary's calls
            continue
        if call:
            tid, name, path = call.groups()
            if name in ("fsync", "fdatasync"):
                continue
            if ret is None:
                unfinished[tid] = path
                continue
        elif resumed and resumed.group(1) in unfinished and ret:
            path = unfinished.pop(resumed.group(1))
        else:
            continue
        kind = "WAL" if path.endswith("-wal") else "db" if path.endswith(".db") else "other"
        written[kind] = written.get(kind, 0) + int(ret.group(1)) / seconds
    return syncs / seconds, written


async def wait_until(pred, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll `pred` until true; fail with the agent's log tail on timeout or its exit."""
    end = time.monotonic() + timeout
    while not await pred():
        if proc.poll() is not None or time.monotonic() > end:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SystemExit(f"footprint: {what} did not happen (agent log):\n{tail}")
        await asyncio.sleep(0.2)


async def run_once(args: argparse.Namespace, tmp: Path) -> dict[str, float | str | None]:
    """One full start, settle, measure, stop. Returns the figures."""
    csms = TestCsms()
    await csms.start()
    broker = None
    if mosquitto_path() is not None:
        broker = Mosquitto(tmp / "broker")
        await broker.start_async()
    text, control = station_toml(tmp, csms.port, broker.port if broker else None)
    cfg = tmp / "station.toml"
    cfg.write_text(text)
    sim = evedge("sim", "-c", str(cfg), log=tmp / "sim.log")
    agent = None
    try:

        async def sim_up() -> bool:
            try:
                return (await send_command(control, {"cmd": "snapshot"}, timeout_s=1))["ok"]
            except (OSError, TimeoutError):
                return False

        await wait_until(sim_up, 30, "simulator start", sim, tmp / "sim.log")
        agent = evedge("run", "-c", str(cfg), log=tmp / "agent.log")
        await csms.wait_connected("DEMO-0001", timeout=60)
        await send_command(control, {"cmd": "plug_in", "connector": 1})
        started = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "agent.cli.main",
                "start",
                "1",
                "--id-token",
                CARD,
                "-c",
                str(cfg),
            ],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if started.returncode != 0:
            raise SystemExit(f"footprint: session start failed: {started.stdout}{started.stderr}")

        async def session_on() -> bool:
            return bool(csms.received.get("DEMO-0001")) and "StartTransaction" in csms.actions(
                "DEMO-0001"
            )

        await wait_until(session_on, 60, "StartTransaction at the CSMS", agent, tmp / "agent.log")
        await asyncio.sleep(args.settle)
        pid = agent.pid
        topics = TopicCounter(broker.port) if broker else None
        if topics:
            await asyncio.sleep(1.0)  # retained messages arrive at subscribe: not counted
            topics.take()
        c0, io0, t0, wall0 = cpu_s(pid), io(pid), time.monotonic(), time.time()
        samples = []
        while time.monotonic() - t0 < args.window:
            await asyncio.sleep(min(5.0, args.window))
            samples.append(memory_mb(pid))
        c1, io1, dt = cpu_s(pid), io(pid), time.monotonic() - t0
        rows = readings_rows(tmp / "evedge.db", wall0, wall0 + dt)
        mqtt_counts = topics.take() if topics else {}
        if topics:
            topics.close()
        fds = db_fds(pid)
        nthreads = threads(pid)
        syncs, by_file = await asyncio.to_thread(trace_io, pid, args.strace_window)
        if agent.poll() is not None:
            raise SystemExit("footprint: the agent exited during the window")
        per_h = 3600 / dt
        return {
            "cpu_pct": (c1 - c0) / dt * 100,
            "rss_mb": max(s[0] for s in samples),
            "pss_mb": max(s[1] for s in samples),
            "threads": nthreads,
            "sqlite_fds": sum(fds.values()),
            "sqlite_files": ", ".join(f"{k}:{v}" for k, v in sorted(fds.items())),
            "syncs_per_s": syncs,
            "written_per_s": by_file,
            "readings_per_s": rows / dt,
            "write_mb_per_h": (io1["write_bytes"] - io0["write_bytes"]) * per_h / 1e6,
            "wchar_mb_per_h": (io1["wchar"] - io0["wchar"]) * per_h / 1e6,
            "mqtt": "yes" if broker else "no (mosquitto not installed)",
            "mqtt_per_s": {k: v / dt for k, v in sorted(mqtt_counts.items())},
        }
    finally:
        for p in (agent, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    await asyncio.to_thread(p.wait, 30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if broker is not None:
            broker.stop()
        await csms.stop()


def show(runs: list[dict]) -> None:
    """Each run's figures, the median, and the median against the goal."""
    rows = [
        ("cpu_pct", "CPU, % of one core", "{:.2f}"),
        ("rss_mb", "RSS, MB (max)", "{:.1f}"),
        ("pss_mb", "PSS, MB (max)", "{:.1f}"),
        ("threads", "threads", "{:.0f}"),
        ("sqlite_fds", "open *.db fds", "{:.0f}"),
        ("syncs_per_s", "disk syncs per s", "{:.2f}"),
        ("write_mb_per_h", "written to disk, MB/h", "{:.2f}"),
        ("wchar_mb_per_h", "write() bytes, MB/h", "{:.2f}"),
    ]
    print(
        f"{'figure':28}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(len(runs))), end=""
    )
    print(f"{'median':>10}{'goal':>8}{'x goal':>8}")
    for key, label, fmt in rows:
        vals = [r[key] for r in runs]
        cells = "".join(f"{'n/a' if v is None else fmt.format(v):>10}" for v in vals)
        known = sorted(v for v in vals if v is not None)
        med = known[len(known) // 2] if known else None
        goal = GOALS.get(key)
        ratio = f"{med / goal:.2f}" if goal and med is not None else ""
        medtxt = "n/a" if med is None else fmt.format(med)
        print(f"{label:28}{cells}{medtxt:>10}{'' if goal is None else goal:>8}{ratio:>8}")
    per_day = sorted(r["write_mb_per_h"] for r in runs)[len(runs) // 2] * 24
    print(f"written to disk per day (median): {per_day:.0f} MB")
    print("SQLite fds per file (last run):", runs[-1]["sqlite_files"], "; MQTT:", runs[-1]["mqtt"])
    rates = ", ".join(f"{k} {v:.2f}" for k, v in runs[-1]["mqtt_per_s"].items())
    print(f"MQTT messages per s by stream (last run): {rates or 'none'}")
    files = ", ".join(f"{k} {v / 1e3:.1f}" for k, v in sorted(runs[-1]["written_per_s"].items()))
    print(f"write() KB/s by file, strace window (last run): {files or 'n/a'}")
    print(f"readings rows stored per s (last run): {runs[-1]['readings_per_s']:.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0, help="measuring window, s")
    parser.add_argument("--settle", type=float, default=15.0, help="after the session starts")
    parser.add_argument("--strace-window", type=float, default=20.0)
    args = parser.parse_args()
    import agent

    print(
        f"footprint of {Path(agent.__file__).parent.parent}: {args.runs} runs, "
        f"{args.window:g} s window each"
    )
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="evedge-footprint-", dir="/var/tmp") as d:
            runs.append(await run_once(args, Path(d)))
        print(f"run {i + 1}: CPU {runs[-1]['cpu_pct']:.2f} %, RSS {runs[-1]['rss_mb']:.1f} MB")
    show(runs)


if __name__ == "__main__":
    asyncio.run(main())
