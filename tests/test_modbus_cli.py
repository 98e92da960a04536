"""`evedge modbus read|scan` as a real subprocess against the simulated station.

The simulator runs in a thread with its own event loop (the CLI process has its own), its
model frozen (tick_s=None) so what the CLI reads is what the snapshot says.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import free_port, station_config

from agent.config import StationConfig
from hil.serial_pair import SerialPair
from hil.station import SimStation

ROOT = Path(__file__).resolve().parents[1]


class SimThread:
    """A SimStation serving from a background thread (its own loop) while the test blocks."""

    def __init__(self, cfg: StationConfig, serial_ports: dict[str, str] | None = None):
        self.sim = SimStation(cfg, serial_ports, tick_s=None)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def __enter__(self) -> SimThread:
        self._thread.start()
        self._call(self.sim.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self.sim.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            self.loop.close()

    def values(self, device: str) -> dict:
        async def snap():
            return self.sim.snapshot()["devices"][device]["values"]

        return self._call(snap())


def evedge(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(text: str) -> str:
    """Rich wraps stderr at 80 columns when it is not a terminal."""
    return " ".join(text.split())


def read_json(res: subprocess.CompletedProcess[str]) -> dict:
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["failures"] == []
    return {q: v["value"] for q, v in doc["values"].items()}


def test_read_over_tcp_prints_the_sim_values_as_json():
    port = free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=port),
        dict(name="meter2", profile="eastron-sdm630", unit=2, port=port),
    )
    with SimThread(cfg) as st:
        res = evedge(
            "modbus", "read", "--profile", "eastron-sdm630",
            "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--json",
        )  # fmt: skip
        want, other = st.values("meter1"), st.values("meter2")
    got = read_json(res)
    assert got == want
    assert got != other  # it read unit 1, not just any unit
    assert isinstance(got["energy_import_wh"], int)
    doc = json.loads(res.stdout)
    assert (doc["unit"], doc["link"]) == (1, f"tcp://127.0.0.1:{port}")
    assert doc["values"]["voltage_l1"]["unit"] == "V"


def test_read_over_serial_prints_the_sim_values_as_json():
    with SerialPair() as (agent_end, sim_end):
        cfg = station_config(
            dict(name="meter1", profile="eastron-sdm630", unit=1),
            rtu_port=agent_end,
            baudrate=9600,
        )
        with SimThread(cfg, {"rs485": sim_end}) as st:
            res = evedge(
                "modbus", "read", "--profile", "eastron-sdm630", "--serial", agent_end,
                "--baud", "9600", "--parity", "N", "--unit", "1", "--json",
            )  # fmt: skip
            want = st.values("meter1")
    assert read_json(res) == want
    assert json.loads(res.stdout)["link"] == f"{agent_end}@9600 8N1"


def test_read_with_nothing_listening_exits_3_with_a_clear_message(tmp_path):
    port = free_port()
    res = evedge("modbus", "read", "--profile", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}")
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"error: read nothing from unit 1 on tcp://127.0.0.1:{port}: " in one_line(res.stderr)
    assert "Traceback" not in res.stderr

    missing = tmp_path / "ttyUSB7"
    res = evedge("modbus", "read", "--profile", "eastron-sdm630", "--serial", str(missing))
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"no serial port {missing}" in one_line(res.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "eastron-sdm630", "--tcp", "127.0.0.1"], "--tcp wants HOST:PORT"),
        (["--profile", "eastron-sdm630", "--tcp", "host:http"], "--tcp wants HOST:PORT"),
        (["--profile", "eastron-sdm630", "--tcp", "127.0.0.1:70000"], "--tcp wants HOST:PORT"),
        (["--profile", "no-such-meter", "--tcp", "127.0.0.1:502"], "unknown profile"),
        (["--profile", "eastron-sdm630"], "give exactly one of --tcp"),
        ([], "give --device NAME, or --profile"),
        (["--device", "meter1", "--tcp", "127.0.0.1:502"], "--device goes through the service"),
    ],
)
def test_bad_arguments_exit_2(args, message):
    res = evedge("modbus", "read", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in one_line(res.stderr)
    assert "Traceback" not in res.stderr


def test_scan_over_tcp_finds_only_the_configured_unit():
    port = free_port()
    cfg = station_config(dict(name="meter1", profile="eastron-sdm630", unit=3, port=port))
    with SimThread(cfg):
        res = evedge("modbus", "scan", "--tcp", f"127.0.0.1:{port}", "--from", "1", "--to", "5",
                     "--function", "input", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    # The endpoint answers 0x0B for units 1, 2, 4, 5: a gateway saying nobody is there.
    assert json.loads(res.stdout)["found"] == [{"unit": 3, "reply": "data"}]


def test_scan_over_serial_finds_both_units():
    with SerialPair() as (agent_end, sim_end):
        cfg = station_config(
            dict(name="meter1", profile="eastron-sdm630", unit=2),
            dict(name="meter2", profile="eastron-sdm72dm-v2", unit=4),
            rtu_port=agent_end,
            baudrate=9600,
        )
        with SimThread(cfg, {"rs485": sim_end}):
            res = evedge("modbus", "scan", "--serial", agent_end, "--baud", "9600",
                         "--from", "1", "--to", "5", "--timeout", "0.1", "--function", "input",
                         "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert [f["unit"] for f in json.loads(res.stdout)["found"]] == [2, 4]


def test_scan_with_nothing_listening_exits_3():
    res = evedge("modbus", "scan", "--tcp", f"127.0.0.1:{free_port()}", "--to", "3")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "cannot connect" in one_line(res.stderr)
