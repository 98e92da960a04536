"""OCPP 1.6 Reservation profile and the transaction gaps around it, against a real central
system (hil/csms.py) on loopback with the simulated station and the real agent:
ReserveNow / CancelReservation answers by connector state, reservationId in
StartTransaction, the authorization cache fed by Start/StopTransaction.conf, and a session
already running when OCPP is first enabled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ocpp.v16 import call
from ocpp_helpers import CP, csms_running, ocpp_config, ocpp_rig, tx_messages
from sessions_helpers import CARD, running

from agent.events import utcnow
from agent.ocpp.metervalues import iso
from agent.sessions.engine import CommandRefused
from agent.sessions.model import IdToken, card_token
from hil.csms import TestCsms
from hil.station import SimStation


@pytest.fixture
async def csms():
    async with csms_running() as c:
        yield c


def in_minutes(n: float) -> str:
    """An OCPP expiryDate `n` minutes from now."""
    return (utcnow() + timedelta(minutes=n)).isoformat().replace("+00:00", "Z")


async def reserve(csms: TestCsms, connector: int, rid: int, tag: str = CARD, minutes=5) -> str:
    req = call.ReserveNow(
        connector_id=connector, expiry_date=in_minutes(minutes), id_tag=tag, reservation_id=rid
    )
    return (await csms.call(CP, req)).status


async def cancel(csms: TestCsms, rid: int) -> str:
    return (await csms.call(CP, call.CancelReservation(reservation_id=rid))).status


async def test_reserve_now_answers_by_connector_state_and_start_carries_the_id(tmp_path, csms):
    async with ocpp_rig(ocpp_config(tmp_path, csms.url), csms) as rig:
        conf = await csms.call(
            CP,
            call.GetConfiguration(
                key=["SupportedFeatureProfiles", "ReserveConnectorZeroSupported"]
            ),
        )
        values = {k["key"]: k["value"] for k in conf.configuration_key}
        assert "Reservation" in values["SupportedFeatureProfiles"].split(",")
        assert values["ReserveConnectorZeroSupported"] == "false"

        assert await reserve(csms, 0, 1) == "Rejected"  # connector 0 not supported
        assert await reserve(csms, 9, 1) == "Rejected"  # no such connector
        assert await reserve(csms, 1, 1, minutes=-1) == "Rejected"  # expiry in the past
        assert rig.conn.status.value == "Available"

        assert await reserve(csms, 1, 11) == "Accepted"
        await csms.wait_for("StatusNotification", CP, {"connectorId": 1, "status": "Reserved"})
        assert await reserve(csms, 1, 11, minutes=10) == "Accepted"  # same id: replaced
        assert await reserve(csms, 1, 12, tag="OTHER") == "Occupied"  # held by 11
        assert rig.engine.status(1)["reservation"]["id"] == 11

        rig.sim.plug_in(1)
        await rig.until(lambda: rig.conn.cp == "B", 5, "plugged in")
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await rig.status("Charging")
        assert rig.conn.reservation is None
        assert await cancel(csms, 11) == "Rejected"  # used by the session
        assert await reserve(csms, 1, 13) == "Occupied"  # a session runs
        start = await csms.wait_for("StartTransaction", CP)
        assert start.payload["reservationId"] == 11 and start.payload["idTag"] == CARD

        rig.sim.unplug(1)
        await rig.record()
        await rig.status("Available")
        # The next session, without a reservation, sends none.
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await reserve(csms, 1, 14) == "Occupied"  # a car is plugged in
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        second = await csms.wait_for("StartTransaction", CP, count=2)
        assert "reservationId" not in second.payload


async def test_cancel_faulted_and_unavailable(tmp_path, csms):
    async with ocpp_rig(ocpp_config(tmp_path, csms.url), csms) as rig:
        assert await cancel(csms, 5) == "Rejected"  # nothing held
        assert await reserve(csms, 1, 5) == "Accepted"
        await rig.status("Reserved")
        assert await cancel(csms, 5) == "Accepted"
        await rig.status("Available")
        await csms.wait_for("StatusNotification", CP, {"connectorId": 1, "status": "Available"},
                            count=2)  # fmt: skip
        assert await reserve(csms, 1, 6, tag="OTHER") == "Accepted"
        with pytest.raises(CommandRefused, match="reserved for another token"):
            await rig.engine.authorize(1, card_token(CARD))

        await cancel(csms, 6)
        await rig.engine.fault(1, "test-fault", True, "simulated fault")
        await rig.status("Faulted")
        assert await reserve(csms, 1, 7) == "Faulted"
        await rig.engine.fault(1, "test-fault", False)
        await rig.status("Available")
        await rig.engine.set_available(1, False)
        assert await reserve(csms, 1, 8) == "Unavailable"
        assert rig.engine.status(1)["reservation"] is None


def cached(rig, tag: str) -> str | None:
    with rig.store() as st, st.reading() as c:
        row = c.execute("SELECT status FROM auth_cache WHERE id_token = ?", (tag,)).fetchone()
    return None if row is None else row[0]


async def test_start_and_stop_conf_update_the_authorization_cache(tmp_path, csms):
    tag = "CACHE-0001"  # not in the local list; a CLI start sends no Authorize.req
    async with ocpp_rig(ocpp_config(tmp_path, csms.url), csms) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        csms.auth_status[tag] = "Accepted"
        assert await rig.engine.cli_start(1, IdToken(tag)) == "started"
        await csms.wait_for("StartTransaction", CP)
        await rig.until(lambda: cached(rig, tag) == "Accepted", 5, "cache from Start.conf")
        csms.auth_status[tag] = "Blocked"
        await rig.engine.stop(1, by="cli")
        await csms.wait_for("StopTransaction", CP)
        await rig.until(lambda: cached(rig, tag) == "Blocked", 5, "cache from Stop.conf")
        assert "Authorize" not in csms.actions(CP)

        # AuthorizationCacheEnabled = false: the answers are not kept.
        conf = await csms.call(
            CP, call.ChangeConfiguration(key="AuthorizationCacheEnabled", value="false")
        )
        assert conf.status == "Accepted"
        rig.sim.unplug(1)
        await rig.status("Available")
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        csms.auth_status[tag] = "Accepted"
        assert await rig.engine.cli_start(1, IdToken(tag)) == "started"
        await rig.engine.stop(1, by="cli")
        # The outbox sends one message at a time, each after the previous answer was
        # handled: once the stop arrived, the start's Accepted was handled (and not cached).
        await csms.wait_for("StopTransaction", CP, count=2)
        assert cached(rig, tag) == "Blocked"


async def test_a_session_running_when_ocpp_is_enabled_starts_its_transaction_now(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url)
    plain = cfg.model_copy(update={"ocpp": None})  # the same station before OCPP was enabled
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        async with running(plain, sim=sim) as rig:
            # An old, closed session: history the central system must never be sent.
            await rig.card_charging()
            rig.sim.unplug(1)
            await rig.record()
            await rig.card_charging()
            row = rig.conn.session.row
        # Restarted with OCPP while the car still charges: the session is resumed.
        async with ocpp_rig(cfg, csms, sim=sim) as rig:
            start = await csms.wait_for("StartTransaction", CP)
            # The start is queued from the stored session when OCPP attaches; the connector's
            # recovery may resume it a moment later.
            await rig.until(lambda: rig.conn.session is not None, 10, "the session resumed")
            assert rig.conn.session.id == row.id
            assert start.payload["idTag"] == CARD and start.payload["meterStart"] == row.start_wh
            assert start.payload["timestamp"] == iso(row.started_ts)
            rig.sim.unplug(1)
            await rig.record()
            stop = await csms.wait_for("StopTransaction", CP)
            outbox = rig.agent.ocpp.ctx.parts["outbox"]
            await rig.until(lambda: outbox.backlog()["pending"] == 0, 5, "outbox drained")
    finally:
        await sim.stop()
    msgs = tx_messages(csms)
    assert [m.action for m in msgs if m.action != "MeterValues"] == [
        "StartTransaction",
        "StopTransaction",
    ]
    assert stop.payload["transactionId"] == 1  # the CSMS's id for the adopted session
