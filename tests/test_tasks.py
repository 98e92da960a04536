"""agent/tasks.py: `supervise` restarts a failing task with back-off and lets fatal ones out;
the agent's MQTT task under it (the OCPP one: tests/test_ocpp_wall.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from mqtt_helpers import Backend, Broker
from test_mqtt_connection import bare
from test_mqtt_sync import STATION

from agent.mqtt.service import MqttService
from agent.runtime import Agent
from agent.tasks import supervise
from hil.procs import until


class Flaky:
    """Fails `failures` times, then returns; records when each run started."""

    def __init__(self, failures: int, error: type[Exception] = RuntimeError):
        self.failures, self.error = failures, error
        self.starts: list[float] = []

    async def run(self) -> None:
        self.starts.append(asyncio.get_running_loop().time())
        if len(self.starts) <= self.failures:
            raise self.error(f"failure {len(self.starts)}")


async def test_a_failing_task_is_restarted_until_it_returns():
    flaky = Flaky(3)
    caught: list[BaseException] = []
    await asyncio.wait_for(
        supervise("flaky", flaky.run, min_s=0.01, max_s=0.04, on_failure=caught.append), 10
    )
    assert len(flaky.starts) == 4
    assert [str(e) for e in caught] == ["failure 1", "failure 2", "failure 3"]
    # Back-off: each wait is at least half the (doubling, capped) back-off.
    gaps = [b - a for a, b in zip(flaky.starts, flaky.starts[1:], strict=False)]
    assert all(g >= low for g, low in zip(gaps, (0.004, 0.009, 0.019), strict=True))


async def test_a_fatal_exception_ends_supervision():
    class Fatal(Exception):
        pass

    flaky = Flaky(5, error=Fatal)
    with pytest.raises(Fatal):
        await asyncio.wait_for(supervise("fatal", flaky.run, fatal=(Fatal,), min_s=0.01), 10)
    assert len(flaky.starts) == 1


async def test_a_failing_mqtt_task_restarts_without_a_second_connection(tmp_path, monkeypatch):
    """MQTT's run() fails (injected into one of its loops): the supervisor starts it again,
    the threads of the first run go on (one publisher, one network thread), commands are
    answered and the failure is counted in the MQTT status."""
    real = MqttService._ticket_loop
    failed = []

    async def fails_once(self):
        if not failed:
            failed.append(1)
            raise RuntimeError("injected: an MQTT loop failed")
        await real(self)

    monkeypatch.setattr(MqttService, "_ticket_loop", fails_once)
    broker = Broker(tmp_path / "broker")
    broker.start()
    backend = Backend(broker, protocol="3.1.1").connect()  # replies on cmd/<name>/reply
    agent = Agent(bare(tmp_path, port=broker.port, tls=False, protocol="3.1.1"))
    await agent.start()
    try:
        errors = lambda: agent.mqtt.state()["commands"]["internal_errors"]  # noqa: E731
        await until(lambda: errors() == 1, 10, "the failure counted")
        await until(lambda: agent.mqtt.connection.connected, 10, "connected")
        cid, _ = await asyncio.to_thread(backend.command, STATION, "get_active_faults")
        await asyncio.to_thread(
            backend.wait, lambda ms: backend.on("cmd/get_active_faults/reply"), 10, "the reply"
        )
        assert backend.on("cmd/get_active_faults/reply")[0].json()["command_id"] == cid
        names = [t.name for t in threading.enumerate()]
        assert names.count("mqtt-publish") == 1 and names.count("mqtt-net") == 1
        assert not [t.get_name() for t in agent._tasks if t.done()]
        assert "injected" in agent.mqtt.state()["commands"]["last_internal_error"]
    finally:
        await agent.stop()
        backend.close()
        broker.stop()
