"""The OCPP connection's life against a real central system (hil/csms.py) on loopback:
ChangeAvailability of the whole charge point (connector 0), a hard reset in the middle of
a session, reconnect backoff with jitter, and the WebSocket ping timeout."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import structlog
from conftest import station_config
from ocpp.v16 import call
from ocpp_helpers import CP, csms_running, ocpp_config, ocpp_rig, ocpp_service
from sessions_helpers import CARD, body

from agent.ocpp.service import EXIT_HARD_RESET, HardReset
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from hil.csms import TestCsms
from hil.station import SimStation


@pytest.fixture
async def csms():
    async with csms_running() as c:
        yield c


async def notified(csms: TestCsms, connector: int, status: str, count: int = 1) -> None:
    """Wait for the `count`-th StatusNotification of `connector` with `status`."""
    where = {"connectorId": connector, "status": status}
    await csms.wait_for("StatusNotification", CP, where, count=count)


async def availability(csms: TestCsms, connector: int, kind: str) -> str:
    conf = await csms.call(CP, call.ChangeAvailability(connector_id=connector, type=kind))
    return conf.status


async def test_change_availability_of_the_whole_charge_point(tmp_path, csms):
    async with ocpp_rig(ocpp_config(tmp_path, csms.url), csms) as rig:
        await csms.wait_for("StatusNotification", CP, {"connectorId": 1})
        # Idle: every connector and the charge point itself become Unavailable at once.
        assert await availability(csms, 0, "Inoperative") == "Accepted"
        for cid in (0, 1):
            await notified(csms, cid, "Unavailable")
        rig.sim.plug_in(1)
        await rig.status("Unavailable")
        with pytest.raises(CommandRefused):
            await rig.engine.authorize(1, card_token(CARD))
        rig.sim.unplug(1)
        assert await availability(csms, 0, "Operative") == "Accepted"
        for cid in (0, 1):
            await notified(csms, cid, "Available", count=2)

        # While a session runs: Scheduled, the session goes on, then the station goes down.
        await rig.card_charging()
        assert await availability(csms, 0, "Inoperative") == "Scheduled"
        assert rig.conn.session is not None and rig.conn.status.value == "Charging"
        rig.sim.unplug(1)
        rec = await rig.record()
        for cid in (0, 1):
            await notified(csms, cid, "Unavailable", count=2)
    assert body(rec)["stop"]["reason"] == "EVDisconnected"
    zero = [
        r.payload["status"]
        for r in csms.received[CP]
        if r.action == "StatusNotification" and r.payload["connectorId"] == 0
    ]
    # Connector 0 never went Unavailable while the session was still charging.
    assert zero == ["Available", "Unavailable", "Available", "Unavailable"]


async def test_hard_reset_during_a_session(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url)
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        async with ocpp_rig(cfg, csms, sim=sim) as rig:
            await rig.card_charging()
            await csms.wait_for("StartTransaction", CP)
            assert (await csms.call(CP, call.Reset(type="Hard"))).status == "Accepted"
            rec = await rig.record()
            # The agent ends with the exit code systemd restarts it on (`evedge run` exits 75).
            with pytest.raises(HardReset) as exc:
                await asyncio.wait_for(rig.agent.wait(), 15)
            assert exc.value.exit_code == EXIT_HARD_RESET == 75
        # The restarted agent: boots again and delivers whatever the reset left queued.
        async with ocpp_rig(cfg, csms, sim=sim):
            stop = await csms.wait_for("StopTransaction", CP)
            await csms.wait_for("BootNotification", CP, count=2)
    finally:
        await sim.stop()
    assert body(rec)["stop"]["reason"] == "HardReset"
    assert stop.payload["reason"] == "HardReset"
    stops = {r.unique_id for r in csms.received[CP] if r.action == "StopTransaction"}
    assert len(stops) == 1


async def test_reconnect_backoff_grows_with_jitter(tmp_path):
    """The CSMS host accepts TCP but no WebSocket (a CSMS that is down behind its address):
    the agent's attempts arrive with growing gaps, each delay drawn with jitter."""
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrivals.append(loop.time())
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = station_config(
        extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n[ocpp]\n'
        f'url = "ws://127.0.0.1:{port}"\nreconnect_min_s = 0.2\nreconnect_max_s = 3.2\n'
    )
    try:
        with structlog.testing.capture_logs() as logs:
            async with ocpp_service(cfg):
                while len(arrivals) < 6:
                    await asyncio.sleep(0.05)
    finally:
        server.close()
        await server.wait_closed()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert gaps[-1] > 2 * gaps[0], gaps
    assert sum(gaps[-2:]) > sum(gaps[:2]), gaps
    delays = [e["seconds"] for e in logs if e["event"] == "ocpp.reconnect_in"][:5]
    ceilings = [min(0.2 * 2**i, 3.2) for i in range(5)]
    # Each delay is drawn from [ceiling / 2, ceiling]: growing, and not a fixed schedule.
    assert all(c / 2 - 0.01 <= d <= c + 0.01 for d, c in zip(delays, ceilings, strict=True))
    assert delays != [round(c, 2) for c in ceilings]


async def test_a_csms_that_stops_answering_pings_is_dropped_and_reconnected(tmp_path, csms):
    cfg = station_config(
        extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n[ocpp]\nurl = "{csms.url}"\n'
        "ping_interval_s = 1\nping_timeout_s = 1\nreconnect_min_s = 0.2\n"
    )
    async with ocpp_service(cfg) as svc:
        await csms.wait_for("BootNotification", CP)
        await svc.online.wait()
        csms.hang(CP, 30)  # TCP stays up; nothing is read, so no pong comes back
        await csms.wait_for("BootNotification", CP, count=2, timeout=20)
        assert csms.connections[CP] == 2
        assert svc.reconnects >= 1
        await asyncio.wait_for(svc.online.wait(), 10)  # booted again on the new connection
