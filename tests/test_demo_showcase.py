"""`evedge demo` as the showcase: the simulator's control port is served (simctl works on a
running demo), an injected fault reaches the stream as a diagnosed fault, a second demo on
the same directory is refused before it touches anything, a CSMS or broker already
answering on the config's loopback port is used (not replaced), and a normal stop delivers
everything (summary backlog 0)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import free_port
from test_demo import EVEDGE, ROOT, demo_config, is_tx_ack, read_until, start_demo

from agent.cli.demo_cloud import MOSQUITTO_ENV, broker_answers, csms_answers, with_peers
from agent.config import load_config
from hil.broker import Mosquitto, mosquitto_path


def evedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EVEDGE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


class Drain:
    """Reads the demo's JSON lines in a thread: a demo whose stdout pipe is full stops."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def until(self, pred, timeout_s: float = 120) -> dict | None:
        """The first event matching `pred` (None: the stream ended)."""
        while (ev := self.lines.get(timeout=timeout_s)) is not None:
            if pred(ev):
                return ev
        return None


def test_demo_serves_simctl_diagnoses_injected_fault_refuses_second_and_drains(
    tmp_path: Path,
) -> None:
    config = demo_config(tmp_path)
    env = {} if mosquitto_path() else {MOSQUITTO_ENV: str(tmp_path / "no-mosquitto")}
    proc = start_demo(config, env=env)
    drain = Drain(proc)
    try:
        assert drain.until(is_tx_ack) is not None, proc.stderr.read()
        effective = (tmp_path / "config.json").read_bytes()

        second = evedge("demo", "--config", str(config), "--json")
        assert second.returncode == 3, second
        said = " ".join(second.stderr.split())  # one message (wrapped at the console width)
        assert said.startswith(f"error: a demo is already running in {tmp_path}/"), said
        assert "Traceback" not in said
        assert (tmp_path / "config.json").read_bytes() == effective

        # Code 12 of the Phoenix controller: contactor fault (the profile's error table).
        inject = evedge(
            "simctl", "inject", "evse_error_code", "--connector", "1", "--set", "code=12",
            "--config", str(config),
        )  # fmt: skip
        assert inject.returncode == 0, inject.stderr
        fault = drain.until(lambda e: e["type"] == "fault")
        assert fault is not None and fault["rule"] == "evse_contactor_fault", fault
        assert fault["technician_steps"]["en"], fault

        proc.send_signal(signal.SIGINT)
        summary = drain.until(lambda e: e["type"] == "summary")
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert summary is not None
    assert summary["backlog"] and not any(summary["backlog"].values()), summary


def test_a_csms_already_answering_on_the_loopback_url_is_used(tmp_path: Path) -> None:
    port = free_port()
    csms = subprocess.Popen(
        [sys.executable, "-m", "hil.csms", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening" in csms.stdout.readline()
        config = demo_config(tmp_path, csms=port)
        proc = start_demo(config, "--duration", "6", env={MOSQUITTO_ENV: str(tmp_path / "no")})
        events: list[dict] = []
        try:
            read_until(proc, events, lambda e: False)
            assert proc.wait(60) == 0, proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
        notes = [e["message"] for e in events if e["type"] == "demo"]
        assert any(f"a CSMS already answers at ws://127.0.0.1:{port}" in n for n in notes), notes
        assert not any("ports in use" in n for n in notes), notes
        boot = next(line for line in csms.stdout if "BootNotification" in line)
        assert boot.startswith("DEMO-0001 BootNotification")
    finally:
        csms.terminate()
        csms.wait(10)


def test_probes_tell_a_real_peer_from_a_silent_listener(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert not csms_answers(port)
        assert not broker_answers(port)
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    with Mosquitto(tmp_path, port):
        assert broker_answers(port)
        assert not csms_answers(port)


def test_peer_options_validate_and_point_the_config(tmp_path: Path) -> None:
    cfg = load_config(demo_config(tmp_path))
    moved = with_peers(cfg, "ws://10.0.0.5:8180/steve", "broker.lan:1883")
    assert moved.ocpp.url == "ws://10.0.0.5:8180/steve"
    assert (moved.mqtt.host, moved.mqtt.port) == ("broker.lan", 1883)
    for csms, broker, message in (
        (None, "broker.lan", "--broker wants HOST:PORT"),
        (None, "broker.lan:99999", "--broker broker.lan:99999"),
        ("http://x", None, "--csms http://x"),
    ):
        with pytest.raises(ValueError, match=message):
            with_peers(cfg, csms, broker)


def test_the_closing_summary_commands_work(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    config = demo_config(tmp_path)
    res = subprocess.run(
        [*EVEDGE, "demo", "--config", str(config), "--duration", "12"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, MOSQUITTO_ENV: str(tmp_path / "none")},  # no broker: records wait
    )
    assert res.returncode == 0, res.stderr
    tail = res.stdout[res.stdout.index("demo stopped:") :]
    written = int(re.match(r"demo stopped: (\d+) charge record", tail).group(1))
    assert written >= 1 and f"left to deliver: charge_records {written}" in tail, tail
    commands = [line.split() for line in tail.splitlines() if line.startswith("  evedge ")]
    assert len(commands) == 5, tail
    for cmd in commands[:-1]:  # the last one is for the next demo's simulator
        args = [str(tmp_path / "usage.png") if a == "usage.png" else a for a in cmd[1:]]
        ran = subprocess.run([*EVEDGE, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert ran.returncode == 0, (cmd, ran.stderr)
    assert (tmp_path / "usage.png").exists()
