"""The local API's limits against a real agent process: a local user opening 1,200
connections cannot take the agent's file descriptors (root's commands and the OCPP reconnect
keep working, the log stays short), an agent out of descriptors backs off instead of logging
a traceback per attempt, idle connections are closed, and bad lines get specific errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import time
import traceback
from pathlib import Path

import pytest
from sessions_helpers import CARD, billed_config, running
from structlog.testing import capture_logs
from test_api import IS_ROOT, NOBODY, raw

from agent.api.client import call
from agent.api.config import ApiConfig
from hil.csms import TestCsms
from hil.procs import EVEDGE, sim_ready, start_agent, start_sim, until, write_station

pytestmark = pytest.mark.timeout(300)

FLOOD = 1200
PER_UID = 16


class Flood:
    """A forked child running as uid nobody that opens `n` connections to the socket and
    holds them until `release()` (a fork: nobody cannot reach the venv's Python)."""

    def __init__(self, sock: Path, n: int):
        ready_r, ready_w = os.pipe()
        self._hold_r, self._hold_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            try:
                os.close(ready_r)
                os.close(self._hold_w)
                resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                held = [_connect(sock) for _ in range(n)]
                os.write(ready_w, b"ready")
                os.read(self._hold_r, 1)  # until the parent closes its end
                del held
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(self._hold_r)
        self._ready_r = ready_r

    async def ready(self) -> None:
        """Wait until every connection is made (accepted, or waiting in the backlog)."""
        got = await asyncio.wait_for(asyncio.to_thread(os.read, self._ready_r, 5), 120)
        assert got == b"ready", "the flood child failed"

    def release(self) -> None:
        """Close every connection (the child exits) and reap it."""
        os.close(self._hold_w)
        os.close(self._ready_r)
        os.waitpid(self.pid, 0)


def _connect(sock: Path) -> socket.socket:
    """A blocking connect; a full backlog (EAGAIN) is waited out, as a persistent client would."""
    deadline = time.monotonic() + 60
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(sock))
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lines_since(log: Path, offset: int) -> list[str]:
    return log.read_bytes()[offset:].decode(errors="replace").splitlines()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the flood as another uid")
async def test_a_flood_from_one_user_leaves_the_agent_serving(tmp_path, sockdir):
    sock = sockdir / "api.sock"
    csms = TestCsms()
    await csms.start()
    st = write_station(
        tmp_path,
        extra=f"""[ocpp]
url = "ws://127.0.0.1:{csms.port}"
reconnect_min_s = 0.2
reconnect_max_s = 0.5
[api]
socket = "{sock}"
mode = "0666"
max_connections_per_uid = {PER_UID}
""",
    )
    log = tmp_path / "agent.log"
    with start_sim(st.path, tmp_path / "sim.log") as sim:
        await sim_ready(st.control, proc=sim)
        agent = start_agent(st.path, log)
        flood: Flood | None = None
        try:
            await until(lambda: csms.connected("TEST"), 30, "OCPP connected", proc=agent)
            await until(sock.exists, 30, "the API socket", proc=agent)
            status = await asyncio.to_thread(call, sock, "status", 10.0)
            baseline = fds(agent.pid)
            offset = log.stat().st_size

            # Phase 1: nobody opens 1,200 connections; the agent holds 16 of them.
            flood = Flood(sock, FLOOD)
            await flood.ready()

            def api_state() -> dict:
                return call(sock, "status", 10.0)["api"]

            await until(
                lambda: api_state()["refused_connections"] == FLOOD - PER_UID,
                60,
                "every connection over the limit refused",
                proc=agent,
            )
            assert fds(agent.pid) <= baseline + PER_UID + 8
            status = await asyncio.to_thread(call, sock, "status", 10.0)  # root is served
            assert status["station"] == "TEST" and status["api"]["connections"] == PER_UID + 1
            cli = await asyncio.to_thread(
                subprocess.run, [EVEDGE, "status", "--config", str(st.path)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            assert f"refused connections {FLOOD - PER_UID}" in cli.stdout, cli.stdout
            await csms.disconnect("TEST")  # the OCPP reconnect needs a descriptor too
            await until(lambda: csms.connections.get("TEST") == 2, 30, "OCPP reconnected")
            flood_lines = lines_since(log, offset)
            refused_lines = [ln for ln in flood_lines if "api.connection_refused" in ln]
            assert len(refused_lines) == 1, refused_lines  # one line a minute, not 1,184
            assert len(flood_lines) < 200, flood_lines[-20:]
            flood.release()
            flood = None
            await until(lambda: api_state()["connections"] == 1, 30, "the flood's connections gone")

            # Phase 2: the agent itself runs out of descriptors: accept() backs off, logs
            # once, and serves again when descriptors are free.
            limit = fds(agent.pid) + 4
            soft, hard = resource.prlimit(agent.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (limit, hard))
            offset = log.stat().st_size
            flood = Flood(sock, 64)
            await flood.ready()
            await until(
                lambda: "api.accept_failed" in log.read_bytes()[offset:].decode(errors="replace"),
                60,
                "accept() out of descriptors",
                proc=agent,
            )
            flood.release()
            flood = None
            resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (soft, hard))
            status = await asyncio.to_thread(call, sock, "status", 30.0)
            assert status["api"]["accept_failures"] >= 1
            emfile_lines = lines_since(log, offset)
            assert sum("api.accept_failed" in ln for ln in emfile_lines) <= 2
            assert sum("Traceback" in ln for ln in emfile_lines) == 0
            assert len(emfile_lines) < 200, emfile_lines[-20:]
            assert agent.poll() is None
        finally:
            if flood is not None:
                flood.release()
            code = await agent.stop_async()
            await csms.stop()
    assert code == 0, agent.log_tail()


async def test_idle_connections_are_closed_and_bad_lines_answered(tmp_path, sockdir):
    sock = sockdir / "api.sock"
    cfg = billed_config(tmp_path).model_copy(
        update={"api": ApiConfig(socket=sock, mode=0o666, idle_timeout_s=0.5)}
    )
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        server = rig.agent.api
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the agent
        writer.close()
        assert server.state()["idle_closed"] == 1
        deep = b'{"op": "status", "args": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}\n"
        answers = await raw(
            sock,
            deep,
            b'{"op": "start", "args": {"connector": true, "id_token": "%s"}}\n' % CARD.encode(),
            b'{"op": "limit", "args": {"connector": 1, "amps": true}}\n',
            b'{"op": "diagnose", "args": {"reads": 2.0}}\n',
            b'{"op": "status"}\n',
        )
        assert [a["ok"] for a in answers] == [False] * 4 + [True]
        assert [a["error"]["code"] for a in answers[:4]] == ["bad_request"] * 4
        assert "deeper than 64" in answers[0]["error"]["message"]
        assert answers[1]["error"]["message"].startswith("start: connector:")
        assert rig.conn.session is None

        async def broken(*_a, **_k):
            raise ZeroDivisionError("a bug")

        healthy = rig.agent.ops.active_faults
        rig.agent.ops.active_faults = broken  # fault injection: the operation has a bug
        with capture_logs() as logs:
            got = await raw(sock, *[b'{"op": "faults"}\n'] * 4)
        rig.agent.ops.active_faults = healthy
        assert [a["error"]["code"] for a in got] == ["internal"] * 4
        assert (await raw(sock, b'{"op": "faults"}\n'))[0]["ok"]
        state = server.state()
        assert state["internal_errors"] == 4
        assert state["last_internal_error"] == "ZeroDivisionError: a bug"
        assert [e["event"] for e in logs if e["event"] == "api.internal_error"] == [
            "api.internal_error"
        ]
        json.dumps(state)  # goes into `evedge status` as it is
