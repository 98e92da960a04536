"""The wall around the OCPP handlers: frames that used to end the connection task (or the
process) get the CALLERROR OCPP 1.6 §4.2.3 names, are counted in the status, and a running
session goes on. The CSMS is a raw WebSocket server (tests/test_ocpp_badinput.py's RawCsms):
it must send what no OCPP library would.
"""

from __future__ import annotations

import json

from ocpp_helpers import CP, csms_running, ocpp_config
from sessions_helpers import running
from structlog.testing import capture_logs
from test_ocpp_badinput import raw_station

from agent.ocpp.config_keys import ConfigKeys
from agent.ocpp.service import OcppService


def set_profile(uid: str, limit: str, **extra: object) -> str:
    """A SetChargingProfile frame with `limit` as raw JSON text."""
    schedule = '{"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,"limit":%s}]}'
    profile = {
        "chargingProfileId": 7,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": "@SCHEDULE@",
        **extra,
    }
    text = json.dumps(
        [2, uid, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile}]
    )
    return text.replace('"@SCHEDULE@"', schedule % limit)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


WALL_FRAMES = [
    # (unique id, frame, expected CALLERROR code or None for a CALLRESULT)
    ("w1", set_profile("w1", "13.33"), "PropertyConstraintViolation"),  # multipleOf 0.1
    ("w2", set_profile("w2", "1.05"), "PropertyConstraintViolation"),
    ("w3", set_profile("w3", "Infinity"), "FormationViolation"),  # not JSON (RFC 8259)
    ("w4", set_profile("w4", "NaN"), "FormationViolation"),
    ("w5", set_profile("w5", "-Infinity"), "FormationViolation"),
    ("w6", set_profile("w6", "1e400"), "FormationViolation"),  # overflows a double
    ("w7", set_profile("w7", "1e308"), "PropertyConstraintViolation"),  # Decimal overflow
    ("w8", set_profile("w8", "8", color="red"), "FormationViolation"),  # unknown field
    (
        "w9",
        '[2,"w9","RemoteStartTransaction",{"idTag":"X","chargingProfile":{"chargingProfileId":1,'
        '"stackLevel":0,"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Relative",'
        '"chargingSchedule":{"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,'
        '"limit":6.0}]},"extra":1}}]',
        "FormationViolation",
    ),
    (
        "w10",
        '[2,"w10","DataTransfer",{"vendorId":"v","data":' + nested(2000) + "}]",
        "FormationViolation",
    ),
    ("w11", nested(3000), "FormationViolation"),  # no id to answer with: "-1"
    ("w12", '[2,"w12","DataTransfer",{"vendorId":"v","data":"' + "[" * 5000 + '"}]', None),
    (
        "w13",
        '[2,"w13","ChangeAvailability",{"connectorId":' + "9" * 5000 + ',"type":"Operative"}]',
        "FormationViolation",
    ),  # more digits than Python converts to an int
    (
        "w14",
        '[2,"w14","GetCompositeSchedule",{"connectorId":1,"duration":' + "9" * 40 + "}]",
        "TypeConstraintViolation",
    ),  # OCPP 1.6 integers are 32-bit
    (
        "w16",
        '[2,"w16","GetCompositeSchedule",{"connectorId":1,"duration":2000000000}]',
        None,
    ),  # Rejected: not a schedule it can report
    (
        "w17",
        '[2,"w17","CancelReservation",{"reservationId":9223372036854775808}]',
        "TypeConstraintViolation",
    ),  # beyond SQLite's integers too
    ("w15", set_profile("w15", "1e20"), None),  # valid JSON and schema: Rejected (> 10 MW)
]


async def test_hostile_frames_get_a_callerror_and_the_session_goes_on(tmp_path):
    async with raw_station(tmp_path) as (raw, rig):
        await rig.card_charging()
        session = rig.conn.session.id
        statuses = {}
        for uid, frame, code in WALL_FRAMES:
            reply = await raw.ask(frame)
            if reply[0] == 3:
                statuses[uid] = reply[2].get("status")
            want_id = "-1" if uid == "w11" else uid
            if code is None:
                assert reply[:2] == [3, want_id], (uid, reply)
            else:
                assert reply[:3] == [4, want_id, code], (uid, reply)
        assert statuses["w16"] == "Rejected" and statuses["w15"] == "Rejected"
        # Same connection, same session, still answering; nothing unexpected was counted.
        reply = await raw.ask('[2,"ok","GetConfiguration",{"key":["HeartbeatInterval"]}]')
        assert reply[:2] == [3, "ok"]
        assert raw.connections == 1
        assert rig.conn.session is not None and rig.conn.session.id == session
        assert rig.agent.ocpp is not None
        state = rig.agent.ocpp.state()
        assert state["connected"] and state["internal_errors"] == 0


async def test_a_failing_handler_is_answered_counted_and_logged_once(tmp_path, monkeypatch):
    """A bug in a handler (injected: the configuration keys raise) gets InternalError for
    every CALL, is counted in the status, and its traceback is logged once, not per frame."""

    def broken(self, keys=None):
        raise KeyError("injected bug")

    async with raw_station(tmp_path) as (raw, rig):
        monkeypatch.setattr(ConfigKeys, "configuration", broken)
        with capture_logs() as logs:
            for i in range(20):
                reply = await raw.ask(f'[2,"b{i}","GetConfiguration",{{}}]')
                assert reply[:3] == [4, f"b{i}", "InternalError"]
        monkeypatch.undo()
        reply = await raw.ask('[2,"ok","GetConfiguration",{"key":["HeartbeatInterval"]}]')
        assert reply[:2] == [3, "ok"]
        state = rig.agent.ocpp.state()
        assert state["internal_errors"] == 20
        assert "KeyError" in state["last_internal_error"]
        walled = [e for e in logs if e["event"] == "ocpp.internal_error"]
        assert len(walled) == 1 and walled[0]["stage"] == "handler"
        assert raw.connections == 1


async def test_a_repeated_bad_frame_is_answered_every_time_and_logged_once(tmp_path):
    async with raw_station(tmp_path) as (raw, _):
        with capture_logs() as logs:
            for i in range(10):
                reply = await raw.ask(f'[2,"r{i}","ClearCache",[]]')
                assert reply[:3] == [4, f"r{i}", "TypeConstraintViolation"]
                reply = await raw.ask(f'[2,"n{i}", NaN]')
                assert reply[:3] == [4, f"n{i}", "FormationViolation"]
    events = [e["event"] for e in logs]
    assert events.count("ocpp.call_refused") == 1 and events.count("ocpp.bad_frame") == 1


async def test_a_failing_ocpp_task_restarts_and_the_session_goes_on(tmp_path, monkeypatch):
    """The OCPP task fails (injected into the connection loop): it is restarted after a
    back-off, reconnects and boots again, the agent keeps running and the session with it
    (the process restart this replaces ended a suspended session as PowerLoss)."""
    real = OcppService._connection
    failures = []

    async def fails_once(self):
        if not failures:
            failures.append(1)
            raise RuntimeError("injected: the connection loop failed")
        return await real(self)

    async with csms_running() as csms:
        cfg = ocpp_config(tmp_path, csms.url)
        async with running(cfg) as rig:
            await csms.wait_for("StatusNotification", CP, where={"connectorId": 1})
            await rig.card_charging()
            await csms.wait_for("StartTransaction", CP)
            session = rig.conn.session.id
            monkeypatch.setattr(OcppService, "_connection", fails_once)
            await csms.disconnect(CP)  # the next connection attempt fails
            await csms.wait_for("BootNotification", CP, count=2, timeout=60)
            assert failures == [1]
            assert not [t.get_name() for t in rig.agent._tasks if t.done()]  # nothing ended
            assert rig.conn.session is not None and rig.conn.session.id == session
            assert rig.conn.status.value == "Charging"
            state = rig.agent.ocpp.state()
            assert state["internal_errors"] == 1
            assert "injected" in state["last_internal_error"]
