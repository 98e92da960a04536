"""The local API on a real Unix socket: read and control operations against an agent on the
simulated station, permission checks with a real unprivileged peer, malformed requests,
stale and foreign socket files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest
from sessions_helpers import CARD, billed_config, running

from agent.api.client import ApiError, Unreachable, call
from agent.api.config import ApiConfig
from agent.api.server import ApiServer, ApiStartError
from agent.config import StationConfig

NOBODY = 65534
IS_ROOT = os.geteuid() == 0


def with_api(cfg: StationConfig, sock: Path, mode: int = 0o666) -> StationConfig:
    return cfg.model_copy(update={"api": ApiConfig(socket=sock, mode=mode)})


async def api(sock: Path, op: str, **args):
    """The blocking client in a thread (the server runs on this loop)."""
    return await asyncio.to_thread(call, sock, op, 10.0, **args)


def as_nobody(sock: Path, op: str, **args) -> dict:
    """Call the API from a forked child running as uid/gid nobody with no extra groups
    (a fork, not a new interpreter: nobody cannot reach the venv's Python under /root)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, make one call, report, exit
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out = {"ok": True, "result": call(sock, op, 10.0, **args)}
            except ApiError as e:
                out = {"ok": False, "type": type(e).__name__, "code": e.code, "message": e.message}
            os.write(wfd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    return json.loads(data)


async def raw(sock: Path, *lines: bytes) -> list[dict]:
    """Send raw lines on one connection, return the answers in order."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    answers = []
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(json.loads(await reader.readline()))
    finally:
        writer.close()
    return answers


async def test_read_and_control_operations(tmp_path, sockdir):
    sock = sockdir / "run" / "api.sock"  # the directory does not exist yet
    cfg = with_api(billed_config(tmp_path), sock)
    async with running(cfg) as rig:
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o666
        await rig.until(lambda: rig.conn.cp is not None, what="first EVSE reading")
        status = await api(sock, "status")
        assert status["station"] == "TEST" and status["source"] == "service"
        assert [c["connector"] for c in status["connectors"]] == [1]
        assert status["connectors"][0]["status"] == "Available"
        assert {d["device"] for d in status["devices"]} == {"meter1", "evse1"}
        assert status["faults"] == [] and status["backlog"] == {"charge_records": 0}
        await rig.until(lambda: len(rig.agent.store.latest("evse1")) > 0, what="stored readings")
        readings = await api(sock, "readings", device="evse1")
        assert {r["device"] for r in readings["readings"]} == {"evse1"}
        assert "cp_state" in {r["quantity"] for r in readings["readings"]}
        assert (await api(sock, "faults"))["faults"] == []

        rig.sim.plug_in(1)
        await rig.status("Preparing")
        started = await api(sock, "start", connector=1, id_token=CARD)
        assert started["result"] == "started" and started["state"]["session_id"]
        await rig.status("Charging")
        with pytest.raises(ApiError) as refused:
            await api(sock, "start", connector=1)
        assert refused.value.code == "refused"
        stopped = await api(sock, "stop", connector=1)
        assert stopped["result"] == "stopped"
        await rig.record()
        report = await api(sock, "report", period="day")
        assert sum(r["sessions"] for r in report["rows"]) == 1

        with pytest.raises(ApiError) as nf:
            await api(sock, "stop", connector=5)
        assert nf.value.code == "not_found" and "have: 1" in nf.value.message
        listed = await api(
            sock,
            "update_local_list",
            entries=[{"id_token": "NEW-1"}, {"id_token": CARD, "status": "Blocked"}],
            version=7,
        )
        assert listed == {"version": 7, "entries": 2, "full": False}
        assert rig.engine.authorizer.list_version() == 7
    assert not sock.exists()  # removed at stop


async def test_control_needs_the_group_but_reads_do_not(tmp_path, sockdir):
    if not IS_ROOT:
        pytest.skip("needs root to run a peer as nobody (the service user may always control)")
    sock = sockdir / "api.sock"
    cfg = with_api(billed_config(tmp_path), sock)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        read = await asyncio.to_thread(as_nobody, sock, "status")
        assert read["ok"] and read["result"]["station"] == "TEST"
        ctl = await asyncio.to_thread(as_nobody, sock, "start", connector=1)
        assert not ctl["ok"] and ctl["type"] == "Denied" and ctl["code"] == "forbidden"
        assert "group 'evedge'" in ctl["message"] and f"uid {NOBODY}" in ctl["message"]
        assert rig.conn.session is None  # nothing changed
        assert rig.conn.status.value == "Preparing"


async def test_socket_mode_keeps_strangers_out(tmp_path, sockdir):
    if not IS_ROOT:
        pytest.skip("needs root to run a peer as nobody")
    sock = sockdir / "api.sock"
    cfg = with_api(billed_config(tmp_path), sock, mode=0o660)
    async with running(cfg):
        assert (sock.stat().st_mode & 0o777) == 0o660
        got = await asyncio.to_thread(as_nobody, sock, "status")
        assert not got["ok"] and got["type"] == "Denied"
        assert "no permission" in got["message"]


async def test_malformed_requests_get_clear_errors_and_change_nothing(tmp_path, sockdir):
    sock = sockdir / "api.sock"
    cfg = with_api(billed_config(tmp_path), sock)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        answers = await raw(
            sock,
            b"this is not json\n",
            b'{"op": "explode"}\n',
            b'{"op": "start", "args": {"connector": "one"}}\n',
            b'{"op": "start", "args": {"connector": 1, "power": 9}}\n',
            b'{"op": "limit", "args": {"connector": 1, "amps": -3}}\n',
            b'{"op": "set_tariff", "args": {"document": {"id": "X"}}}\n',
            b'{"op": "status"}\n',  # the connection still works after all that
        )
        for a in answers[:-1]:
            assert a["ok"] is False, a
        codes = [a["error"]["code"] for a in answers[:-1]]
        assert codes == ["bad_request"] * 6
        msgs = [a["error"]["message"] for a in answers[:-1]]
        assert "not a request" in msgs[0]
        assert "unknown operation 'explode'" in msgs[1] and "status" in msgs[1]
        assert msgs[2].startswith("start: connector:")
        assert "power" in msgs[3]
        assert "amps" in msgs[4]
        assert msgs[5].startswith("tariff:")
        assert answers[-1]["ok"] is True
        assert rig.conn.session is None and rig.conn.status.value == "Preparing"
        too_long = b'{"op": "status", "args": {"x": "' + b"a" * (2 << 20) + b'"}}\n'
        (big,) = await raw(sock, too_long)
        assert big["error"] == {"code": "bad_request", "message": "request line too long"}


async def test_stale_socket_is_replaced_but_foreign_files_and_live_agents_are_not(
    tmp_path, sockdir
):
    sock = sockdir / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # a socket file nobody listens on: what a crash leaves
    stale.close()
    cfg = with_api(billed_config(tmp_path), sock)
    async with running(cfg):
        assert (await api(sock, "status"))["station"] == "TEST"
        second = ApiServer(cfg.api, ops=None)  # type: ignore[arg-type]
        with pytest.raises(ApiStartError, match="another agent is serving"):
            await second.start()
        assert (await api(sock, "status"))["station"] == "TEST"
    with pytest.raises(Unreachable, match="not running"):
        call(sock, "status")
    sock.write_text("not a socket")
    with pytest.raises(ApiStartError, match="not a socket"):
        await ApiServer(cfg.api, ops=None).start()  # type: ignore[arg-type]
    assert sock.read_text() == "not a socket"
