"""The OCPP 1.6 authorization policy keys against a real central system (hil/csms.py) on
loopback, with the simulated station and the real agent: LocalAuthorizeOffline,
AllowOfflineTxForUnknownId, AuthorizationCacheEnabled, LocalPreAuthorize, ClearCache and
MaxEnergyOnInvalidId. The keys are changed the way a CSMS changes them (ChangeConfiguration);
"offline" is the CSMS stopped, "online" the CSMS started again on the same port."""

from __future__ import annotations

import json

import pytest
from ocpp.v16 import call
from ocpp_helpers import CP, csms_running, ocpp_config, ocpp_rig, until_online
from sessions_helpers import CARD, Rig, body

from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from hil.csms import TestCsms

UNLISTED = "CACHE-0007"  # not in the local list: only the CSMS (or the cache) knows it


@pytest.fixture
async def csms():
    async with csms_running() as c:
        yield c


async def set_key(csms: TestCsms, key: str, value: str) -> None:
    conf = await csms.call(CP, call.ChangeConfiguration(key=key, value=value))
    assert conf.status == "Accepted", f"{key}={value}: {conf.status}"


async def go_offline(rig: Rig, csms: TestCsms) -> None:
    """Stop the CSMS and wait until the agent knows it is offline."""
    await csms.stop()
    await rig.until(lambda: not rig.agent.ocpp.online.is_set(), 10, "OCPP offline")


async def go_online(rig: Rig, csms: TestCsms) -> None:
    """Start the CSMS again and wait until every queued transaction message was delivered
    (their confs update the authorization cache too)."""
    await csms.start()
    await until_online(rig)
    outbox = rig.agent.ocpp.ctx.parts["outbox"]
    await rig.until(lambda: outbox.backlog()["pending"] == 0, 10, "outbox drained")


async def card(rig: Rig, tag: str) -> str:
    """Plug in, present `tag`, and end the session again: how it was authorized
    ("LocalList", "Cache", "Online") or "refused: <why>"."""
    rig.sim.plug_in(1)
    await rig.status("Preparing")
    try:
        assert await rig.engine.authorize(1, card_token(tag)) == "started"
        method = rig.conn.session.row.auth_method
        await rig.engine.stop(1, by="cli")
    except CommandRefused as e:
        method = f"refused: {e}"
    rig.sim.unplug(1)
    await rig.status("Available")
    return method


def authorize_reqs(csms: TestCsms) -> list[str]:
    """The idTags of the Authorize.req the CSMS received, in order."""
    return [r.payload["idTag"] for r in csms.received.get(CP, []) if r.action == "Authorize"]


def cache_rows(rig: Rig) -> dict[str, str]:
    """The agent's authorization cache: idTag -> status."""
    with rig.store() as st, st.reading() as c:
        return dict(c.execute("SELECT id_token, status FROM auth_cache").fetchall())


async def test_local_authorize_offline_with_local_pre_authorize_off(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url, keys={"LocalPreAuthorize": "false"})
    async with ocpp_rig(cfg, csms) as rig:
        await set_key(csms, "LocalAuthorizeOffline", "false")
        await go_offline(rig, csms)
        assert (await card(rig, CARD)).startswith("refused")  # listed, but offline
        await go_online(rig, csms)
        await set_key(csms, "LocalAuthorizeOffline", "true")
        await go_offline(rig, csms)
        assert await card(rig, CARD) == "LocalList"
        await go_online(rig, csms)
        # Online, LocalPreAuthorize off: even a listed card is asked first.
        assert await card(rig, CARD) == "Online"
    assert authorize_reqs(csms) == [CARD]


async def test_local_authorize_offline_false_refuses_offline_with_pre_authorize_on(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url, keys={"LocalAuthorizeOffline": "false"})
    async with ocpp_rig(cfg, csms) as rig:
        await go_offline(rig, csms)
        assert (await card(rig, CARD)).startswith("refused")


async def test_authorization_cache_pre_authorize_clear_cache_and_cache_disabled(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url)
    async with ocpp_rig(cfg, csms) as rig:
        # Asked online once; the answer is cached.
        assert await card(rig, UNLISTED) == "Online"
        assert cache_rows(rig)[UNLISTED] == "Accepted"
        # LocalPreAuthorize (default true): a cached Accepted card starts at once.
        assert await card(rig, UNLISTED) == "Cache"
        assert authorize_reqs(csms) == [UNLISTED]
        # LocalPreAuthorize false: the cache alone does not start it while online.
        await set_key(csms, "LocalPreAuthorize", "false")
        assert await card(rig, UNLISTED) == "Online"
        assert authorize_reqs(csms) == [UNLISTED, UNLISTED]
        # Offline the cache decides (LocalAuthorizeOffline true).
        await go_offline(rig, csms)
        assert await card(rig, UNLISTED) == "Cache"
        await go_online(rig, csms)

        # ClearCache empties the cache: the card is unknown offline now.
        assert cache_rows(rig)  # Start/StopTransaction.conf refreshed it meanwhile
        assert (await csms.call(CP, call.ClearCache())).status == "Accepted"
        assert cache_rows(rig) == {}
        await go_offline(rig, csms)
        assert (await card(rig, UNLISTED)).startswith("refused")
        await go_online(rig, csms)

        # AuthorizationCacheEnabled false: entries are neither used nor updated.
        assert await card(rig, UNLISTED) == "Online"
        await rig.until(lambda: cache_rows(rig).get(UNLISTED) == "Accepted", 5, "cached")
        await set_key(csms, "AuthorizationCacheEnabled", "false")
        await go_offline(rig, csms)
        assert (await card(rig, UNLISTED)).startswith("refused")  # the entry is there, unused
        await go_online(rig, csms)
        csms.auth_status[UNLISTED] = "Blocked"
        assert "Blocked" in await card(rig, UNLISTED)
        assert cache_rows(rig) == {UNLISTED: "Accepted"}  # the Blocked answer was not kept


async def test_offline_unknown_id_then_invalidated_is_capped_at_max_energy(tmp_path, csms):
    tag = "UNKNOWN-0077"
    keys = {"StopTransactionOnInvalidId": "false", "MaxEnergyOnInvalidId": "10"}
    csms.auth_status[tag] = "Invalid"
    async with ocpp_rig(ocpp_config(tmp_path, csms.url, keys=keys), csms) as rig:
        await go_offline(rig, csms)
        # AllowOfflineTxForUnknownId false (the default): an unknown card is refused offline.
        assert "Unknown" in await card(rig, tag)
        await csms.start()
        await until_online(rig)
        await set_key(csms, "AllowOfflineTxForUnknownId", "true")
        await go_offline(rig, csms)
        await rig.card_charging(tag)
        assert rig.conn.session.row.auth_method == "OfflineUnknown"  # not "Cache": unvouched
        assert rig.conn.session.limits.max_energy_wh is None  # no cap while nobody objects
        # Offline the transaction delivers more than MaxEnergyOnInvalidId, then the car
        # pauses: from here on no energy flows.
        await rig.until(lambda: rig.conn.session.tracker.billed_wh > 10, 30, "over 10 Wh")
        rig.sim.ev_suspend(1, True)
        await rig.status("SuspendedEV")
        # Back online: StartTransaction.conf says Invalid. StopTransactionOnInvalidId is
        # false, so the transaction's total energy is capped at MaxEnergyOnInvalidId: it is
        # past that already and stops (a cap counted from the conf would never be reached).
        await csms.start()
        rec = await rig.record(timeout=30)
        stop = await csms.wait_for("StopTransaction", CP)
    start = next(r for r in csms.received[CP] if r.action == "StartTransaction")
    assert start.payload["idTag"] == tag
    assert body(rec)["stop"]["reason"] == "EnergyLimitReached"
    assert stop.payload["reason"] != "DeAuthorized"
    assert rec.energy_wh > 10
    assert body(rec)["auth"]["method"] == "OfflineUnknown"
    begin = json.loads(body(rec)["ocmf"]["begin"].split("|")[1])  # OCMF|payload|signature
    assert (begin["IL"], begin["IF"]) == ("HEARSAY", ["RFID_PLAIN", "OCPP_NONE"])
