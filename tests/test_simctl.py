"""`evedge sim` + `evedge simctl` as a technician uses them: real processes on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from hil.procs import EVEDGE, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sim_config(tmp_path: Path) -> Path:
    text = (ROOT / "config" / "demo.toml").read_text()
    text = text.replace("port = 15021", f"port = {free_port()}")
    text = text.replace("port = 15022", f"port = {free_port()}")
    text = text.replace("control_port = 15020", f"control_port = {free_port()}")
    path = tmp_path / "sim.toml"
    path.write_text(text)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EVEDGE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def sim(sim_config: Path):
    proc = subprocess.Popen(
        [EVEDGE, "sim", "--config", str(sim_config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while run("simctl", "snapshot", "--json", "--config", str(sim_config)).returncode != 0:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "simulator did not come up"
        time.sleep(0.2)
    yield sim_config
    proc.terminate()
    proc.wait(timeout=10)


def test_plug_inject_and_clear_change_what_the_simulator_serves(sim: Path) -> None:
    cfg = ["--config", str(sim)]
    assert run("simctl", "plug", "1", *cfg).returncode == 0
    snap = json.loads(run("simctl", "snapshot", "--json", *cfg).stdout)
    assert snap["connectors"]["1"]["cp_state"] == "B"
    res = run("simctl", "inject", "voltage_sag", "--connector", "1", "--set", "volts=40",
              "--set", "phase=2", "--json", *cfg)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fault_id = json.loads(res.stdout)["id"]
    snap = json.loads(run("simctl", "snapshot", "--json", *cfg).stdout)
    volts = snap["devices"]["meter1"]["values"]
    assert volts["voltage_l1"] - volts["voltage_l2"] > 30
    res = run("simctl", "clear", fault_id, *cfg)
    assert res.returncode == 0 and fault_id in res.stdout
    snap = json.loads(run("simctl", "snapshot", "--json", *cfg).stdout)
    assert abs(snap["devices"]["meter1"]["values"]["voltage_l2"] - 230) < 15


def test_bad_fault_is_refused_with_the_known_kinds(sim: Path) -> None:
    res = run("simctl", "inject", "meteor_strike", "--device", "meter1", "--config", str(sim))
    assert res.returncode == 1
    assert "unknown fault kind 'meteor_strike'" in res.stderr
    assert "no_response" in res.stderr
    res = run(
        "simctl", "inject", "slow", "--device", "meter1", "--set", "delay", "--config", str(sim)
    )
    assert res.returncode == 2


def test_no_simulator_is_exit_3_with_how_to_start_one(sim_config: Path) -> None:
    res = run("simctl", "unplug", "1", "--config", str(sim_config))
    assert res.returncode == 3
    assert "evedge sim --config" in res.stderr.replace("\n", "")


def test_a_fault_the_evse_cannot_report_is_refused_naming_what_is_missing(sim: Path) -> None:
    cfg = ["--config", str(sim)]
    res = run("simctl", "inject", "over_temperature", "--connector", "1", *cfg)
    assert res.returncode == 1
    said = " ".join(res.stderr.split())
    assert "evse1 (phoenix-ev-charge-control) has no temperature_c register" in said, said
    assert "no error code for overtemperature" in said
    assert json.loads(run("simctl", "faults", "--json", *cfg).stdout)["active"] == []
    # The Phoenix controller reports a contactor fault as error code 12: accepted.
    assert run("simctl", "inject", "welded_contactor", "--connector", "1", *cfg).returncode == 0
    res = run("simctl", "inject", "over_temperature", "--connector", "1", "--anyway", *cfg)
    assert res.returncode == 0, res.stderr
    kinds = [
        f["kind"] for f in json.loads(run("simctl", "faults", "--json", *cfg).stdout)["active"]
    ]
    assert sorted(kinds) == ["over_temperature", "welded_contactor"], kinds
