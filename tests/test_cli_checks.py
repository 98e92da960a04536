"""Technician checks that answer at once and in one line: `mqtt check` against a broker that
is down and one that is up (mosquitto on loopback), `logs` exit codes and `--json`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from test_demo import demo_config

from agent.config import load_config
from hil.broker import Mosquitto, mosquitto_path
from hil.procs import EVEDGE


def evedge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EVEDGE, *args], capture_output=True, text=True, timeout=60, env=env)


def test_mqtt_check_with_the_broker_down_is_one_line_exit_3(tmp_path: Path) -> None:
    config = demo_config(tmp_path)  # its broker port is free: nobody listens
    port = load_config(config).mqtt.port
    res = evedge("mqtt", "check", "-c", str(config))
    assert res.returncode == 3
    said = " ".join(res.stderr.split())
    assert re.fullmatch(rf"error: broker 127\.0\.0\.1:{port}: cannot connect: .*refused", said), (
        res.stderr
    )


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed")
def test_mqtt_check_against_a_running_broker_is_accepted(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    port = load_config(config).mqtt.port
    with Mosquitto(tmp_path / "broker", port):
        res = evedge("mqtt", "check", "-c", str(config), "--json")
    assert res.returncode == 0, res.stderr
    assert '"ok": true' in res.stdout


def test_logs_without_entries_of_the_unit_is_exit_3_also_as_json() -> None:
    unit = "evedge-no-such-unit"
    res = evedge("logs", "--unit", unit)
    if res.returncode == 0:
        pytest.skip("this machine's journal has entries (of every unit, or this one)")
    assert res.returncode == 3 and res.stdout == ""
    said = " ".join(res.stderr.split())
    assert f"no journal entries for the unit {unit}" in said or "journalctl not found" in said
    res = evedge("logs", "--unit", unit, "--json")
    assert res.returncode == 3
    assert json.loads(res.stdout)["error"]["code"] == "unreachable"


def test_diagnose_probes_the_configured_csms_and_broker(tmp_path: Path) -> None:
    import socket

    with socket.socket() as csms:
        csms.bind(("127.0.0.1", 0))
        csms.listen()
        port = csms.getsockname()[1]
        config = demo_config(tmp_path, csms=port)
        cfg = load_config(config)
        res = evedge("diagnose", "-c", str(config), "--json", "--reads", "2", "--gap", "0")
    doc = json.loads(res.stdout)
    cloud = {f["target"]: f for f in doc["findings"] if f["check"] == "cloud"}
    assert cloud[f"127.0.0.1:{port}"]["ok"], cloud
    assert cloud[f"127.0.0.1:{port}"]["message"] == "CSMS reachable (TCP)"
    broker = cloud[f"127.0.0.1:{cfg.mqtt.port}"]
    assert not broker["ok"]
    assert broker["message"] == f"cannot connect to MQTT broker 127.0.0.1:{cfg.mqtt.port}"
    assert res.returncode == 1


# Groups whose commands live outside agent/cli (their teams document them).
OTHERS = ("tariff", "update")


def test_every_command_help_has_an_example() -> None:
    from typer.testing import CliRunner

    from agent.cli.main import app

    runner = CliRunner()
    missing, seen = [], 0

    def walk(path: list[str]) -> None:
        nonlocal seen
        out = runner.invoke(app, [*path, "--help"], terminal_width=200).stdout
        if "Commands:" in out:
            for line in out.split("Commands:")[1].splitlines():
                if line.startswith("  ") and not line.startswith("   "):
                    name = line.split()[0]
                    if not (not path and name in OTHERS):
                        walk([*path, name])
            return
        seen += 1
        if "Example:" not in out:
            missing.append(" ".join(path))

    walk([])
    assert seen > 30 and not missing, missing
