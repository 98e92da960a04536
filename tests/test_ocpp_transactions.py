"""OCPP 1.6 transactions against a real central system (hil/csms.py) on loopback, with the
simulated station and the real agent: card and remote sessions, meter values with their
contexts, signed meter values, CALLERRORs and exhausted retries."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from ocpp.exceptions import InternalError
from ocpp.v16 import call
from ocpp_helpers import (
    CP,
    contexts,
    csms_running,
    dump,
    energy,
    ocpp_config,
    ocpp_rig,
    signed,
    tx_messages,
)
from pyocmf import OCMF
from pyocmf.exceptions import SpecWarning
from sessions_helpers import CARD

from agent.events import FaultCleared, FaultRaised
from agent.ocpp.metervalues import signed_record_of
from agent.sessions.model import card_token


@pytest.fixture
async def csms():
    async with csms_running() as c:
        yield c


def contexts_of(meter_value: dict) -> list[str]:
    """The contexts of one MeterValue's sampled values."""
    return [sv["context"] for sv in meter_value["sampledValue"]]


async def charge(rig, seconds: float) -> None:
    """Let the simulated car charge for a while (real time)."""
    await asyncio.sleep(seconds)


async def test_card_session_start_begin_values_stop(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url)
    csms.next_transaction_id = 41
    async with ocpp_rig(cfg, csms) as rig:
        outbox = rig.agent.ocpp.ctx.parts["outbox"]
        await rig.card_charging()
        start_wh = rig.conn.session.row.start_wh
        await charge(rig, 1.5)
        rig.sim.unplug(1)
        rec = await rig.record()
        stop = await csms.wait_for("StopTransaction", cp_id=CP)
        await rig.until(lambda: outbox.backlog()["pending"] == 0, 5, "outbox drained")
    msgs = tx_messages(csms)
    assert [m.action for m in msgs] == ["StartTransaction", "MeterValues", "StopTransaction"]
    start, begin, _ = msgs
    assert start.payload["connectorId"] == 1 and start.payload["idTag"] == CARD
    assert start.payload["meterStart"] == start_wh
    assert start.payload["timestamp"].endswith("Z")
    assert begin.payload["transactionId"] == 41 and contexts(begin)[0] == "Transaction.Begin"
    assert energy(begin, "Transaction.Begin") == start_wh
    p = stop.payload
    assert p["transactionId"] == 41 and p["idTag"] == CARD and p["reason"] == "EVDisconnected"
    assert p["meterStop"] == start_wh + rec.energy_wh
    assert energy(stop, "Transaction.Begin") == start_wh
    assert energy(stop, "Transaction.End") == p["meterStop"]
    # Strings everywhere, never a float rounded to one decimal by the library.
    assert all(
        isinstance(sv["value"], str) for m in p["transactionData"] for sv in m["sampledValue"]
    )


async def test_remote_start_and_stop_by_transaction_id(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url)
    csms.next_transaction_id = 7
    async with ocpp_rig(cfg, csms) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        res = await csms.call(CP, call.RemoteStartTransaction(id_tag="REMOTE-1", connector_id=1))
        assert res.status == "Accepted"
        await rig.status("Charging")
        assert rig.conn.session.row.auth_method == "Remote"
        start = await csms.wait_for("StartTransaction", cp_id=CP)
        assert start.payload["idTag"] == "REMOTE-1"
        outbox = rig.agent.ocpp.ctx.parts["outbox"]
        await rig.until(lambda: outbox.transaction_id(rig.conn.session.id) == 7, 5, "tx id")
        # A transaction the charge point does not run is refused, the running one stopped.
        bad = await csms.call(CP, call.RemoteStopTransaction(transaction_id=99))
        assert bad.status == "Rejected"
        ok = await csms.call(CP, call.RemoteStopTransaction(transaction_id=7))
        assert ok.status == "Accepted"
        stop = await csms.wait_for("StopTransaction", cp_id=CP)
        # A second remote start on a busy connector is refused.
        busy = await csms.call(CP, call.RemoteStartTransaction(id_tag="REMOTE-2", connector_id=1))
    assert stop.payload["transactionId"] == 7 and stop.payload["reason"] == "Remote"
    assert busy.status == "Rejected"  # Finishing: the car is still plugged in


async def test_periodic_and_clock_aligned_values_with_phases(tmp_path, csms):
    keys = {
        "MeterValueSampleInterval": "1",
        "ClockAlignedDataInterval": "2",
        "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,"
        "Current.Import,Voltage",
        "MeterValuesAlignedData": "Energy.Active.Import.Register",
        "StopTxnSampledData": "Energy.Active.Import.Register,Current.Import",
    }
    cfg = ocpp_config(tmp_path, csms.url, keys=keys)
    async with ocpp_rig(cfg, csms) as rig:
        await rig.card_charging()
        await csms.wait_for("MeterValues", cp_id=CP, count=6, timeout=15)
        rig.sim.unplug(1)
        stop = await csms.wait_for("StopTransaction", cp_id=CP)
    msgs = tx_messages(csms)
    tx_id = msgs[0].payload and stop.payload["transactionId"]
    mvs = [m for m in msgs if m.action == "MeterValues"]
    assert all(m.payload["transactionId"] == tx_id for m in mvs)
    periodic = [m for m in mvs if "Sample.Periodic" in contexts(m)]
    clock = [m for m in mvs if "Sample.Clock" in contexts(m)]
    assert len(periodic) >= 2 and clock, dump(csms)
    sv = periodic[-1].payload["meterValue"][0]["sampledValue"]
    phases = {s.get("phase") for s in sv if s["measurand"] == "Current.Import"}
    assert phases == {"L1", "L2", "L3"}
    assert {s.get("phase") for s in sv if s["measurand"] == "Voltage"} == {"L1-N", "L2-N", "L3-N"}
    assert any(s["measurand"] == "Power.Active.Import" and s["unit"] == "W" for s in sv)
    for m in clock:  # on the boundary of the interval
        ts = m.payload["meterValue"][0]["timestamp"]
        assert ts.endswith(".000Z") and int(ts[17:19]) % 2 == 0
    # Energy only grows, in order of sending.
    registers = [energy(m, "Sample.Periodic") for m in periodic]
    assert registers == sorted(registers)
    # StopTxnSampledData: begin and end with the per-phase current at the end.
    td = stop.payload["transactionData"]
    assert [contexts_of(m)[0] for m in td] == ["Transaction.Begin", "Transaction.End"]
    assert energy(stop, "Transaction.End") == stop.payload["meterStop"]
    end_current = [s for s in td[-1]["sampledValue"] if s["measurand"] == "Current.Import"]
    assert {s["phase"] for s in end_current} == {"L1", "L2", "L3"}


async def test_signed_meter_values_verify_with_pyocmf(tmp_path, csms):
    keys = {"SampledDataSignReadings": "true", "PublicKeyWithSignedMeterValue": "EveryMeterValue"}
    cfg = ocpp_config(tmp_path, csms.url, keys=keys)
    async with ocpp_rig(cfg, csms) as rig:
        key_hex = rig.engine.public_key_hex(1)
        await rig.card_charging()
        await charge(rig, 1)
        rig.sim.unplug(1)
        stop = await csms.wait_for("StopTransaction", cp_id=CP)
        conf = await csms.call(CP, call.GetConfiguration(key=["MeterPublicKey1"]))
    begin_mv = next(m for m in tx_messages(csms) if m.action == "MeterValues")
    records = [signed_record_of(sv) for sv in signed(begin_mv) + signed(stop)]
    assert len(records) == 3  # begin in MeterValues, begin + end in StopTransaction
    assert conf.configuration_key[0]["value"] == key_hex
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        parsed = [OCMF.from_string(text) for text, _ in records]
    import base64

    for (_, key_b64), ocmf in zip(records, parsed, strict=True):
        assert base64.b64decode(key_b64).hex().upper() == key_hex
        assert ocmf.verify_signature(key_hex) is True
    assert parsed[1].check_eichrecht(parsed[2], errors_only=True) == []
    assert [sv["context"] for sv in signed(stop)] == ["Transaction.Begin", "Transaction.End"]


async def test_callerror_to_stop_is_retried_under_the_same_message_id(tmp_path, csms):
    keys = {"TransactionMessageAttempts": "5", "TransactionMessageRetryInterval": "1"}
    cfg = ocpp_config(tmp_path, csms.url, keys=keys)
    refusals = []

    def refuse_twice(cp_id, payload):
        if len(refusals) < 2:
            refusals.append(payload)
            raise InternalError(description="billing backend busy")
        return None

    csms.responders["StopTransaction"] = refuse_twice
    async with ocpp_rig(cfg, csms) as rig:
        outbox = rig.agent.ocpp.ctx.parts["outbox"]
        await rig.card_charging()
        rig.sim.unplug(1)
        await csms.wait_for("StopTransaction", cp_id=CP, count=3, timeout=15)
        await rig.until(lambda: outbox.backlog()["pending"] == 0, 5, "outbox drained")
    stops = [r for r in csms.received[CP] if r.action == "StopTransaction"]
    assert len(stops) == 3 and len({r.unique_id for r in stops}) == 1
    assert stops[0].payload == stops[2].payload  # the same message, kept and resent


async def test_exhausted_retries_are_kept_marked_and_sent_after_reconnect(tmp_path, csms):
    keys = {"TransactionMessageAttempts": "2", "TransactionMessageRetryInterval": "1"}
    cfg = ocpp_config(tmp_path, csms.url, keys=keys)
    csms.responders["StopTransaction"] = lambda cp, p: (_ for _ in ()).throw(
        InternalError(description="down for maintenance")
    )
    async with ocpp_rig(cfg, csms) as rig:
        faults = rig.agent.bus.subscribe(FaultRaised, FaultCleared)
        outbox = rig.agent.ocpp.ctx.parts["outbox"]
        await rig.card_charging()
        rig.sim.unplug(1)
        await csms.wait_for("StopTransaction", cp_id=CP, count=2, timeout=15)
        await rig.until(lambda: outbox.backlog()["parked"] == 1, 5, "stop parked")
        backlog = outbox.backlog()
        assert backlog["exhausted"] == 1 and backlog["by_action"] == {"StopTransaction": 1}
        assert outbox.exhausted_now == 1  # the diagnosis fact
        status = rig.agent.ocpp.state()["outbox"]
        assert status["exhausted"] == 1
        # Parked: no third attempt on this connection.
        await asyncio.sleep(1.5)
        assert csms.actions(CP).count("StopTransaction") == 2
        del csms.responders["StopTransaction"]
        await csms.disconnect(CP)
        await csms.wait_for("StopTransaction", cp_id=CP, count=3, timeout=15)
        await rig.until(lambda: outbox.backlog()["pending"] == 0, 5, "outbox drained")
        assert outbox.exhausted_now == 0
        # The diagnosis raised the fault while the message was parked, and cleared it.
        seen = []
        while len(seen) < 2:
            ev = await asyncio.wait_for(faults.get(), 5)
            if ev.rule == "ocpp_tx_undelivered":
                seen.append(type(ev).__name__)
        faults.close()
        assert seen == ["FaultRaised", "FaultCleared"]
    assert len({r.unique_id for r in csms.received[CP] if r.action == "StopTransaction"}) == 1


async def test_invalid_id_tag_in_start_conf_stops_the_session(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url)
    csms.auth_status[CARD] = "Invalid"  # the local list says Accepted, the CSMS disagrees
    async with ocpp_rig(cfg, csms) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        stop = await csms.wait_for("StopTransaction", cp_id=CP)
    assert stop.payload["reason"] == "DeAuthorized"


async def test_unknown_card_is_authorized_online(tmp_path, csms):
    cfg = ocpp_config(tmp_path, csms.url, keys={"LocalPreAuthorize": "false"})
    csms.auth_status["BLOCKED-ONLINE"] = "Blocked"
    async with ocpp_rig(cfg, csms) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        with pytest.raises(Exception, match="Blocked"):
            await rig.engine.authorize(1, card_token("BLOCKED-ONLINE"))
        assert await rig.engine.authorize(1, card_token("NEW-CARD-9")) == "started"
        assert rig.conn.session.row.auth_method == "Online"
        # LocalPreAuthorize false: a listed card is asked online too.
        asked = [r.payload["idTag"] for r in csms.received[CP] if r.action == "Authorize"]
    assert asked == ["BLOCKED-ONLINE", "NEW-CARD-9"]
