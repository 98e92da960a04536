"""StatusNotification against a real central system (hil/csms.py) on loopback: the
diagnosis' fault codes (errorCode, info, vendorId, vendorErrorCode; MREC codes with vendorId
https://chargex.inl.gov) from a fault injected on the simulated station, back to NoError
when it clears; a new report when only info or vendorErrorCode changes; and
MinimumStatusDuration (a status that does not hold that long is never sent)."""

from __future__ import annotations

import pytest
from conftest import station_config
from ocpp.v16 import call
from ocpp_helpers import CP, csms_running, ocpp_config, ocpp_rig, ocpp_service

from agent.diagnosis.codes import MREC_VENDOR_ID
from agent.events import FaultCleared, FaultCodes, FaultRaised
from hil.csms import TestCsms


@pytest.fixture
async def csms():
    async with csms_running() as c:
        yield c


def statuses(csms: TestCsms, connector: int) -> list[dict]:
    """The StatusNotification payloads of one connector, in arrival order."""
    return [
        r.payload
        for r in csms.received.get(CP, [])
        if r.action == "StatusNotification" and r.payload["connectorId"] == connector
    ]


async def test_injected_evse_fault_is_reported_with_mrec_codes_then_no_error(tmp_path, csms):
    async with ocpp_rig(ocpp_config(tmp_path, csms.url), csms) as rig:
        # The Phoenix controller's vendor code 1: cable rejected (a warning, MREC CX023).
        fault = rig.sim.inject({"kind": "evse_error_code", "connector": 1, "code": 1})
        got = await csms.wait_for("StatusNotification", CP, {"errorCode": "OtherError"})
        p = got.payload
        assert p["status"] == "Available"  # a warning: the connector is not Faulted
        assert p["vendorId"] == MREC_VENDOR_ID == "https://chargex.inl.gov"
        assert p["vendorErrorCode"] == "CX023"
        assert p["info"].startswith("1: cable rejected")
        assert len(p["info"]) <= 50
        rig.sim.clear(fault)
        n = len(statuses(csms, 1))
        cleared = await csms.wait_for(
            "StatusNotification", CP, {"connectorId": 1}, count=n + 1, timeout=20
        )
    assert cleared.payload["errorCode"] == "NoError"
    assert cleared.payload["status"] == "Available"
    assert not {"info", "vendorId", "vendorErrorCode"} & set(cleared.payload)


def station_fault(fault_id: str, severity: str, mrec: str, info: str) -> FaultRaised:
    """A station-level warning (connector 0) as the diagnosis raises it."""
    return FaultRaised(
        fault_id=fault_id,
        rule=fault_id,
        scope="station",
        title={"en": info},
        root_cause={"en": info},
        severity=severity,
        connectors=[],
        devices=[],
        evidence=[],
        confidence=1.0,
        codes=FaultCodes(
            error_code="OtherError",
            vendor_id=MREC_VENDOR_ID,
            vendor_error_code=mrec,
            info=info,
            mrec=mrec,
            component="DataLink",
            variable="Problem",
        ),
        faulted=False,
        driver_message={"en": ""},
        technician_steps={"en": []},
    )


def cleared(f: FaultRaised) -> FaultCleared:
    return FaultCleared(
        fault_id=f.fault_id,
        rule=f.rule,
        scope=f.scope,
        connectors=f.connectors,
        devices=f.devices,
        raised_ts=f.ts,
        reason="resolved",
    )


async def test_a_new_vendor_code_or_info_under_the_same_error_code_is_sent_again(tmp_path):
    async with csms_running() as csms:
        cfg = station_config(
            extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n[ocpp]\nurl = "{csms.url}"\n'
        )
        async with ocpp_service(cfg) as svc:
            await csms.wait_for("StatusNotification", CP, {"connectorId": 0})
            await svc.online.wait()
            bus = svc.ctx.bus
            warn = station_fault("f-warn", "warning", "CX013", "CSMS unreachable")
            worse = station_fault("f-error", "error", "CX016", "uplink modem failed")
            bus.publish(warn)
            await csms.wait_for("StatusNotification", CP, {"vendorErrorCode": "CX013"})
            # Same status (Available), same errorCode (OtherError): only the codes differ.
            bus.publish(worse)
            await csms.wait_for("StatusNotification", CP, {"vendorErrorCode": "CX016"})
            bus.publish(cleared(worse))
            await csms.wait_for("StatusNotification", CP, {"vendorErrorCode": "CX013"}, count=2)
            # Only the info text changes (the same fault raised again with a new text).
            bus.publish(station_fault("f-warn", "warning", "CX013", "CSMS unreachable (TLS)"))
            await csms.wait_for("StatusNotification", CP, {"info": "CSMS unreachable (TLS)"})
            bus.publish(cleared(warn))
            await csms.wait_for("StatusNotification", CP, {"errorCode": "NoError"}, count=2)
    reports = [(p["status"], p["errorCode"], p.get("vendorErrorCode")) for p in statuses(csms, 0)]
    assert reports == [
        ("Available", "NoError", None),
        ("Available", "OtherError", "CX013"),
        ("Available", "OtherError", "CX016"),
        ("Available", "OtherError", "CX013"),
        ("Available", "OtherError", "CX013"),
        ("Available", "NoError", None),
    ]


async def min_duration(csms: TestCsms, seconds: str) -> str:
    conf = await csms.call(CP, call.ChangeConfiguration(key="MinimumStatusDuration", value=seconds))
    return conf.status


async def test_minimum_status_duration_skips_a_status_that_does_not_hold(tmp_path, csms):
    async with ocpp_rig(ocpp_config(tmp_path, csms.url), csms) as rig:
        await csms.wait_for("StatusNotification", CP, {"connectorId": 1})
        assert await min_duration(csms, "4") == "Accepted"
        before = len(statuses(csms, 1))
        # Preparing for well under 4 s, then Available again: nothing worth reporting.
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        rig.sim.unplug(1)
        await rig.status("Available")
        # A session that holds: Preparing is skipped again, Charging is sent once it held.
        await rig.card_charging()
        await csms.wait_for("StatusNotification", CP, {"connectorId": 1, "status": "Charging"})
        assert [p["status"] for p in statuses(csms, 1)[before:]] == ["Charging"]
        # Back to 0: every change is sent at once.
        assert await min_duration(csms, "0") == "Accepted"
        rig.sim.unplug(1)
        await rig.status("Available")
        await csms.wait_for(
            "StatusNotification", CP, {"connectorId": 1, "status": "Available"}, count=2
        )
