"""Bad input from the CSMS: malformed frames, unknown actions, schema violations, wrong types,
over-long strings. Each gets the right CALLERROR, the agent stays connected and a running
session goes on. A CSMS that never answers makes the call time out.

The CSMS here is a raw WebSocket server (it must send what no OCPP library would), except for
the timeout test, which uses the test CSMS (hil/csms.py) in its silent mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from conftest import station_config
from ocpp.v16 import call
from sessions_helpers import CARD, Rig, billed_config, running
from websockets.asyncio.server import ServerConnection, serve

from agent.bus import EventBus
from agent.ocpp.service import OcppService
from agent.tasks import cancel_and_wait
from hil.csms import TestCsms


class RawCsms:
    """Answers the charge point's calls minimally; hands everything else to the test."""

    def __init__(self) -> None:
        self.ws: ServerConnection | None = None
        self.connections = 0
        self.replies: asyncio.Queue[list] = asyncio.Queue()
        self.calls: list[list] = []
        self.ready = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.connections += 1
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] != 2:
                await self.replies.put(msg)
                continue
            self.calls.append(msg)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            answer: dict = {}
            if msg[2] == "BootNotification":
                answer = {"status": "Accepted", "currentTime": now, "interval": 300}
            elif msg[2] == "Heartbeat":
                answer = {"currentTime": now}
            elif msg[2] == "StatusNotification" and msg[3]["connectorId"] == 1:
                self.ready.set()
            await ws.send(json.dumps([3, msg[1], answer]))

    async def ask(self, frame: str) -> list:
        """Send a raw frame; return the charge point's reply."""
        assert self.ws is not None
        await self.ws.send(frame)
        return await asyncio.wait_for(self.replies.get(), 10)


@contextlib.asynccontextmanager
async def raw_station(tmp_path) -> AsyncIterator[tuple[RawCsms, Rig]]:
    """A raw CSMS and the billed one-connector station connected to it (booted, statuses in)."""
    raw = RawCsms()
    async with serve(raw.handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:
        port = server.sockets[0].getsockname()[1]
        auth = f'local_list = [{{ id = "{CARD}" }}]\n[ocpp]\nurl = "ws://127.0.0.1:{port}"'
        async with running(billed_config(tmp_path, auth=auth)) as rig:
            await asyncio.wait_for(raw.ready.wait(), 10)
            yield raw, rig


BAD_FRAMES = [
    # (frame, expected CALLERROR code, expected unique id in the answer)
    ("this is not json", "FormationViolation", "-1"),
    ('{"not": "a list"}', "ProtocolError", "-1"),
    ('[2, "m1"]', "ProtocolError", "m1"),
    ('[7, "m2", "Heartbeat", {}]', "PropertyConstraintViolation", "m2"),
    ('[2, "m3", "NoSuchAction", {}]', "NotSupported", "m3"),
    (
        '[2, "m4", "UpdateFirmware", {"location": "https://fw.example/x.bin", '
        '"retrieveDate": "2030-01-01T00:00:00Z"}]',
        "NotImplemented",
        "m4",
    ),
    (
        '[2, "m5", "ChangeConfiguration", {"key": "HeartbeatInterval"}]',
        "OccurenceConstraintViolation",
        "m5",
    ),
    (
        '[2, "m6", "ChangeConfiguration", {"key": 5, "value": "1"}]',
        "TypeConstraintViolation",
        "m6",
    ),
    (
        '[2, "m7", "ChangeConfiguration", {"key": "' + "K" * 51 + '", "value": "1"}]',
        "TypeConstraintViolation",
        "m7",
    ),
    (
        '[2, "m8", "ChangeAvailability", {"connectorId": 1, "type": "Sideways"}]',
        "PropertyConstraintViolation",
        "m8",
    ),
    (
        '[2, "m9", "ChangeConfiguration", {"key": "a", "value": "b", "extra": 1}]',
        "FormationViolation",
        "m9",
    ),
    ('[2, "m10", "ClearCache", []]', "TypeConstraintViolation", "m10"),
    ('[2, "m12", "Heartbeat", {}]', "NotImplemented", "m12"),  # a CP -> CSMS action
    ('[2, "m11", 42, {}]', "ProtocolError", "m11"),
]


async def test_bad_frames_get_the_right_callerror_and_the_session_goes_on(tmp_path):
    async with raw_station(tmp_path) as (raw, rig):
        await rig.card_charging()
        session = rig.conn.session.id
        for frame, code, uid in BAD_FRAMES:
            reply = await raw.ask(frame)
            assert reply[:3] == [4, uid, code], frame
            assert isinstance(reply[3], str) and isinstance(reply[4], dict)
        # Still connected, still answering, the session untouched.
        reply = await raw.ask('[2, "ok1", "GetConfiguration", {"key": ["HeartbeatInterval"]}]')
        assert reply[0] == 3 and reply[1] == "ok1"
        assert reply[2]["configurationKey"][0]["value"] == "300"
        assert raw.connections == 1
        assert rig.conn.session is not None and rig.conn.session.id == session
        assert rig.conn.status.value == "Charging"
        assert rig.agent.ocpp is not None and rig.agent.ocpp.state()["connected"]


async def test_a_csms_that_never_answers_makes_the_call_time_out(tmp_path):
    csms = TestCsms()
    await csms.start()
    cfg = station_config(
        extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n'
        f'[ocpp]\nurl = "{csms.url}"\ncall_timeout_s = 0.5\n'
    )
    svc = OcppService(cfg, EventBus())
    task = asyncio.create_task(svc.run())
    try:
        await csms.wait_for("StatusNotification", "TEST")
        csms.silent = True
        with pytest.raises(TimeoutError):
            await svc.call(call.Heartbeat())
        assert csms.actions("TEST")[-1] == "Heartbeat"  # it was sent, just never answered
        csms.silent = False
        conf = await svc.call(call.Heartbeat())  # a late answer does not confuse the next
        assert conf.current_time
    finally:
        await cancel_and_wait([task])
        svc.close()
        await csms.stop()
