"""Charge records in the store: the CLI that shows and verifies them, tamper detection,
retention, and recovery after the agent died mid-session."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from sessions_helpers import CARD, billed_config, body, copy_store, record_sessions, running
from typer.testing import CliRunner

from agent.billing import chain, checkpoint
from agent.billing.checkpoint import checkpoint_path
from agent.billing.keys import load_or_create_key
from agent.cli.main import app
from agent.sessions.integrity import Integrity
from agent.sessions.ledger import Ledger
from agent.sessions.model import card_token
from agent.sessions.records import verify_records
from agent.sessions.store import SessionStore
from hil.station import SimStation

runner = CliRunner()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store with three free-vend sessions, and its config file."""
    return record_sessions(tmp_path_factory.mktemp("records"), 3)


@pytest.fixture
def copy(recorded, tmp_path):
    """A private copy of the recorded store, and a config pointing at it."""
    return copy_store(*recorded, tmp_path)


def verify(conf) -> tuple[int, dict]:
    r = runner.invoke(app, ["billing", "verify", "--config", str(conf), "--json"])
    return r.exit_code, json.loads(r.stdout)


def tamper(db, *sql: str, args=()) -> None:
    c = sqlite3.connect(db)
    c.execute("DROP TRIGGER IF EXISTS charge_records_immutable")
    c.execute("DROP TRIGGER IF EXISTS charge_records_kept")
    for s in sql:
        c.execute(s, args)
    c.commit()
    c.close()


def test_verify_passes_on_untouched_records(copy):
    _, conf = copy
    code, out = verify(conf)
    assert code == 0 and out["ok"] and out["records"] == 3 and out["signatures"] == 6


def test_the_store_refuses_edits_and_deletes_of_records(copy):
    db, _ = copy
    c = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        c.execute("UPDATE charge_records SET energy_wh = 1 WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        c.execute("DELETE FROM charge_records WHERE seq = 1")
    c.close()


def test_verify_detects_an_edited_record(copy):
    db, conf = copy
    rec = (
        sqlite3.connect(db).execute("SELECT id, body FROM charge_records WHERE seq = 2").fetchone()
    )
    b = json.loads(rec[1])
    b["energy_wh"] += 1000
    tamper(db, "UPDATE charge_records SET body = ? WHERE seq = 2", args=(json.dumps(b),))
    code, out = verify(conf)
    assert code == 1
    assert any(p["seq"] == 2 and "edited" in p["message"] for p in out["problems"])
    assert rec[0] in {p["record"] for p in out["problems"]}


def test_verify_detects_a_deleted_record(copy):
    db, conf = copy
    tamper(db, "DELETE FROM charge_records WHERE seq = 2")
    code, out = verify(conf)
    assert code == 1
    msgs = " | ".join(f"{p['seq']}: {p['message']}" for p in out["problems"])
    assert "3: hash chain broken (removed)" in msgs
    assert "closed but has no charge record" in msgs


def test_verify_detects_deleting_the_newest_record(copy):
    db, conf = copy
    tamper(db, "DELETE FROM charge_records WHERE seq = 3")
    code, out = verify(conf)
    msgs = [p["message"] for p in out["problems"]]
    assert code == 1 and any("no charge record" in m for m in msgs)
    assert any("records seq 3..3 are missing" in m for m in msgs)  # the signed checkpoint


def test_verify_detects_reordered_records(copy):
    db, conf = copy
    c = sqlite3.connect(db)
    rows = c.execute("SELECT seq, body, hash FROM charge_records ORDER BY seq").fetchall()
    c.close()
    (_, b1, h1), (_, b2, h2) = rows[0], rows[1]
    tamper(
        db,
        "UPDATE charge_records SET body = CASE seq WHEN 1 THEN ? ELSE ? END, "
        "hash = CASE seq WHEN 1 THEN ? ELSE ? END WHERE seq IN (1, 2)",
        args=(b2, b1, h2, h1),
    )
    code, out = verify(conf)
    assert code == 1 and {p["seq"] for p in out["problems"]} & {1, 2}


def test_verify_detects_a_forged_signed_reading_even_with_a_rebuilt_chain(copy):
    # Someone who rewrites the OCMF data and recomputes every hash still cannot sign.
    db, conf = copy
    c = sqlite3.connect(db)
    rows = c.execute("SELECT seq, prev_hash, body FROM charge_records ORDER BY seq").fetchall()
    c.close()
    prev, updates = chain.GENESIS, []
    for seq, _, text in rows:
        b = json.loads(text)
        if seq == 2:
            rv = str(b["meter"]["end_wh"])
            b["ocmf"]["end"] = b["ocmf"]["end"].replace(f'"RV":{rv}', f'"RV":{int(rv) + 500}')
            b["meter"]["end_wh"] += 500
            b["energy_wh"] += 500
        rec = chain.ChainedRecord(seq, prev, b)
        digest = chain.record_hash(rec)
        updates.append((prev, json.dumps(b), digest, seq))
        prev = digest
    c = sqlite3.connect(db)
    c.execute("DROP TRIGGER charge_records_immutable")
    c.executemany(
        "UPDATE charge_records SET prev_hash = ?, body = ?, hash = ? WHERE seq = ?", updates
    )
    c.commit()
    c.close()
    code, out = verify(conf)
    assert code == 1
    named = [p for p in out["problems"] if p["seq"] is not None]
    assert {p["seq"] for p in named} == {2}
    assert "OCMF end record does not verify" in named[0]["message"]
    assert any("column energy_wh is" in p["message"] for p in named)
    store_wide = " | ".join(p["message"] for p in out["problems"] if p["seq"] is None)
    assert "the chain was rebuilt" in store_wide and "charge_records_immutable" in store_wide


def test_retention_keeps_unconfirmed_records_and_anchors_the_chain(copy, recorded):
    db, _ = copy
    with SessionStore(db) as st:
        ledger = Ledger(st, "TEST", None)
        ledger.integrity = Integrity(st, "TEST", load_or_create_key(recorded[0].billing.key_dir))
        now = st.records()[-1].ended_ts
        assert ledger.prune(now + 10**15, retention_days=730) == 0  # none confirmed yet
        first = st.records()[0]
        assert st.mark_delivered(first.id, now)
        assert not st.mark_delivered(first.id, now)  # once
        assert ledger.prune(now, retention_days=730) == 0  # confirmed, but not old enough
        assert ledger.prune(now + 731 * 86_400 * 10**6, retention_days=730) == 1
        assert [r.seq for r in st.records()] == [2, 3]
        assert [r.seq for r in st.undelivered()] == [2, 3]
        assert verify_records(st, None).ok  # the rest still verifies from the anchor
        assert checkpoint.read(checkpoint_path(db), None).anchor == st.state("chain_anchor")


def test_sessions_cli_lists_and_shows_with_cost_and_ocmf(copy):
    _, conf = copy
    r = runner.invoke(app, ["sessions", "list", "--config", str(conf), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and all(x["record_id"] for x in rows)
    assert rows[0]["id_token"] == "FR****ND"  # masked in lists
    r = runner.invoke(app, ["sessions", "show", rows[0]["session_id"][:10], "-c", str(conf)])
    assert r.exit_code == 0, r.output
    assert "OCMF|" in r.stdout and "total" in r.stdout and "EVDisconnected" in r.stdout
    r = runner.invoke(app, ["sessions", "show", rows[0]["session_id"], "-c", str(conf), "--json"])
    shown = json.loads(r.stdout)
    assert shown["record"]["body"]["cost"]["total_incl_vat"] == "2.38"
    r = runner.invoke(app, ["sessions", "show", "nope", "-c", str(conf)])
    assert r.exit_code == 2


def test_report_table_csv_json_and_plot(copy, tmp_path):
    _, conf = copy
    r = runner.invoke(app, ["report", "-c", str(conf), "--period", "day", "--json"])
    assert r.exit_code == 0, r.output
    days = json.loads(r.stdout)
    assert len(days) == 30
    today = days[-1]
    assert today["sessions"] == 3 and today["revenue_incl_vat"] == "7.14"
    assert today["currency"] == "EUR" and int(today["energy_wh"]) > 0
    r = runner.invoke(app, ["report", "-c", str(conf), "--period", "month", "--by", "connector",
                            "--format", "csv"])  # fmt: skip
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("period,group,sessions")
    assert r.stdout.splitlines()[-1].split(",")[1:3] == ["1", "3"]
    r = runner.invoke(app, ["report", "-c", str(conf), "--period", "week", "--by", "token",
                            "--format", "csv"])  # fmt: skip
    assert r.exit_code == 0 and r.stdout.splitlines()[-1].split(",")[1:3] == ["FREEVEND", "3"]
    r = runner.invoke(app, ["report", "-c", str(conf), "--period", "week"])
    assert r.exit_code == 0 and "usage per week" in r.stdout
    r = runner.invoke(app, ["report", "-c", str(conf), "--from", "2025-13-01"])
    assert r.exit_code == 2 and "not a date" in r.output
    pytest.importorskip("matplotlib")
    png = tmp_path / "usage.png"
    r = runner.invoke(app, ["report", "-c", str(conf), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_keys_show_prints_the_public_key(recorded):
    _, toml = recorded
    r = runner.invoke(app, ["keys", "show", "-c", str(toml), "--json"])
    assert r.exit_code == 0, r.output
    k = json.loads(r.stdout)
    rec = SessionStore(json.loads(json.dumps(str(recorded[0].store.path))))
    with rec:
        assert body(rec.records()[0])["ocmf"]["public_key"] == k["public_key_hex"]
    assert k["algorithm"] == "ECDSA-secp256r1-SHA256"


async def test_restart_resumes_a_session_the_evse_still_charges(tmp_path):
    cfg = billed_config(tmp_path)
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        async with running(cfg, sim=sim) as rig:
            sim.plug_in(1)
            await rig.engine.authorize(1, card_token(CARD))
            await rig.status("Charging")
            start = rig.conn.session.row.start_wh
            await asyncio.sleep(1)
        # The agent is gone (its sessions were not closed); the car goes on charging.
        await asyncio.sleep(1)
        async with running(cfg, sim=sim) as rig:
            await rig.status("Charging")
            # The status is set before the event is published and collected: wait for it.
            await rig.until(lambda: [e.kind for e in rig.events() if e.kind == "resumed"], 5)
            assert [e.kind for e in rig.events() if e.kind == "resumed"] == ["resumed"]
            await asyncio.sleep(1)
            sim.unplug(1)
            rec = await rig.record()
            end = rig.register()
    finally:
        await sim.stop()
    b = body(rec)
    assert b["stop"]["reason"] == "EVDisconnected"
    assert b["energy_wh"] == end - start  # nothing lost while the agent was away
    assert any("resumed" in n for n in b["notes"]) and not b["review"]["required"]


async def test_restart_closes_a_session_that_ended_meanwhile_with_power_loss(tmp_path):
    cfg = billed_config(tmp_path)
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        async with running(cfg, sim=sim) as rig:
            sim.plug_in(1)
            await rig.engine.authorize(1, card_token(CARD))
            await rig.status("Charging")
            start = rig.conn.session.row.start_wh
            await asyncio.sleep(1)
        await asyncio.sleep(0.5)
        sim.unplug(1)  # the driver left while the agent was down
        end = sim.devices["meter1"].meter.import_wh
        async with running(cfg, sim=sim) as rig:
            rec = await rig.record()
            await rig.status("Available")
            with rig.store() as st:
                assert st.active_sessions() == []
                assert verify_records(st, None).ok
    finally:
        await sim.stop()
    b = body(rec)
    assert b["stop"]["reason"] == "PowerLoss" and '"TX":"P"' in b["ocmf"]["end"]
    assert b["energy_wh"] == end - start  # the register read at restart
    assert not b["review"]["required"]


async def test_restart_without_meter_uses_the_last_persisted_reading_flagged(tmp_path):
    cfg = billed_config(tmp_path)
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        async with running(cfg, sim=sim) as rig:
            sim.plug_in(1)
            await rig.engine.authorize(1, card_token(CARD))
            await rig.status("Charging")
            await asyncio.sleep(1)
        sim.unplug(1)
        sim.inject({"kind": "no_response", "device": "meter1"})
        agent_cfg = cfg
        from agent.runtime import Agent

        agent = Agent(agent_cfg)
        seen = []
        from agent.events import ChargeRecordWritten

        sub = agent.bus.subscribe(ChargeRecordWritten)
        await agent.start()
        try:
            seen.append(await asyncio.wait_for(sub.get(), 20))
        finally:
            await agent.stop()
    finally:
        await sim.stop()
    with SessionStore(cfg.store.path) as st:
        b = body(st.record_of(seen[0].session_id))
    assert b["stop"]["reason"] == "PowerLoss"
    assert b["review"]["required"] and "last good one" in b["review"]["reasons"][-1]
    assert b["energy_wh"] >= 0
