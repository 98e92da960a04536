"""Graceful shutdown: SIGTERM in the middle of a session, as `systemctl stop` sends it.

The agent process must say STOPPING=1, exit 0 within the unit's TimeoutStopSec, and leave
the open session persisted; the next start resumes it (the EVSE still charges) and the
session ends with exactly one charge record. Services with an outbox get their flush()
call, within the budget, while everything still runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import structlog
from conftest import free_port, station_config
from test_watchdog import NotifyListener

from agent.config import load_config
from agent.runtime import Agent
from agent.sessions.store import SessionStore
from hil.control import execute, parse_command
from hil.procs import Proc, fast_billing, start_agent, write_station
from hil.station import SimStation

TIMEOUT_STOP_S = 30  # TimeoutStopSec= in systemd/evedge.service


async def wait_for(pred, timeout: float = 20, what: str = ""):
    """Poll `pred()` (in a thread: it reads SQLite) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (value := await asyncio.to_thread(pred)):
            await asyncio.sleep(0.1)
    return value


async def test_sigterm_during_a_session_exits_0_and_the_session_resumes(tmp_path):
    station = write_station(tmp_path, station_id="CHAOS", extra=fast_billing(tmp_path))
    config, db = station.path, station.db
    sim = SimStation(load_config(config))
    await sim.start()
    listener = NotifyListener(tmp_path / "notify.sock")
    log = tmp_path / "agent.log"
    procs: list[Proc] = []
    env = dict(os.environ, NOTIFY_SOCKET=str(listener.path))

    def charging_session():
        with SessionStore(db) as st:
            rows = [r for r in st.active_sessions() if r.status == "Charging" and r.billed_wh]
        return rows[0] if rows else None

    try:
        procs.append(start_agent(config, log, env=env))
        await listener.until("READY", timeout=30)
        execute(sim, parse_command({"cmd": "plug_in", "connector": 1}))
        session = await wait_for(charging_session, what="a charging session with energy")

        procs[0].signal(signal.SIGTERM)
        stopping = await listener.until("STOPPING")
        assert stopping["STATUS"] == "stopping: flushing outboxes, committing the store"
        assert await asyncio.to_thread(procs[0].wait, TIMEOUT_STOP_S) == 0

        # Persisted as it was: still open, nothing billed away, no record yet.
        with SessionStore(db) as st:
            (row,) = st.active_sessions()
            assert row.id == session.id and row.billed_wh >= session.billed_wh
            assert st.record_of(session.id) is None

        # The car charges on meanwhile; the next start resumes the session.
        procs.append(start_agent(config, log, env=env))
        await listener.until("READY", timeout=30)

        def resumed():
            with SessionStore(db) as st:
                return any(kind == "resumed" for _, _, kind, _ in st.events(session.id))

        await wait_for(resumed, what="the session resumed")
        execute(sim, parse_command({"cmd": "unplug", "connector": 1}))

        def record():
            with SessionStore(db) as st:
                return st.record_of(session.id)

        rec = await wait_for(record, what="the session's charge record")
        procs[1].signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[1].wait, TIMEOUT_STOP_S) == 0
    finally:
        for p in procs:
            p.kill9()
        listener.close()
        await sim.stop()

    body = json.loads(rec.body)
    assert any("session resumed" in n for n in body["notes"])
    assert body["energy_wh"] >= session.billed_wh
    with SessionStore(db) as st:
        assert not st.active_sessions()
        assert len(st.records()) == 1
    text = log.read_text()
    assert text.count("agent.stop") == 2
    assert "store.unsaved_on_stop" not in text


class Outbox:
    """A service with an outbox, as the sync services implement the flush contract."""

    def __init__(self, agent: Agent, send_s: float):
        self.agent = agent
        self.send_s = send_s
        self.calls: list[tuple[float, bool]] = []

    async def flush(self, timeout: float) -> None:
        # Flushed while the agent still runs: pollers and the store writer are alive.
        self.calls.append((timeout, all(not t.done() for t in self.agent._tasks)))
        await asyncio.sleep(self.send_s)


async def test_stop_flushes_every_outbox_within_the_budget_while_tasks_run(tmp_path):
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=free_port()),
        extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n',
    )
    agent = Agent(cfg)
    quick = agent.cloud_sync = Outbox(agent, send_s=0)
    stuck = agent.csms_sync = Outbox(agent, send_s=3600)  # a peer that never acknowledges
    await agent.start()
    with structlog.testing.capture_logs() as logs:
        await agent.flush(budget_s=0.5)
        del agent.csms_sync  # stop() would give it the full budget again
        await agent.stop()
    assert stuck.calls == [(0.5, True)]
    assert quick.calls == [(0.5, True), (10.0, True)]
    timeouts = [e for e in logs if e["event"] == "agent.flush_timeout"]
    assert [e["service"] for e in timeouts] == ["csms_sync"]
    assert [e["event"] for e in logs if e["event"] == "agent.stop"] == ["agent.stop"]


async def test_sigterm_while_the_agent_is_still_starting_is_a_clean_stop(tmp_path):
    """systemd may stop a unit that is still importing, opening its store or recovering:
    the process handles SIGTERM from its first moments (long before READY) and such a stop
    exits 0 instead of killing it mid-way."""
    station = write_station(tmp_path, station_id="EARLY", extra=fast_billing(tmp_path))
    listener = NotifyListener(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(listener.path))
    agent = start_agent(station.path, tmp_path / "agent.log", env=env)
    try:
        async with asyncio.timeout(30):
            while not agent.handles(signal.SIGTERM) and agent.poll() is None:
                await asyncio.sleep(0.002)
        before_ready = listener.drain()
        agent.signal(signal.SIGTERM)
        code = await asyncio.to_thread(agent.wait, TIMEOUT_STOP_S)
    finally:
        agent.stop()
        listener.close()
    assert not any("READY" in m for m in before_ready), "SIGTERM was only handled after READY"
    assert code == 0, agent.log_tail()
