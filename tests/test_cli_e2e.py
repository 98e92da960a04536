"""The technician CLI end to end: real `evedge sim` and `evedge run` processes (TCP, and RTU
over a socat pair), every command a real `evedge` subprocess talking to the local API."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sessions_helpers import CARD, TARIFFS

from agent.billing.keys import KEY_FILE
from hil.control import send_command
from hil.procs import (
    EVEDGE,
    Proc,
    StationFile,
    sim_ready,
    start_agent,
    start_sim,
    write_station,
)


def station_toml(tmp: Path, sock: Path, kind: str) -> StationFile:
    """A one-connector billed station on TCP or (over a socat pair the simulator makes) RTU."""
    extra = f"""[billing]
tariff = "{TARIFFS / "simple-energy.json"}"
key_dir = "{tmp / "keys"}"
[auth]
local_list = [{{ id = "{CARD}" }}]
[api]
socket = "{sock}"
[diagnosis.rule.device_not_answering]
raise_after_s = 0.5
clear_after_s = 0.5
"""
    return write_station(
        tmp,
        station_id=f"E2E-{kind.upper()}",
        meter_interval_s=0.2,
        evse_interval_s=0.1,
        retries=1,
        log_level=None,
        rtu=tmp / "ttyRS485" if kind == "rtu" else None,
        extra=extra,
    )


@dataclass
class Station:
    config: Path
    control: int
    evse_port: int | None
    tmp: Path
    agent: Proc | None = None

    def ev(self, *args: str, config: bool = True) -> subprocess.CompletedProcess:
        """Run `evedge ARGS --config CONFIG`."""
        cmd = [EVEDGE, *args] + (["--config", str(self.config)] if config else [])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)

    def json(self, *args: str) -> dict:
        out = self.ev(*args, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def sim(self, **cmd) -> dict:
        return asyncio.run(send_command(self.control, cmd))

    def until_status(self, *want: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.json("status")
            if st["connectors"][0]["status"] in want:
                return st
            assert time.monotonic() < deadline, f"connector 1 never {want}: {st['connectors']}"
            time.sleep(0.3)

    def start_agent(self) -> None:
        self.agent = start_agent(self.config, self.tmp / "agent.log")
        deadline = time.monotonic() + 30
        while self.ev("status", "--json").returncode != 0 or not self.served():
            assert self.agent.poll() is None, self.agent.log_tail()
            assert time.monotonic() < deadline, "the agent's API never came up"
            time.sleep(0.3)

    def served(self) -> bool:
        return json.loads(self.ev("status", "--json").stdout)["source"] == "service"

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop(20)


@pytest.fixture(params=["tcp", "rtu"])
def station(request, tmp_path) -> Iterator[Station]:
    sockdir = Path(tempfile.mkdtemp(prefix="evcli-", dir="/tmp"))
    f = station_toml(tmp_path, sockdir / "api.sock", request.param)
    sim = start_sim(f.path, tmp_path / "sim.log")
    st = Station(f.path, f.control, f.evse_port, tmp_path)
    try:
        asyncio.run(sim_ready(f.control, proc=sim))
        st.start_agent()
        yield st
    finally:
        st.stop_agent()
        sim.stop(20)
        shutil.rmtree(sockdir, ignore_errors=True)


def test_technician_commands_against_a_running_agent(station):
    st = station
    status = st.json("status")
    assert status["source"] == "service" and status["note"] is None
    assert status["connectors"][0]["status"] == "Available"
    assert {d["device"] for d in status["devices"]} == {"meter1", "evse1"}
    human = st.ev("status")
    assert human.returncode == 0 and "connectors" in human.stdout and "evse1" in human.stdout

    # A session, started and stopped from the CLI.
    st.sim(cmd="plug_in", connector=1)
    st.until_status("Preparing")
    started = st.ev("start", "1", "--id-token", CARD)
    assert started.returncode == 0, started.stderr
    assert "connector 1: started" in started.stdout
    again = st.ev("start", "1")
    assert again.returncode == 1 and "start:" in again.stderr
    nowhere = st.ev("start", "9")
    assert nowhere.returncode == 2 and "no connector 9" in nowhere.stderr
    charging = st.until_status("Charging")
    session = charging["connectors"][0]["session_id"]
    assert session and charging["connectors"][0]["currency"] == "EUR"
    stopped = st.json("stop", "1")
    assert stopped["result"] == "stopped"
    shown = st.json("sessions", "show", session)
    assert json.dumps(shown).count(session) >= 1

    # Modbus write through the service (it owns the line), read back.
    wrote = st.json("modbus", "write", "offered_current_a", "13", "--device", "evse1")
    assert wrote["read_back"] == 13
    snap = st.sim(cmd="snapshot")["result"]
    assert snap["connectors"]["1"]["evse"]["offered_current_a"] == 13
    bad = st.ev("modbus", "write", "energy_import_wh", "5", "--device", "evse1")
    assert bad.returncode == 2 and "cannot write energy_import_wh" in bad.stderr
    ghost = st.ev("modbus", "write", "offered_current_a", "6", "--device", "nosuch")
    assert ghost.returncode == 2 and "no device 'nosuch'" in ghost.stderr

    # Config show: secrets and tokens masked, locations shown.
    cfg = st.json("config", "show")["config"]
    assert cfg["billing"]["free_vend_token"] == "********"
    assert cfg["auth"]["local_list"][0]["id"] == "DE*****42"
    assert cfg["billing"]["key_dir"].endswith("keys")
    assert CARD not in st.ev("config", "show").stdout

    # Bad input: clear messages, usage exit codes, nothing changed.
    assert st.ev("frobnicate", config=False).returncode == 2
    lots = st.ev("limit", "1", "lots")
    assert lots.returncode == 2 and "AMPS must be a number" in lots.stderr
    missing = st.ev("status", "--config", str(st.tmp / "nope.toml"), config=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert st.json("status")["connectors"][0]["session_id"] is None

    # The service goes down: read commands read the store and say so; control exits 3.
    st.stop_agent()
    down = st.ev("status", "--json")
    assert down.returncode == 0
    report = json.loads(down.stdout)
    assert report["source"] == "store" and "store" in report["note"]
    assert "not running" in down.stderr
    assert {d["device"] for d in report["devices"]} == {"meter1", "evse1"}
    for cmd in (("start", "1"), ("stop", "1"), ("limit", "1", "10"), ("live",)):
        out = st.ev(*cmd)
        assert out.returncode == 3, (cmd, out.stderr)
        assert "needs the running service" in out.stderr
    assert st.ev("report", "--json").returncode == 0


def test_direct_modbus_write_and_read_back(station):
    if station.config.read_text().count('kind = "rtu"'):
        pytest.skip("the running agent owns the serial line: direct access is TCP only")
    link = ["--profile", "phoenix-ev-charge-control", "--tcp", f"127.0.0.1:{station.evse_port}"]
    wrote = station.ev("modbus", "write", "offered_current_a", "11", *link, "--json", config=False)
    assert wrote.returncode == 0, wrote.stderr
    assert json.loads(wrote.stdout)["read_back"] == 11
    read = station.ev("modbus", "read", *link, "--json", config=False)
    assert json.loads(read.stdout)["values"]["offered_current_a"]["value"] == 11


def test_limit_is_applied_and_cleared(station):
    st = station
    st.sim(cmd="plug_in", connector=1)
    st.until_status("Preparing")
    assert st.ev("start", "1").returncode == 0
    st.until_status("Charging")
    limited = st.json("limit", "1", "10")
    assert limited["offered_a"] == 10
    assert st.sim(cmd="snapshot")["result"]["connectors"]["1"]["evse"]["offered_current_a"] == 10
    cleared = st.json("limit", "1", "none")
    assert cleared["requested_a"] is None and cleared["offered_a"] == 32
    assert st.sim(cmd="snapshot")["result"]["connectors"]["1"]["evse"]["offered_current_a"] == 32


def lines_json(out: subprocess.CompletedProcess) -> list[dict]:
    """Every stdout line as a JSON document."""
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_read_commands_against_a_running_agent(station):
    st = station
    rtu = st.evse_port is None

    # A finished session, so sessions and billing have a record to show.
    st.sim(cmd="plug_in", connector=1)
    st.until_status("Preparing")
    assert st.ev("start", "1", "--id-token", CARD).returncode == 0
    session = st.until_status("Charging")["connectors"][0]["session_id"]
    assert st.json("stop", "1")["result"] == "stopped"
    listed = st.json("sessions", "list")
    assert [s["session_id"] for s in listed] == [session]
    assert listed[0]["record_id"] and listed[0]["id_token"] != CARD
    verified = st.json("billing", "verify")
    assert verified["ok"] is True and verified["records"] == 1 and verified["problems"] == []
    key = st.json("keys", "show")
    assert key["file"] == str(st.tmp / "keys" / KEY_FILE)
    assert len(bytes.fromhex(key["public_key_hex"])) > 32

    # Config check: the file as an argument and as --config, same answer.
    by_option = st.json("config", "check")
    by_argument = st.ev("config", "check", str(st.config), "--json", config=False)
    assert by_argument.returncode == 0 and json.loads(by_argument.stdout) == by_option
    assert by_option["ok"] is True and by_option["devices"] == 2

    # The self-test goes through the service (it owns the serial line).
    diag = st.ev("diagnose", "--reads", "2", "--gap", "0", "--json")
    report = json.loads(diag.stdout)
    assert report["source"] == "service" and diag.returncode == (0 if report["ok"] else 1)
    assert {f["target"] for f in report["findings"]} >= {"meter1", "evse1"}

    # Modbus: the device's readings through the service; direct access on the service's
    # serial line is refused, pointing to --device; a TCP bus can be scanned directly.
    read = st.json("modbus", "read", "--device", "evse1")
    assert read["source"] == "service" and "offered_current_a" in read["values"]
    if rtu:
        tty = str(st.tmp / "ttyRS485")
        for cmd in (
            ("modbus", "scan", "--serial", tty, "--baud", "38400"),
            ("modbus", "read", "--profile", "eastron-sdm630", "--serial", tty),
        ):
            busy = st.ev(*cmd, "--json")
            assert busy.returncode == 2, busy.stderr
            err = json.loads(busy.stdout)["error"]
            assert err["code"] == "line_busy" and "--device meter1" in err["message"]
    else:
        scan = st.json(
            "modbus", "scan", "--tcp", f"127.0.0.1:{st.evse_port}", "--from", "250", "--to", "255"
        )
        assert scan["found"] == [{"unit": 255, "reply": "data"}]

    assert st.json("tickets", "list")["tickets"] == []
    logs = st.ev("logs", "--lines", "5", "--json")
    entries = lines_json(logs)
    if logs.returncode == 3:  # no journal for the unit here (outside systemd)
        assert "no journal entries for the unit evedge" in " ".join(logs.stderr.split())
        assert [e["error"]["code"] for e in entries] == ["unreachable"], entries
    else:
        assert logs.returncode == 0 and entries, logs.stderr

    polls = st.ev("live", "--count", "2", "--interval", "0.2", "--json")
    assert polls.returncode == 0, polls.stderr
    docs = lines_json(polls)
    assert len(docs) == 2 and all(d["source"] == "service" for d in docs)

    # A fault injected at the simulator: diagnosis raises it, `faults` shows it.
    st.sim(cmd="inject", fault={"kind": "no_response", "device": "meter1"})
    deadline = time.monotonic() + 20
    while True:
        active = st.json("faults")["faults"]
        found = [f for f in active if f["rule"] == "device_not_answering"]
        if found:
            break
        assert time.monotonic() < deadline, f"no device_not_answering fault: {active}"
        time.sleep(0.3)
    assert found[0]["scope"] == "device:meter1" and found[0]["active"] is True
    assert found[0]["fault_id"] in {f["fault_id"] for f in st.json("status")["faults"]}

    # An error with --json: the JSON error object on stdout, and the exit code.
    nowhere = st.ev("start", "9", "--json")
    assert nowhere.returncode == 2
    assert json.loads(nowhere.stdout)["error"]["code"] == "not_found"
