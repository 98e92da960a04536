"""The central system goes away in the middle of sessions, and the agent is killed with a
backlog: every transaction message must still arrive exactly once, in order, with the
transaction id the CSMS gave, and with the meter values the charge records bill."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ocpp.exceptions import InternalError
from ocpp_helpers import (
    CP,
    TX_ACTIONS,
    dump,
    energy,
    ocpp_config,
    ocpp_rig,
    process_config,
    queued,
    session_counts,
    tx_messages,
)

from agent.sessions.store import SessionStore
from hil.control import send_command
from hil.csms import Received, TestCsms
from hil.procs import sim_ready, start_agent, start_sim, until


def check_stream(msgs: list[Received], first_tx_id: int) -> list[list[Received]]:
    """The transaction messages as sessions (one connector: they never interleave); asserts
    the order, the ids the CSMS gave and that nothing arrived twice. Returns the sessions."""
    ids = [int(m.unique_id.removeprefix("tx-")) for m in msgs]
    assert ids == sorted(ids), "messages out of order"
    payloads = [json.dumps(m.payload, sort_keys=True) for m in msgs]
    assert len(set(payloads)) == len(payloads), "the same message arrived under two ids"
    sessions: list[list[Received]] = []
    for m in msgs:
        if m.action == "StartTransaction":
            sessions.append([m])
        else:
            assert sessions and sessions[-1][-1].action != "StopTransaction", f"orphan {m}"
            sessions[-1].append(m)
    for n, s in enumerate(sessions):
        tx_id = first_tx_id + n  # the test CSMS counts up per StartTransaction received
        assert s[-1].action == "StopTransaction", "a session without its stop"
        assert all(m.payload["transactionId"] == tx_id for m in s[1:]), [m.payload for m in s]
        registers = [energy(m, "Sample.Periodic") for m in s if m.action == "MeterValues"]
        registers = [r for r in registers if r is not None]
        meter_start, meter_stop = s[0].payload["meterStart"], s[-1].payload["meterStop"]
        assert all(meter_start <= r <= meter_stop for r in registers)
        assert registers == sorted(registers)
    return sessions


def billed(db: Path) -> list[tuple[int, int, int]]:
    """(start Wh, end Wh, energy Wh) of every charge record, in chain order."""
    with SessionStore(db) as st:
        out = []
        for r in st.records():
            b = r.data
            out.append((b["meter"]["start_wh"], b["meter"]["end_wh"], r.energy_wh))
        return out


async def card_session(rig, seconds: float) -> None:
    await rig.card_charging()
    await asyncio.sleep(seconds)
    rig.sim.unplug(1)
    await rig.status("Available")


async def test_csms_outage_in_the_middle_of_sessions(tmp_path):
    csms = TestCsms()
    await csms.start()
    csms.next_transaction_id = 100
    keys = {"MeterValueSampleInterval": "1", "TransactionMessageRetryInterval": "1"}
    cfg = ocpp_config(tmp_path, csms.url, keys=keys)
    try:
        async with ocpp_rig(cfg, csms) as rig:
            outbox = rig.agent.ocpp.ctx.parts["outbox"]
            # Session 1 starts online, the CSMS goes away while it charges.
            await rig.card_charging()
            await csms.wait_for("MeterValues", cp_id=CP, count=2)
            await csms.stop()
            await rig.until(lambda: not rig.agent.ocpp.online.is_set(), 5, "offline")
            await asyncio.sleep(1.5)
            rig.sim.unplug(1)
            await rig.status("Available")
            # Session 2 runs entirely offline; session 3 starts offline.
            await card_session(rig, 1.5)
            await rig.card_charging()
            await asyncio.sleep(1.5)
            offline = outbox.backlog()
            assert offline["transactions_without_id"] == 2  # sessions 2 and 3
            await csms.start()  # the same port: the agent reconnects by itself
            await rig.until(lambda: outbox.backlog()["pending"] == 0, 20, "backlog sent")
            sid3 = rig.conn.session.id
            assert outbox.transaction_id(sid3) == 102  # started offline, id given now
            rig.sim.unplug(1)
            await csms.wait_for("StopTransaction", cp_id=CP, count=3)
            await rig.until(lambda: outbox.backlog()["pending"] == 0, 10, "all sent")
            stored = [m for m in outbox.messages() if m[1] in TX_ACTIONS]
    finally:
        await csms.stop()
    msgs = tx_messages(csms, cfg.store.path)
    assert any(r.unique_id.count("-") == 2 for r in csms.received[CP]), "no batch: default on"
    assert [int(m.unique_id[3:]) for m in msgs] == [seq for seq, *_ in stored], dump(csms)
    sessions = check_stream(msgs, 100)
    assert len(sessions) == 3
    assert offline["pending"] > 5
    # The meter values the CSMS got are the ones billed.
    for s, (start_wh, end_wh, energy_wh) in zip(sessions, billed(cfg.store.path), strict=True):
        assert (s[0].payload["meterStart"], s[-1].payload["meterStop"]) == (start_wh, end_wh)
        assert end_wh - start_wh == energy_wh


async def test_kill_9_with_a_queued_backlog_delivers_everything_once(tmp_path):
    csms = TestCsms()
    port = await csms.start()
    csms.next_transaction_id = 500
    config, control = process_config(tmp_path, port)
    db = tmp_path / "evedge.db"
    sim = start_sim(config, tmp_path / "sim.log")
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        await sim_ready(control, proc=sim)
        await csms.wait_connected(CP, timeout=20)
        await csms.stop()  # the outage: everything from now on is queued
        for n in range(3):  # free vend: each plug-in is a session
            await send_command(control, {"cmd": "plug_in", "connector": 1})
            await until(lambda n=n: session_counts(db) == (1, n), 20, "started", proc=agent)
            mark = queued(db)  # the start is queued: wait for a meter value after it
            await until(lambda m=mark: queued(db) > m, 20, "a meter value", proc=agent)
            await send_command(control, {"cmd": "unplug", "connector": 1})
            await until(lambda n=n: session_counts(db) == (0, n + 1), 20, "closed", proc=agent)
        await send_command(control, {"cmd": "plug_in", "connector": 1})  # one left running
        await until(lambda: session_counts(db) == (1, 3), 20, "the 4th session", proc=agent)
        await until(lambda: queued(db) >= 12, 20, "a backlog", proc=agent)
        before = queued(db)
        agent.kill9()
        agent = start_agent(config, tmp_path / "agent.log")
        await asyncio.sleep(2)
        assert queued(db) >= before  # nothing dropped by the restart
        await csms.start()
        await csms.wait_connected(CP, timeout=20)
        await send_command(control, {"cmd": "unplug", "connector": 1})
        # Generous: a busy 2-core CI machine, a backlog delivered one CALL at a time.
        await csms.wait_for("StopTransaction", cp_id=CP, count=4, timeout=90)
        await until(lambda: queued(db) == 0, 30, "the backlog delivered", proc=agent)
        await agent.stop_async()
    finally:
        await agent.stop_async()
        sim.stop()
        await csms.stop()
    msgs = tx_messages(csms, db)
    sessions = check_stream(msgs, 500)
    assert len(sessions) == 4, dump(csms)
    with SessionStore(db) as st:
        assert len(st.records()) == 4 and not st.active_sessions()
    raw = [r for r in csms.received[CP] if r.action != "Heartbeat"]
    assert len({r.unique_id for r in raw if r.action == "StopTransaction"}) == 4


async def test_a_start_never_confirmed_falls_back_to_transaction_id_minus_1(tmp_path):
    csms = TestCsms()
    await csms.start()
    keys = {"TransactionMessageAttempts": "1", "TransactionMessageRetryInterval": "1"}
    cfg = ocpp_config(tmp_path, csms.url, keys=keys)
    csms.responders["StartTransaction"] = lambda cp, p: (_ for _ in ()).throw(
        InternalError(description="no transaction ids today")
    )
    try:
        async with ocpp_rig(cfg, csms) as rig:
            outbox = rig.agent.ocpp.ctx.parts["outbox"]
            await card_session(rig, 1.0)
            await csms.wait_for("StartTransaction", cp_id=CP)
            # Round 1 exhausted: the stop waits behind its start, nothing sent with -1 yet.
            await rig.until(lambda: outbox.backlog()["parked"] == 1, 5, "start parked")
            assert "StopTransaction" not in csms.actions(CP)
            await csms.disconnect(CP)  # round 2 on the next connection, then the fallback
            stop = await csms.wait_for("StopTransaction", cp_id=CP, timeout=15)
            assert csms.actions(CP).count("StartTransaction") == 2
            await rig.until(lambda: outbox.backlog()["pending"] == 1, 5, "the stop delivered")
            backlog = outbox.backlog()
    finally:
        await csms.stop()
    assert stop.payload["transactionId"] == -1
    assert backlog["transactions_with_fallback_id"] == 1
    assert backlog["by_action"] == {"StartTransaction": 1}  # kept, retried on reconnects
