"""Issue 5's "done when": a full OCPP 1.6J session from `evedge run` (a real process) against
a real central system (hil/csms.py) on loopback, with the simulated station (`evedge sim`)."""

from __future__ import annotations

import asyncio
import warnings

from ocpp.v16 import call
from ocpp_helpers import CP, contexts, dump, energy, process_config, signed, tx_messages
from pyocmf import OCMF
from pyocmf.exceptions import SpecWarning

from agent.ocpp.metervalues import signed_record_of
from agent.sessions.store import SessionStore
from hil.control import send_command
from hil.csms import TestCsms
from hil.procs import start_agent, start_sim


async def test_full_session_from_evedge_run(tmp_path):
    csms = TestCsms()
    port = await csms.start()
    csms.next_transaction_id = 9001
    config, control = process_config(tmp_path, port, free_vend=False)
    sim = start_sim(config, tmp_path / "sim.log")
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        boot = await csms.wait_for("BootNotification", cp_id=CP, timeout=30)
        await csms.wait_for("StatusNotification", cp_id=CP, where={"connectorId": 1}, timeout=15)
        for _ in range(100):
            try:
                await send_command(control, {"cmd": "plug_in", "connector": 1})
                break
            except OSError:
                await asyncio.sleep(0.1)
        await csms.wait_for("StatusNotification", cp_id=CP, where={"status": "Preparing"})
        res = await csms.call(CP, call.RemoteStartTransaction(id_tag="E2E-TAG", connector_id=1))
        assert res.status == "Accepted"
        start = await csms.wait_for("StartTransaction", cp_id=CP, timeout=15)
        await csms.wait_for("StatusNotification", cp_id=CP, where={"status": "Charging"})
        await csms.wait_for("MeterValues", cp_id=CP, count=3, timeout=15)
        key = await csms.call(CP, call.GetConfiguration(key=["MeterPublicKey1"]))
        key_hex = key.configuration_key[0]["value"]
        res = await csms.call(CP, call.RemoteStopTransaction(transaction_id=9001))
        assert res.status == "Accepted"
        stop = await csms.wait_for("StopTransaction", cp_id=CP, timeout=15)
        await send_command(control, {"cmd": "unplug", "connector": 1})
        await csms.wait_for("StatusNotification", cp_id=CP, where={"status": "Available"}, count=2)
        assert await agent.stop_async() == 0
    finally:
        await agent.stop_async()
        sim.stop()
        await csms.stop()
    assert boot.payload["chargePointModel"]
    assert start.payload["idTag"] == "E2E-TAG" and start.payload["connectorId"] == 1
    msgs = tx_messages(csms)
    assert msgs[0] == start and msgs[-1] == stop, dump(csms)
    middle = msgs[1:-1]
    assert middle and all(m.action == "MeterValues" for m in middle)
    assert all(m.payload["transactionId"] == 9001 for m in middle)
    assert contexts(middle[0])[0] == "Transaction.Begin"
    assert any("Sample.Periodic" in contexts(m) for m in middle)
    p = stop.payload
    assert p["transactionId"] == 9001 and p["reason"] == "Remote" and p["idTag"] == "E2E-TAG"
    assert p["meterStop"] > start.payload["meterStart"]  # the simulated car charged
    assert energy(stop, "Transaction.End") == p["meterStop"]
    with SessionStore(tmp_path / "evedge.db") as st:
        (rec,) = st.records()
    assert rec.energy_wh == p["meterStop"] - start.payload["meterStart"]
    # The signed begin and end records verify against MeterPublicKey1 and pair up.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        begin, end = (OCMF.from_string(signed_record_of(sv)[0]) for sv in signed(stop))
    assert begin.verify_signature(key_hex) and end.verify_signature(key_hex)
    assert begin.check_eichrecht(end, errors_only=True) == []
