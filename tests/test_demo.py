"""`evedge demo --json` as a real process: the whole job on the simulated station.

The demo's JSON stream must show a session starting, the CSMS acknowledging its
StartTransaction with a transaction id, the stop with its charge record (and the CSMS
receiving the StopTransaction for that id), and the driver's display messages — with a
mosquitto broker (MQTT link connected) and without one (MQTT skipped, one line saying why).
Ports come from free_port(); the store, keys and socket live under tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from agent.cli.demo_cloud import MOSQUITTO_ENV, mosquitto_path

ROOT = Path(__file__).resolve().parents[1]
EVEDGE = [sys.executable, "-m", "agent.cli.main"]


def demo_config(tmp_path: Path, **ports: int) -> Path:
    """config/demo.toml with free (or given) ports, short sessions, files under tmp_path."""
    text = (ROOT / "config" / "demo.toml").read_text()
    for old, key in (
        ("control_port = 15020", "control"),
        ("port = 15021", "meter"),
        ("port = 15022", "evse"),
        ("ws://127.0.0.1:15023", "csms"),
        ("port = 15024", "mqtt"),
    ):
        assert old in text, f"config/demo.toml no longer has {old!r}"
        text = text.replace(old, old.rsplit("15", 1)[0] + str(ports.get(key) or free_port()))
    for old, new in (
        ('".demo/evedge.db"', f'"{tmp_path / "evedge.db"}"'),
        ('".demo/keys"', f'"{tmp_path / "keys"}"'),
        ('".demo/api.sock"', f'"{tmp_path / "api.sock"}"'),
        ("plugged_s = 40", "plugged_s = 4"),
        ("pause_s = 8", "pause_s = 1"),
    ):
        assert old in text, f"config/demo.toml no longer has {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def start_demo(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*EVEDGE, "demo", "--config", str(config), "--json", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def read_until(proc: subprocess.Popen, seen: list[dict], pred) -> dict | None:
    """Read JSON lines into `seen` until one matches `pred` (None: the stream ended)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        seen.append(ev)
        if pred(ev):
            return ev
    return None


def is_tx_ack(ev: dict) -> bool:
    return ev["type"] == "ocpp" and ev.get("event") == "transaction"


def check_whole_job(events: list[dict]) -> None:
    """A session started, got its transaction id, stopped with a record the CSMS saw."""
    started = [e for e in events if e["type"] == "session" and e["kind"] == "started"]
    assert started, "no session started"
    acks = {e["session_id"]: e["transaction_id"] for e in events if is_tx_ack(e)}
    sid = started[0]["session_id"]
    assert isinstance(acks.get(sid), int), f"no StartTransaction acknowledged for {sid}"
    records = [e for e in events if e["type"] == "record" and e["session_id"] == sid]
    assert len(records) == 1 and records[0]["energy_wh"] > 0, records
    assert any(
        e["type"] == "session" and e["kind"] == "stopped" and e["session_id"] == sid for e in events
    )
    csms = [e for e in events if e["type"] == "csms" and e.get("action") == "StopTransaction"]
    assert any(e["payload"]["transactionId"] == acks[sid] for e in csms), csms
    starts = [e for e in events if e["type"] == "csms" and e.get("action") == "StartTransaction"]
    assert starts and starts[0]["payload"]["idTag"] == "DEMO-0042"
    shown = {e["state"] for e in events if e["type"] == "driver" and e["connector"] == 1}
    assert {"Available", "Preparing", "Charging"} <= shown, shown
    headlines = [e["headline"]["en"] for e in events if e["type"] == "driver"]
    assert any(h.startswith("Charging") for h in headlines), headlines


def link(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["type"] == name and e.get("event") == "link"]


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed")
def test_demo_json_shows_the_whole_job_with_mqtt(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    proc = start_demo(config, "--duration", "14")
    events: list[dict] = []
    try:
        assert read_until(proc, events, is_tx_ack) is not None, proc.stderr.read()
        # `evedge live` polls the running demo through its local API, sync state included.
        live = subprocess.Popen(
            [*EVEDGE, "live", "--json", "--interval", "0.5", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            status = json.loads(live.stdout.readline() or "null")
        finally:
            live.terminate()
            live.wait(10)
        assert status is not None, live.stderr.read()
        assert status["sync"]["ocpp"]["connected"] is True
        assert status["sync"]["mqtt"]["connected"] is True
        assert status["connectors"][0]["session_id"] is not None
        read_until(proc, events, lambda ev: False)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    check_whole_job(events)
    assert link(events, "ocpp")[0]["boot_status"] == "Accepted"
    assert any(e["connected"] for e in link(events, "mqtt"))
    assert not [e for e in events if e["type"] == "demo" and "MQTT skipped" in e["message"]]


def test_demo_without_mosquitto_skips_mqtt_moves_taken_ports_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    config = demo_config(tmp_path, csms=taken.getsockname()[1])
    proc = start_demo(config, env={MOSQUITTO_ENV: str(tmp_path / "no-mosquitto")})
    events: list[dict] = []
    try:
        assert read_until(proc, events, is_tx_ack) is not None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        read_until(proc, events, lambda ev: False)
        assert proc.wait(30) == 0
        stderr = proc.stderr.read()
    finally:
        taken.close()
        proc.kill()
        proc.wait()
    assert "Traceback" not in stderr, stderr
    notes = [e["message"] for e in events if e["type"] == "demo"]
    skipped = [n for n in notes if n.startswith("MQTT skipped")]
    assert len(skipped) == 1 and "no-mosquitto" in skipped[0], notes
    assert any("ports in use (CSMS" in n for n in notes), notes
    assert link(events, "mqtt") == []
    assert link(events, "ocpp")[0]["connected"] is True
    check_whole_job(events)  # Ctrl-C ended the running session with its record
