"""OCPP 1.6 Core against a real central system on loopback (hil/csms.py, the `ocpp` library).

Boot (Pending -> Accepted), heartbeat, StatusNotification on connect and on plug,
configuration keys (persisted across a restart of the service), ChangeAvailability,
Reset, UnlockConnector, DataTransfer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import station_config
from ocpp.v16 import call
from ocpp_helpers import csms_running, ocpp_service
from sessions_helpers import CARD, billed_config, body, running

from agent.bus import EventBus
from agent.ocpp.context import OcppOffline
from agent.ocpp.service import EXIT_HARD_RESET, HardReset, OcppService
from agent.sessions.model import card_token
from agent.tasks import cancel_and_wait
from hil import REFERENCE_EVSE


def plain_config(tmp_path: Path, url: str, ocpp_extra: str = ""):
    """No devices, no sessions: the OCPP connection alone."""
    return station_config(
        extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n[ocpp]\nurl = "{url}"\n{ocpp_extra}'
    )


def with_ocpp(tmp_path: Path, url: str, **kw):
    """The one-connector billed station of the session tests, plus [ocpp]."""
    auth = f'local_list = [{{ id = "{CARD}" }}]\n[ocpp]\nurl = "{url}"\nreconnect_min_s = 0.2'
    return billed_config(tmp_path, auth=auth, **kw)


async def test_boot_pending_sends_nothing_else_then_accepted_with_interval(tmp_path):
    async with csms_running() as csms:
        csms.boot_status, csms.boot_interval = "Pending", 1
        async with ocpp_service(plain_config(tmp_path, csms.url)) as svc:
            await csms.wait_for("BootNotification", "TEST")
            with pytest.raises(OcppOffline, match="not accepted"):
                await svc.call(call.Heartbeat())
            csms.boot_status = "Accepted"
            await csms.wait_for("BootNotification", "TEST", count=2)
            await csms.wait_for("Heartbeat", "TEST")  # the boot's interval (1 s) is in force
            actions = csms.actions("TEST")
            assert actions[:2] == ["BootNotification", "BootNotification"]
            assert actions[2] == "StatusNotification"  # nothing else while Pending
            assert svc.keys.get_int("HeartbeatInterval") == 1
            assert svc.state()["boot_status"] == "Accepted"
            boot = csms.received["TEST"][0].payload
            assert boot["chargePointVendor"] == "evedge"
            assert boot["chargePointSerialNumber"] == "TEST"


async def test_rejected_boot_is_retried_on_the_csms_interval(tmp_path):
    async with csms_running() as csms:
        csms.boot_status, csms.boot_interval = "Rejected", 1
        async with ocpp_service(plain_config(tmp_path, csms.url)):
            await csms.wait_for("BootNotification", "TEST", count=2)
            assert set(csms.actions("TEST")) == {"BootNotification"}


async def test_configuration_keys_change_get_and_survive_a_restart(tmp_path):
    async with csms_running() as csms:
        cfg = plain_config(tmp_path, csms.url, 'keys = { ClockAlignedDataInterval = "900" }\n')
        async with ocpp_service(cfg):
            await csms.wait_for("StatusNotification", "TEST")

            async def change(key: str, value: str) -> str:
                res = await csms.call("TEST", call.ChangeConfiguration(key=key, value=value))
                return res.status

            assert await change("MeterValueSampleInterval", "30") == "Accepted"
            assert await change("ClockAlignedDataInterval", "600") == "Accepted"
            assert await change("NumberOfConnectors", "4") == "Rejected"  # read-only
            assert await change("ResetRetries", "3") == "Rejected"  # read-only: no retries
            assert await change("HeartbeatInterval", "often") == "Rejected"  # not an int
            assert await change("MeterValuesSampledData", "Voltage,Bogus") == "Rejected"
            assert await change("NoSuchKey", "1") == "NotSupported"
            assert await change("WebSocketPingInterval", "10") == "RebootRequired"
            assert await change("SecurityProfile", "0") == "Accepted"  # unchanged
        # A new service on the same store: what the CSMS set wins over the file.
        async with ocpp_service(cfg):
            await csms.wait_for("BootNotification", "TEST", count=2)
            res = await csms.call(
                "TEST",
                call.GetConfiguration(
                    key=["MeterValueSampleInterval", "ClockAlignedDataInterval", "Nope"]
                ),
            )
            values = {k["key"]: k["value"] for k in res.configuration_key}
            assert values == {"MeterValueSampleInterval": "30", "ClockAlignedDataInterval": "600"}
            assert res.unknown_key == ["Nope"]
            every = await csms.call("TEST", call.GetConfiguration())
            readonly = {k["key"]: k["readonly"] for k in every.configuration_key}
            assert readonly["NumberOfConnectors"] is True
            assert readonly["HeartbeatInterval"] is False
            assert len(readonly) > 40


async def test_status_on_connect_on_plug_and_scheduled_availability(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        for cid in (0, 1):
            got = await csms.wait_for("StatusNotification", "TEST", {"connectorId": cid})
            assert got.payload["status"] == "Available"
            assert got.payload["errorCode"] == "NoError"
        rig.sim.plug_in(1)
        await csms.wait_for("StatusNotification", "TEST", {"status": "Preparing"})
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await csms.wait_for("StatusNotification", "TEST", {"status": "Charging"})
        res = await csms.call("TEST", call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert res.status == "Scheduled"  # the session runs on
        assert rig.conn.session is not None
        res = await csms.call("TEST", call.ChangeAvailability(connector_id=7, type="Inoperative"))
        assert res.status == "Rejected"
        res = await csms.call("TEST", call.DataTransfer(vendor_id="com.example", data="x"))
        assert res.status == "UnknownVendorId"
        res = await csms.call("TEST", call.ClearCache())
        assert res.status == "Accepted"
        rig.sim.unplug(1)
        await csms.wait_for("StatusNotification", "TEST", {"status": "Unavailable"})


async def test_soft_reset_stops_the_session_and_boots_again(tmp_path):
    async with csms_running() as csms:
        async with running(with_ocpp(tmp_path, csms.url)) as rig:
            await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
            await rig.card_charging()
            res = await csms.call("TEST", call.Reset(type="Soft"))
            assert res.status == "Accepted"
            rec = await rig.record()
            await csms.wait_for("BootNotification", "TEST", count=2)
            assert csms.connections["TEST"] == 2
            await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1}, count=3)
        assert body(rec)["stop"]["reason"] == "SoftReset"


async def test_unlock_connector_not_supported_leaves_the_session_running(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
        res = await csms.call("TEST", call.UnlockConnector(connector_id=9))
        assert res.status == "NotSupported"
        await rig.card_charging()
        session = rig.conn.session.id
        res = await csms.call("TEST", call.UnlockConnector(connector_id=1))
        # The Phoenix profile has no unlock command: NotSupported, and the session is not
        # stopped for an unlock that cannot happen (OCPP 1.6 §5.17).
        assert res.status == "NotSupported"
        assert rig.conn.session is not None and rig.conn.session.id == session
        assert rig.conn.status.value == "Charging"


async def test_unlock_connector_unlocked_and_unlock_failed_on_the_reference_evse(tmp_path):
    # The simulator's reference controller has a connector_unlock command (sim-only).
    async with csms_running() as csms:
        cfg = with_ocpp(tmp_path, csms.url, evse_profile=REFERENCE_EVSE)
        async with running(cfg) as rig:
            await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
            await rig.card_charging()
            res = await csms.call("TEST", call.UnlockConnector(connector_id=1))
            assert res.status == "Unlocked"
            rec = await rig.record()
            # A jammed lock actuator: the controller refuses the command (exception 04).
            rig.sim.inject({"kind": "lock_failure", "connector": 1})
            res = await csms.call("TEST", call.UnlockConnector(connector_id=1))
            assert res.status == "UnlockFailed"
        assert body(rec)["stop"]["reason"] == "UnlockCommand"


async def test_hard_reset_ends_the_service_with_the_restart_exit_code(tmp_path):
    async with csms_running() as csms:
        svc = OcppService(plain_config(tmp_path, csms.url), EventBus())
        task = asyncio.create_task(svc.run())
        try:
            await csms.wait_for("StatusNotification", "TEST")
            res = await csms.call("TEST", call.Reset(type="Hard"))
            assert res.status == "Accepted"  # answered before the service goes down
            with pytest.raises(HardReset) as exc:
                await asyncio.wait_for(task, 10)
            assert exc.value.exit_code == EXIT_HARD_RESET == 75
        finally:
            if not task.done():
                await cancel_and_wait([task])
            svc.close()
