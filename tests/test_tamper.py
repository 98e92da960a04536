"""Tampering with the store by someone with file access (the guard triggers dropped first):
`billing verify` names what was changed, the agent raises a security event at start."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime

import pytest
from sessions_helpers import billed_config, copy_store, plug_sessions, record_sessions, running
from structlog.testing import capture_logs
from typer.testing import CliRunner

from agent.billing import checkpoint
from agent.billing.checkpoint import Head, checkpoint_path
from agent.cli.main import app
from agent.events import FaultRaised
from agent.sessions.integrity import head_problems
from agent.sessions.store import SessionStore

runner = CliRunner()
SESSION_TABLES = ("meter_samples", "session_events", "sessions")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store with four real sessions, its signed checkpoint and a CLI config."""
    return record_sessions(tmp_path_factory.mktemp("tamper"), 4)


@pytest.fixture
def copy(recorded, tmp_path):
    return copy_store(*recorded, tmp_path)


def verify(conf) -> tuple[int, list[dict]]:
    r = runner.invoke(app, ["billing", "verify", "--config", str(conf), "--json"])
    return r.exit_code, json.loads(r.stdout)["problems"]


def attack(db, *sql: str) -> None:
    """What an attacker with write access to the file does: triggers out of the way first."""
    c = sqlite3.connect(db)
    c.execute("DROP TRIGGER charge_records_immutable")
    c.execute("DROP TRIGGER charge_records_kept")
    for s in sql:
        c.execute(s)
    c.commit()
    c.close()


def rows(db, sql: str) -> list[tuple]:
    c = sqlite3.connect(db)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def delete_sessions(where: str) -> list[str]:
    """SQL deleting the records matching `where` together with their sessions."""
    sub = f"(SELECT session_id FROM charge_records WHERE {where})"
    return [f"DELETE FROM {t} WHERE {'id' if t == 'sessions' else 'session_id'} IN {sub}"
            for t in SESSION_TABLES] + [f"DELETE FROM charge_records WHERE {where}"]  # fmt: skip


def test_untampered_store_verifies_and_has_a_signed_checkpoint(copy):
    db, conf = copy
    assert verify(conf) == (0, [])
    head = checkpoint.read(checkpoint_path(db), None)
    newest = rows(db, "SELECT seq, hash FROM charge_records ORDER BY seq DESC LIMIT 1")[0]
    assert (head.station, head.seq, head.hash, head.anchor) == ("TEST", *newest, None)


def test_edited_columns_are_found_against_the_signed_body(copy):
    # Only the copied columns: the body, its hash and the chain stay intact.
    db, conf = copy
    id2, wh = rows(db, "SELECT id, energy_wh FROM charge_records WHERE seq = 2")[0]
    attack(
        db,
        "UPDATE charge_records SET energy_wh = energy_wh + 1000000, total_excl_vat = '999.00',"
        " total_incl_vat = '1188.81' WHERE seq = 2",
        "UPDATE sessions SET billed_wh = billed_wh + 1000000 WHERE id = "
        "(SELECT session_id FROM charge_records WHERE seq = 3)",
    )
    code, problems = verify(conf)
    assert code == 1
    by_seq = {}
    for p in problems:
        by_seq.setdefault(p["seq"], []).append(p["message"])
    assert {p["record"] for p in problems if p["seq"] == 2} == {id2}
    two = " | ".join(by_seq[2])
    assert f"column energy_wh is {wh + 1000000}, the signed body says {wh}" in two
    assert "column total_excl_vat is '999.00'" in two and "column total_incl_vat" in two
    assert any("session column billed_wh" in m for m in by_seq[3])
    assert any("charge_records_immutable was dropped" in m for m in by_seq[None])
    assert 1 not in by_seq and 4 not in by_seq  # the others are named as fine


def test_deleting_the_newest_record_with_its_session_is_found(copy):
    db, conf = copy
    attack(db, *delete_sessions("seq = 4"))
    code, problems = verify(conf)
    msgs = [p["message"] for p in problems]
    assert code == 1
    assert any("records seq 4..4 are missing" in m and "newest record is seq 3" in m for m in msgs)


def test_deleting_the_oldest_records_and_rewriting_the_anchor_is_found(copy):
    db, conf = copy
    seq2 = rows(db, "SELECT hash FROM charge_records WHERE seq = 2")[0][0]
    attack(
        db,
        *delete_sessions("seq <= 2"),
        f"INSERT INTO billing_state (key, value) VALUES ('chain_anchor', '2:{seq2}')",
    )
    code, problems = verify(conf)
    msgs = [p["message"] for p in problems]
    assert code == 1
    assert any(f"chain_anchor is 2:{seq2}, the signed checkpoint says unset" in m for m in msgs)
    assert not [p for p in problems if p["seq"] is not None]  # the chain alone looks intact


def test_a_deleted_or_edited_checkpoint_is_found(copy):
    db, conf = copy
    path = checkpoint_path(db)
    doc = json.loads(path.read_text())
    doc["head"]["seq"] = 3  # as if record 4 never existed, without the key to sign it
    path.write_text(json.dumps(doc))
    code, problems = verify(conf)
    assert code == 1 and "signature does not verify" in problems[0]["message"]
    path.unlink()
    code, problems = verify(conf)
    assert code == 1 and "chain checkpoint" in problems[0]["message"]
    assert "was deleted" in problems[0]["message"]


def test_a_pruning_whose_commit_did_not_happen_is_not_tampering(copy):
    # Retention signs the new anchor before its commit; a crash in between leaves the
    # checkpoint ahead of the store. Another anchor than that one is still refused.
    db, _ = copy
    h1, h4 = (rows(db, f"SELECT hash FROM charge_records WHERE seq = {n}")[0][0] for n in (1, 4))
    c = sqlite3.connect(db)
    try:
        assert head_problems(c, Head("TEST", 4, h4, f"1:{h1}", 8)) == []
        assert head_problems(c, Head("TEST", 4, h4, f"1:{'0' * 64}", 8))
    finally:
        c.close()


def test_dropped_triggers_are_found_until_resealed(copy):
    db, conf = copy
    rows(db, "DROP TRIGGER charge_records_kept")
    code, problems = verify(conf)
    assert code == 1 and "charge_records_kept was dropped" in problems[0]["message"]
    r = runner.invoke(app, ["billing", "reseal", "--config", str(conf)])
    assert r.exit_code == 0, r.output
    assert "re-created store trigger charge_records_kept" in r.stdout
    assert verify(conf) == (0, [])
    c = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        c.execute("DELETE FROM charge_records WHERE seq = 1")
    c.close()


async def test_the_agent_raises_a_security_event_and_a_fault_at_start(tmp_path):
    cfg, _ = await asyncio.to_thread(record_sessions, tmp_path, 1)
    rows(cfg.store.path, "DROP TRIGGER charge_records_immutable")
    subs = []
    with capture_logs() as logs:
        async with running(cfg, setup=lambda a: subs.append(a.bus.subscribe(FaultRaised))) as rig:
            faults = subs[0]
            while (
                ev := await asyncio.wait_for(faults.get(), 15)
            ).rule != "billing_tamper_detected":
                pass
            faults.close()
            assert ev.severity == "critical" and ev.scope == "station"
            assert rig.agent.diagnosis.facts.snapshot(datetime.now(UTC))["billing_tamper"] == 1
    found = [e for e in logs if e["event"] == "security.tamper_detected"]
    assert len(found) == 1 and found[0]["security_event"] == "TamperDetectionActivated"
    assert "charge_records_immutable was dropped" in found[0]["findings"][0]


async def test_a_checkpoint_that_cannot_be_written_does_not_stop_billing(tmp_path):
    # The second copy must never cost a record: its write fails (a directory where its
    # temporary file goes), the session still closes with its record, the failure is logged.
    cfg = billed_config(tmp_path, billing="free_vend = true")
    cp = checkpoint_path(cfg.store.path)
    (cp.parent / f".{cp.name}.tmp").mkdir(parents=True)
    with capture_logs() as logs:
        async with running(cfg) as rig:
            await plug_sessions(rig, 1)
            assert rig.engine.integrity.findings == []
    assert not cp.exists()
    failed = [e for e in logs if e["event"] == "security.checkpoint_not_written"]
    assert len(failed) == 2 and "Is a directory" in failed[-1]["error"]  # at start, at record
    with SessionStore(cfg.store.path) as st:
        assert len(st.records()) == 1
