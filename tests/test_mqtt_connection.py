"""The broker connection: TLS and mTLS with generated certificates, credentials from a
private file, MQTT 3.1.1, and the Last Will when the agent process is killed (kill -9)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import station_config
from mqtt_helpers import Backend, Broker, make_pki
from test_mqtt_sync import STATION, by_stream, no_gaps_after_dedup

from agent.config import ConfigError, StationConfig, parse_config
from agent.mqtt.config import MqttConfig, MqttConfigError
from agent.runtime import Agent
from hil.procs import Proc, start_agent, start_sim, until, write_station

pytestmark = pytest.mark.timeout(120)


def bare(tmp_path: Path, **mqtt) -> StationConfig:
    """A station with no devices (the connection is what is tested) and an [mqtt] section."""
    cfg = station_config(extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n')
    m = dict(host="127.0.0.1", reconnect_min_s=0.1, reconnect_max_s=0.3, telemetry_interval_s=0.2)
    return cfg.model_copy(update={"mqtt": MqttConfig(**{**m, **mqtt})})


async def connects(cfg: StationConfig, backend: Backend | None = None) -> dict:
    """Run an agent until it is connected (and the backend saw `online`); its final state."""
    agent = Agent(cfg)
    await agent.start()
    try:
        await until(lambda: agent.mqtt.connection.connected, 10, "connected")
        if backend is not None:
            await asyncio.to_thread(
                backend.wait, lambda ms: by_stream(ms, "status"), 10, "online status"
            )
        return agent.mqtt.state()
    finally:
        await agent.stop()


async def refused(cfg: StationConfig) -> str:
    """Run an agent until its connection failed a few times; the last error."""
    agent = Agent(cfg)
    await agent.start()
    try:
        await until(lambda: agent.mqtt.connection.last_error is not None, 10, "a failure")
        assert not agent.mqtt.connection.connected
        return agent.mqtt.connection.last_error or ""
    finally:
        await agent.stop()


async def test_tls_verifies_the_broker_against_the_ca(tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", tls="tls", pki=pki)
    broker.start()
    backend = Backend(broker, tls_ca=pki.ca).connect()
    try:
        state = await connects(bare(tmp_path, port=broker.port, ca_file=pki.ca), backend)
        assert state["tls"] is True and state["connected"]
        online = by_stream(backend.snapshot(), "status")[0]
        assert online["state"] == "online" and online["station"] == STATION
        err = await refused(bare(tmp_path, port=broker.port, ca_file=pki.other_ca))
        assert "certificate verify failed" in err
        plain = await refused(bare(tmp_path, port=broker.port, tls=False))
        assert plain  # a TLS listener does not speak plain MQTT
    finally:
        backend.close()
        broker.stop()


async def test_mtls_needs_the_client_certificate(tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", tls="mtls", pki=pki)
    broker.start()
    backend = Backend(broker).connect()
    try:
        mtls = dict(port=broker.port, ca_file=pki.ca)
        state = await connects(
            bare(tmp_path, **mtls, cert_file=pki.client_cert, key_file=pki.client_key), backend
        )
        assert state["connected"]
        assert await refused(bare(tmp_path, **mtls))  # no client certificate: refused
    finally:
        backend.close()
        broker.stop()


async def test_password_file_must_be_private_and_never_logged(tmp_path, capsys):
    secret = "s3cret-Pa55word"
    broker = Broker(tmp_path / "broker", users={"CP-0001": secret})
    broker.start()
    pw = tmp_path / "mqtt.pass"
    pw.write_text(secret + "\n")
    try:
        pw.chmod(0o644)
        with pytest.raises(MqttConfigError, match="chmod 600"):
            Agent(bare(tmp_path, port=broker.port, tls=False, username="CP-0001",
                       password_file=pw))  # fmt: skip
        pw.chmod(0o600)
        ok = bare(tmp_path, port=broker.port, tls=False, username="CP-0001", password_file=pw)
        assert (await connects(ok))["connected"]
        wrong = tmp_path / "wrong.pass"
        wrong.write_text("not-the-password")
        wrong.chmod(0o600)
        err = await refused(
            bare(tmp_path, port=broker.port, tls=False, username="CP-0001", password_file=wrong)
        )
        assert "refused" in err
    finally:
        broker.stop()
    out = capsys.readouterr()
    assert secret not in out.out + out.err and "not-the-password" not in out.out + out.err


async def test_mqtt_311_replies_on_the_reply_topic(tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.start()
    backend = Backend(broker, protocol="3.1.1").connect()
    agent = Agent(bare(tmp_path, port=broker.port, tls=False, protocol="3.1.1"))
    await agent.start()
    try:
        await until(lambda: agent.mqtt.connection.connected, 10, "connected")
        cid, _ = await asyncio.to_thread(backend.command, STATION, "get_active_faults")
        await asyncio.to_thread(
            backend.wait, lambda ms: backend.on("cmd/get_active_faults/reply"), 10, "the reply"
        )
        reply = backend.on("cmd/get_active_faults/reply")[0].json()
        assert reply["command_id"] == cid and reply["ok"] and reply["result"] == {"faults": []}
    finally:
        await agent.stop()
        backend.close()
        broker.stop()


def run_config(tmp_path: Path, broker: Broker) -> Path:
    """A simulated one-connector station with [mqtt], as a file for `evedge run|sim`."""
    mqtt = f"""[mqtt]
host = "127.0.0.1"
port = {broker.port}
tls = false
telemetry_interval_s = 0.2
reconnect_min_s = 0.1
reconnect_max_s = 0.5
"""
    return write_station(
        tmp_path,
        station_id=STATION,
        meter_interval_s=0.2,
        evse_interval_s=0.2,
        retries=1,
        log_level=None,
        extra=mqtt,
    ).path


def test_kill_9_publishes_offline_and_loses_nothing(tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.start()
    backend = Backend(broker).connect()
    config = run_config(tmp_path, broker)
    log = tmp_path / "agent.log"
    sim = start_sim(config, log)
    agents: list[Proc] = []
    try:

        def start() -> None:
            agents.append(start_agent(config, log, console_logs=False))

        def telemetry(ms) -> list[dict]:
            return by_stream(ms, "telemetry")

        start()
        backend.wait(lambda ms: len(telemetry(ms)) >= 5, 30, "telemetry from the agent")
        agents[-1].kill9()
        backend.wait(
            lambda ms: by_stream(ms, "status")[-1]["state"] == "offline", 15, "the Last Will"
        )
        will = by_stream(backend.snapshot(), "status")[-1]
        assert will["clean"] is False  # the Last Will, not a clean stop
        late = Backend(broker, client_id="late-subscriber").connect()  # sees the retained state
        late.wait(lambda ms: late.on("status"), 10, "the retained status")
        late.close()
        assert late.on("status")[0].retain and late.on("status")[0].json()["state"] == "offline"
        seen = len(telemetry(backend.snapshot()))
        start()
        backend.wait(lambda ms: len(telemetry(ms)) >= seen + 5, 30, "telemetry after restart")
        assert agents[-1].stop(20) == 0  # a clean stop
        backend.wait(lambda ms: by_stream(ms, "status")[-1]["clean"] is True, 15, "clean offline")
    finally:
        for p in (*agents, sim):
            p.kill9()
        backend.close()
        broker.stop()
    msgs = backend.snapshot()
    status = by_stream(msgs, "status")
    assert [s["state"] for s in status] == ["online", "offline", "online", "offline"]
    assert status[1]["seq"] == status[0]["seq"] + 1  # the Will belongs to its connection
    # Nothing committed before the kill was lost: every number arrived (duplicates allowed).
    for stream in ("telemetry", "health"):
        seqs = no_gaps_after_dedup(by_stream(msgs, stream))
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), stream


def test_the_example_section_parses_and_errors_are_specific():
    example = (Path(__file__).parents[1] / "config" / "station.example.toml").read_text()
    block = example[example.index("# [mqtt]") :].split("\n\n")[0]
    section = "\n".join(ln.removeprefix("# ") for ln in block.splitlines())
    cfg = parse_config(example + "\n" + section)
    assert cfg.mqtt is not None and cfg.mqtt.port == 8883 and cfg.mqtt.protocol == "5"
    with pytest.raises(ConfigError) as e:
        parse_config(example + '\n[mqtt]\nhost = "b"\ncert_file = "/x.pem"\nprotocol = "4"\n')
    problems = dict(e.value.problems)
    assert "mqtt.protocol" in problems
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        parse_config(example + '\n[mqtt]\nhost = "b"\ncert_file = "/x.pem"\n')
    with pytest.raises(ConfigError, match="password_file needs a username"):
        parse_config(example + '\n[mqtt]\nhost = "b"\npassword_file = "/p"\n')
