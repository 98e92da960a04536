"""TriggerMessage against a real CSMS on loopback: every triggerable message, bad connectors,
an unknown requestedMessage."""

from __future__ import annotations

from ocpp.v16 import call
from sessions_helpers import running
from test_ocpp_core import csms_running, with_ocpp


async def test_every_trigger(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})

        async def trigger(what: str, connector: int | None = None, validate: bool = True) -> str:
            req = call.TriggerMessage(requested_message=what, connector_id=connector)
            return (await csms.call("TEST", req, validate=validate)).status

        def count(action: str, **where) -> int:
            return len(
                [
                    r
                    for r in csms.received["TEST"]
                    if r.action == action and all(r.payload.get(k) == v for k, v in where.items())
                ]
            )

        assert await trigger("BootNotification") == "Accepted"
        await csms.wait_for("BootNotification", "TEST", count=2)
        assert await trigger("Heartbeat") == "Accepted"
        await csms.wait_for("Heartbeat", "TEST")
        n0, n1 = (
            count("StatusNotification", connectorId=0),
            count("StatusNotification", connectorId=1),
        )
        assert await trigger("StatusNotification", 1) == "Accepted"
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1}, count=n1 + 1)
        assert await trigger("StatusNotification") == "Accepted"  # every connector and 0
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 0}, count=n0 + 1)
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1}, count=n1 + 2)
        await rig.until(lambda: rig.conn.energy is not None)
        assert await trigger("MeterValues", 1) == "Accepted"
        got = await csms.wait_for("MeterValues", "TEST", {"connectorId": 1})
        assert got.payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
        assert await trigger("DiagnosticsStatusNotification") == "Accepted"
        got = await csms.wait_for("DiagnosticsStatusNotification", "TEST")
        assert got.payload == {"status": "Idle"}
        assert await trigger("FirmwareStatusNotification") == "Accepted"
        got = await csms.wait_for("FirmwareStatusNotification", "TEST")
        assert got.payload == {"status": "Idle"}

        assert await trigger("StatusNotification", 7) == "Rejected"
        assert await trigger("MeterValues", 0) == "Rejected"  # no transaction on connector 0
        assert await trigger("SignChargePointCertificate", validate=False) == "NotImplemented"
        assert await trigger("Bogus", validate=False) == "NotImplemented"
        # Nothing was sent for the refused ones.
        assert count("StatusNotification", connectorId=7) == 0
        assert count("MeterValues", connectorId=0) == 0
