"""Smart charging against a real CSMS on loopback (hil/csms.py) and the simulated station.

The limit a profile sets is read back from the simulated EVSE's offered current.
"""

from __future__ import annotations

from datetime import timedelta

from ocpp.v16 import call
from sessions_helpers import CARD, running
from test_ocpp_core import csms_running, with_ocpp

from agent.events import utcnow
from agent.sessions.model import card_token

MAX_A = 32.0  # the test station's connector rating


def profile(pid: int, purpose: str, limit: float, *, stack: int = 0, unit: str = "A", **kw):
    """A ChargingProfile (camelCase) starting now, one period unless `periods` is given."""
    periods = kw.pop("periods", [(0, limit)])
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            "startSchedule": kw.pop("start", utcnow()).isoformat(),
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": s, "limit": v} for s, v in periods],
        },
        **kw,
    }


async def set_profile(csms, connector: int, prof: dict) -> str:
    res = await csms.call(
        "TEST", call.SetChargingProfile(connector_id=connector, cs_charging_profiles=prof)
    )
    return res.status


async def test_profiles_drive_the_offered_current_and_clear_restores(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        evse = rig.sim.connectors[1].evse

        async def offered(amps: float) -> None:
            await rig.until(lambda: evse.offered_current_a == amps, what=f"{amps} A offered")

        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
        await rig.card_charging()
        await offered(MAX_A)
        start = await csms.wait_for("StartTransaction", "TEST")
        await rig.until(lambda: 1 in rig.agent.ocpp.ctx.parts["smart_charging"].txs)

        assert await set_profile(csms, 1, profile(1, "TxDefaultProfile", 10.0)) == "Accepted"
        await offered(10.0)
        # A TxProfile for this transaction overrides the default.
        tx_id = csms.next_transaction_id - 1
        assert start.payload["connectorId"] == 1
        txp = profile(2, "TxProfile", 8.0, transactionId=tx_id)
        assert await set_profile(csms, 1, txp) == "Accepted"
        await offered(8.0)
        comp = await csms.call("TEST", call.GetCompositeSchedule(connector_id=1, duration=600))
        assert comp.status == "Accepted"
        assert comp.charging_schedule["charging_schedule_period"][0]["limit"] == 8.0
        # Watts: 3 phases × 230 V × 8 A.
        comp_w = await csms.call(
            "TEST",
            call.GetCompositeSchedule(connector_id=1, duration=600, charging_rate_unit="W"),
        )
        assert comp_w.charging_schedule["charging_schedule_period"][0]["limit"] == 5520.0

        # Invalid ones are rejected and change nothing.
        cp_on_1 = profile(3, "ChargePointMaxProfile", 6.0)
        assert await set_profile(csms, 1, cp_on_1) == "Rejected"
        assert await set_profile(csms, 1, profile(4, "TxProfile", 6.0, transactionId=999)) == (
            "Rejected"
        )
        assert evse.offered_current_a == 8.0

        res = await csms.call("TEST", call.ClearChargingProfile(id=2))
        assert res.status == "Accepted"
        await offered(10.0)
        # A station-wide maximum below the default caps it.
        assert await set_profile(csms, 0, profile(5, "ChargePointMaxProfile", 7.0)) == ("Accepted")
        await offered(7.0)
        res = await csms.call("TEST", call.ClearChargingProfile())  # every profile
        assert res.status == "Accepted"
        await offered(MAX_A)
        res = await csms.call("TEST", call.ClearChargingProfile(id=1))
        assert res.status == "Unknown"


async def test_the_limit_follows_the_schedule_periods_in_real_time(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        evse = rig.sim.connectors[1].evse
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
        await rig.card_charging()
        prof = profile(1, "TxDefaultProfile", 0, periods=[(0, 10.0), (2, 16.0)])
        assert await set_profile(csms, 1, prof) == "Accepted"
        await rig.until(lambda: evse.offered_current_a == 10.0, what="first period")
        # No further message: the period boundary alone changes the offer.
        await rig.until(lambda: evse.offered_current_a == 16.0, what="second period")


async def test_a_tx_profile_ends_with_its_transaction(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        smart = rig.agent.ocpp.ctx.parts["smart_charging"]
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
        assert await set_profile(csms, 1, profile(1, "TxProfile", 8.0)) == "Rejected"
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await rig.until(lambda: 1 in smart.txs, what="the transaction seen")
        assert await set_profile(csms, 1, profile(1, "TxProfile", 8.0)) == "Accepted"
        await rig.until(lambda: rig.sim.connectors[1].evse.offered_current_a == 8.0)
        rig.sim.unplug(1)
        await rig.record()
        await rig.until(lambda: not smart.profiles, what="the TxProfile removed")
        with rig.store() as st, st.reading() as c:
            assert c.execute("SELECT count(*) FROM ocpp_charging_profiles").fetchone() == (0,)


async def test_profiles_survive_a_restart(tmp_path):
    async with csms_running() as csms:
        cfg = with_ocpp(tmp_path, csms.url)
        later = utcnow() + timedelta(hours=1)
        prof = profile(7, "ChargePointMaxProfile", 0, periods=[(0, 20.0), (3600, 12.5)])
        prof["chargingSchedule"]["startSchedule"] = later.isoformat()
        async with running(cfg):
            await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})
            assert await set_profile(csms, 0, prof) == "Accepted"
        async with running(cfg):
            await csms.wait_for("BootNotification", "TEST", count=2)
            comp = await csms.call(
                "TEST", call.GetCompositeSchedule(connector_id=0, duration=10800)
            )
            periods = comp.charging_schedule["charging_schedule_period"]
            # The connector's rating until the station maximum starts an hour ahead.
            assert [p["limit"] for p in periods] == [MAX_A, 20.0, 12.5]
            assert 3590 <= periods[1]["start_period"] <= 3600
            assert periods[2]["start_period"] - periods[1]["start_period"] == 3600
            clear = call.ClearChargingProfile(charging_profile_purpose="TxProfile")
            assert (await csms.call("TEST", clear)).status == "Unknown"
            clear = call.ClearChargingProfile(connector_id=0, stack_level=0)
            assert (await csms.call("TEST", clear)).status == "Accepted"
