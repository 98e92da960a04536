"""Security events (issue 15): the catalog, the append-only security log, and events provoked
against the real test CSMS (hil/csms.py), delivered as SecurityEventNotification through the
durable OCPP outbox — also when they happened while the CSMS could not be reached."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest
from mqtt_helpers import Backend
from ocpp.messages import Call, validate_payload
from ocpp.v16 import call
from ocpp_helpers import CP, csms_running, ocpp_config, ocpp_rig, ocpp_service
from sessions_helpers import billed_config, running
from test_mqtt_commands import expires
from test_mqtt_sync import STATION, with_mqtt
from test_ocpp_security import PASSWORD, config, pki, server_ssl  # noqa: F401 (fixture)

from agent.mqtt.schema import COMMITTED
from agent.security.catalog import load_catalog
from agent.security.log import SecurityLog, log_path_for
from agent.security.standalone import port_for
from agent.store.db import Store
from agent.store.migrations import MIGRATIONS, statements
from hil.csms import TestCsms
from hil.procs import until

# The whitepaper's appendix 1: the critical ones.
CRITICAL = {
    "FirmwareUpdated",
    "StartupOfTheDevice",
    "ResetOrReboot",
    "SecurityLogWasCleared",
    "MemoryExhaustion",
    "TamperDetectionActivated",
}


def notifications(csms: TestCsms, cp: str = CP) -> list[dict]:
    """SecurityEventNotification payloads the CSMS received, one per message id."""
    seen: dict[str, dict] = {}
    for r in csms.received.get(cp, []):
        if r.action == "SecurityEventNotification":
            seen.setdefault(r.unique_id, r.payload)
    return list(seen.values())


async def schema_checked(csms: TestCsms, cp: str = CP) -> list[dict]:
    """`notifications`, each validated against the `ocpp` library's OCPP 1.6 schema."""
    out = notifications(csms, cp)
    for n, p in enumerate(out):
        await validate_payload(Call(str(n), "SecurityEventNotification", p), ocpp_version="1.6")
    return out


def types(csms: TestCsms, cp: str = CP) -> list[str]:
    return [p["type"] for p in notifications(csms, cp)]


def logged(store_path: Path) -> list[dict]:
    return [json.loads(x) for x in log_path_for(store_path).read_text().splitlines()]


# ---------------------------------------------------------------------- catalog and log


def test_catalog_lists_the_standard_events_with_their_criticality():
    cat = load_catalog()
    names = {e.type for e in cat.event}
    assert {"InvalidCsmsCertificate", "AttemptedReplayAttacks", "InvalidTLSCipherSuite"} <= names
    assert {e.type for e in cat.event if e.critical} == CRITICAL
    with pytest.raises(ValueError, match="unknown security event type 'Nope'"):
        cat.get("Nope")


def test_catalog_refuses_a_type_listed_twice(tmp_path):
    bad = tmp_path / "events.toml"
    one = '[[event]]\ntype = "ResetOrReboot"\ncritical = true\ndescription = "x"\n'
    bad.write_text(one + one)
    with pytest.raises(ValueError, match="listed twice: ResetOrReboot"):
        load_catalog(bad)


def test_log_appends_counts_on_after_restart_rotates_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "s.db.security.jsonl"
    log = SecurityLog(path, max_bytes=600)
    first = log.record("StartupOfTheDevice", "boot")
    assert (first.seq, first.critical) == (1, True)
    with pytest.raises(ValueError, match="unknown security event type"):
        log.record("NotAnEvent")
    with path.open("a") as f:
        f.write('{"seq": 2, "type": "Res')  # a power cut in the middle of a line
        f.write("\n")
    log = SecurityLog(path, max_bytes=600)  # a restart
    for n in range(10):
        log.record("InvalidMessages", f"frame {n} " + "x" * 300)  # tech_info cut to 255
    evs = list(log.events())
    assert [e.seq for e in evs] == sorted(e.seq for e in evs)
    assert evs[-1].seq == 11 and all(len(e.tech_info or "") <= 255 for e in evs)
    rotated = path.with_name(path.name + ".1")
    assert rotated.exists() and path.stat().st_size <= 600 and rotated.stat().st_size <= 600
    assert evs[0].seq > 1  # the oldest were rotated away: the log is bounded


def test_log_window_by_time(tmp_path):
    path = tmp_path / "s.db.security.jsonl"
    stamps = ["2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z"]
    path.write_text(
        "".join(
            json.dumps({"seq": n, "ts": t, "type": "InvalidMessages", "critical": False,
                        "tech_info": None}) + "\n"
            for n, t in enumerate(stamps, 1)
        )
    )  # fmt: skip
    log = SecurityLog(path)
    day = datetime.fromisoformat
    assert [e.seq for e in log.events(oldest=day("2026-01-02T00:00:00+00:00"))] == [2, 3]
    assert [e.seq for e in log.events(latest=day("2026-01-02T00:00:00+00:00"))] == [1, 2]
    assert log.record("SettingSystemTime").seq == 4


# ---------------------------------------------------------------------- against the CSMS


async def test_startup_and_reset_reach_the_csms_and_the_log(tmp_path):
    async with csms_running() as csms:
        cfg = ocpp_config(tmp_path, csms.url)
        async with ocpp_rig(cfg, csms):
            await until(lambda: "StartupOfTheDevice" in types(csms), 20, "startup event")
            res = await csms.call(CP, call.Reset(type="Soft"))
            assert res.status == "Accepted"
            await until(lambda: "ResetOrReboot" in types(csms), 20, "reset event")
        reset = next(p for p in await schema_checked(csms) if p["type"] == "ResetOrReboot")
        assert reset["techInfo"] == "Soft Reset by the CSMS"
    lines = logged(cfg.store.path)
    assert [x["type"] for x in lines][:2] == ["StartupOfTheDevice", "ResetOrReboot"]
    assert all(x["critical"] for x in lines[:2])


async def test_wrong_password_is_logged_and_told_to_the_csms_once_it_gets_through(pki):  # noqa: F811
    pw = str(pki / "ocpp.pass")
    async with (
        csms_running(credentials={CP: "another-password-000"}) as csms,
        ocpp_service(config(pki, csms.url, 1, password_file=pw)),
    ):
        await until(lambda: len(csms.auth_failures) >= 3, 20, "three refused connects")
        csms.credentials = {CP: PASSWORD}  # the operator fixes the CSMS side
        await until(lambda: "FailedToAuthenticateAtCsms" in types(csms), 20, "delivered")
    failed = [x for x in logged(pki / "evedge.db") if x["type"] == "FailedToAuthenticateAtCsms"]
    assert len(failed) == 1  # one per failure streak, not one per retry
    assert failed[0]["tech_info"] == "HTTP 401 at connect"
    assert types(csms).count("FailedToAuthenticateAtCsms") == 1


async def test_a_csms_certificate_that_does_not_verify_is_an_event_kept_until_sent(pki):  # noqa: F811
    files = dict(password_file=str(pki / "ocpp.pass"), ca_file=str(pki / "other-ca.pem"))
    async with csms_running(
        ssl=server_ssl(pki, client_cert=False), credentials={CP: PASSWORD}
    ) as csms:
        cfg = config(pki, csms.url, 2, **files)
        async with ocpp_service(cfg):
            await until(
                lambda: any(x["type"] == "InvalidCsmsCertificate" for x in _lines(pki)), 20, "log"
            )
        assert csms.connections.get(CP, 0) == 0
        # Queued in the durable outbox while the CSMS could not be trusted ...
        with sqlite3.connect(pki / "evedge.db") as c:
            queued = c.execute(
                "SELECT payload FROM ocpp_outbox WHERE action = 'SecurityEventNotification' "
                "AND delivered_ts IS NULL"
            ).fetchall()
        assert [json.loads(q[0])["type"] for q in queued] == ["InvalidCsmsCertificate"]
        # ... and delivered once the right CA is configured.
        files["ca_file"] = str(pki / "ca.pem")
        async with ocpp_service(config(pki, csms.url, 2, **files)):
            await until(lambda: "InvalidCsmsCertificate" in types(csms), 20, "delivered")
        sent = await schema_checked(csms)
        info = next(p for p in sent if p["type"] == "InvalidCsmsCertificate")
        assert "certificate verify failed" in info["techInfo"] or info["techInfo"]


def _lines(tmp: Path) -> list[dict]:
    return logged(tmp / "evedge.db") if log_path_for(tmp / "evedge.db").exists() else []


def test_outbox_migration_keeps_rows_trigger_and_sequence(tmp_path):
    """The rebuild of ocpp_outbox (its CHECK now admits SecurityEventNotification) keeps
    every row, the never-delete trigger and the seq counter (message ids never repeat)."""
    rebuild = next(m for m in MIGRATIONS if m.name.endswith("security event notifications"))
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    for m in MIGRATIONS[: MIGRATIONS.index(rebuild)]:
        for stmt in statements(m.sql):
            conn.execute(stmt)
    conn.execute(f"PRAGMA user_version = {rebuild.version - 1}")
    add = "INSERT INTO ocpp_outbox (session_id, connector, action, payload, created_ts) VALUES "
    conn.execute(add + "('s1', 1, 'StartTransaction', '{}', 1)")
    conn.execute(add + "('s1', 1, 'MeterValues', '{}', 2)")
    conn.execute("UPDATE ocpp_outbox SET delivered_ts = 3 WHERE seq = 2")
    conn.execute("DELETE FROM ocpp_outbox WHERE seq = 2")  # pruned: seq 2 must stay used
    conn.close()
    Store(tmp_path / "s.db").close()  # migrates
    with sqlite3.connect(tmp_path / "s.db") as c:
        assert c.execute("SELECT seq, action FROM ocpp_outbox").fetchall() == [
            (1, "StartTransaction")
        ]
        cur = c.execute(add + "('', 0, 'SecurityEventNotification', '{}', 4)")
        assert cur.lastrowid == 3
        with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
            c.execute("DELETE FROM ocpp_outbox")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            c.execute(add + "('', 0, 'Heartbeat', '{}', 5)")


async def test_invalid_frames_and_a_security_key_change_are_events(tmp_path):
    async with csms_running() as csms:
        cfg = ocpp_config(tmp_path, csms.url)
        async with ocpp_rig(cfg, csms):
            for n in range(3):  # a burst: one event, the rest counted into the next one
                answer = await csms.send_raw(CP, f'[2, "bad-{n}", "Reset", {{"type": 5}}]')
                assert answer[0] == 4
            res = await csms.call(CP, call.ChangeConfiguration(key="SecurityProfile", value="0"))
            assert res.status == "Accepted"
            await until(
                lambda: "ReconfigurationOfSecurityParameters" in types(csms), 20, "reconfig"
            )
        invalid = [p for p in await schema_checked(csms) if p["type"] == "InvalidMessages"]
        assert len(invalid) == 1 and "Reset refused" in invalid[0]["techInfo"]
        change = next(
            p for p in notifications(csms) if p["type"] == "ReconfigurationOfSecurityParameters"
        )
        assert change["techInfo"] == "SecurityProfile changed by the CSMS"


async def test_a_broken_billing_store_at_start_is_a_tamper_event_at_the_csms(tmp_path):
    async with csms_running() as csms:
        cfg = ocpp_config(tmp_path, csms.url)
        Store(cfg.store.path).close()
        with sqlite3.connect(cfg.store.path) as c:
            c.execute("DROP TRIGGER charge_records_immutable")
        async with ocpp_rig(cfg, csms):
            await until(lambda: "TamperDetectionActivated" in types(csms), 20, "tamper event")
    tamper = next(p for p in notifications(csms) if p["type"] == "TamperDetectionActivated")
    assert "charge_records_immutable" in tamper["techInfo"]
    assert any(
        x["type"] == "TamperDetectionActivated" and x["critical"] for x in logged(cfg.store.path)
    )


async def test_a_replayed_mqtt_command_is_an_event_on_the_security_stream(tmp_path, broker):
    backend = Backend(broker).connect()
    cfg = with_mqtt(billed_config(tmp_path), broker)
    schema = json.loads((COMMITTED / "security-events.json").read_text())
    try:
        async with running(cfg):
            payload = {"id": "cmd-status-0001", "expires": expires(60), "args": {}}
            for _ in range(2):  # the second one is a replay
                await asyncio.to_thread(backend.command, STATION, "get_status", payload)
            await asyncio.to_thread(
                backend.wait,
                lambda ms: any(
                    m.json()["event"]["type"] == "AttemptedReplayAttacks"
                    for m in ms
                    if m.topic.endswith("/security/events")
                ),
                20,
                "replay event on security/events",
            )
        # At-least-once: a message may come twice, with the same msg_id.
        docs = list({m.json()["msg_id"]: m.json() for m in backend.on("security/events")}.values())
    finally:
        backend.close()
    for d in docs:
        jsonschema.validate(d, schema)
    docs.sort(key=lambda d: d["seq"])
    kinds = [d["event"]["type"] for d in docs]
    assert kinds.index("StartupOfTheDevice") < kinds.index("AttemptedReplayAttacks")
    assert [d["event"]["seq"] for d in docs] == sorted(d["event"]["seq"] for d in docs)
    replay = docs[kinds.index("AttemptedReplayAttacks")]["event"]
    assert "cmd-status-0001" in replay["tech_info"]
    assert any(x["type"] == "AttemptedReplayAttacks" for x in logged(cfg.store.path))


async def test_another_process_records_into_the_same_log_and_outbox(tmp_path):
    """`evedge update apply` (a CLI) records InvalidFirmwareSignature with port_for(cfg): the
    running agent's outbox sends it, and the log's seq stays one sequence."""
    async with csms_running() as csms:
        cfg = ocpp_config(tmp_path, csms.url)
        async with ocpp_rig(cfg, csms):
            await until(lambda: "StartupOfTheDevice" in types(csms), 20, "startup event")
            ev = await asyncio.to_thread(
                port_for(cfg).record, "InvalidFirmwareSignature", "release 9.9: bad signature"
            )
            await until(lambda: "InvalidFirmwareSignature" in types(csms), 20, "sent by the agent")
            await csms.call(CP, call.Reset(type="Soft"))  # the agent records again, after it
            await until(lambda: "ResetOrReboot" in types(csms), 20, "reset event")
    seqs = [x["seq"] for x in logged(cfg.store.path)]
    assert seqs == list(range(1, len(seqs) + 1)) and ev.seq in seqs
    assert [x["type"] for x in logged(cfg.store.path)][-2:] == [
        "InvalidFirmwareSignature",
        "ResetOrReboot",
    ]
