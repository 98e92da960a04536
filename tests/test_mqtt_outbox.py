"""The MQTT outbox on a real store file: numbering, the charge-record cursor, retention."""

from __future__ import annotations

import itertools
import json
import sqlite3

import pytest
from pydantic import ValidationError

from agent.events import DeviceHealth, HealthState, SessionEvent, utcnow
from agent.mqtt.outbox import Outbox, Outgoing, Retention
from agent.mqtt.topics import Stream, Topics
from agent.store.db import open_db

TOPICS = Topics("evedge/v1", "ST-1")


def outbox(tmp_path, max_rows: int = 1000, min_free_mb: float = 0) -> Outbox:
    return Outbox(tmp_path / "evedge.db", TOPICS, Retention(max_rows, min_free_mb))


def telemetry(i: int = 0) -> Outgoing:
    now = utcnow()
    reading = dict(device="m", quantity="power_w", value=i, unit="W", ts=now)
    data = dict(interval_start=now, interval_end=now, samples=1, readings=[reading])
    return Outgoing(Stream.TELEMETRY, data)


def session_event(i: int) -> Outgoing:
    ev = SessionEvent(connector=1, status="Charging", kind="progress", energy_wh=i)
    return Outgoing(Stream.SESSION_EVENTS, {"event": ev})


def health() -> Outgoing:
    ev = DeviceHealth(device="m", bus="lan", state=HealthState.OK)
    return Outgoing(Stream.HEALTH, {"health": ev})


def test_each_stream_numbers_from_one_and_never_reuses_a_number(tmp_path):
    ob = outbox(tmp_path)
    msgs = ob.add([telemetry(), session_event(1), telemetry(), session_event(2)])
    assert [(m.stream, m.seq) for m in msgs] == [
        ("telemetry", 1),
        ("sessions/events", 1),
        ("telemetry", 2),
        ("sessions/events", 2),
    ]
    assert len({m.msg_id for m in msgs}) == 4
    rows = ob.pending(0, 10)
    assert ob.delivered([r.id for r in rows]) == 4
    assert ob.backlog() == {}
    again = ob.add([telemetry()])
    assert again[0].seq == 3  # numbering survives deleting the delivered rows
    assert ob.pending(0, 10)[0].id > rows[-1].id  # ids are never reused either
    payload = json.loads(ob.pending(0, 10)[0].payload)
    assert payload["station"] == "ST-1" and payload["seq"] == 3 and payload["v"] == 1
    ob.close()


def test_an_invalid_message_commits_nothing_of_its_batch(tmp_path):
    ob = outbox(tmp_path)
    bad = Outgoing(Stream.SESSION_EVENTS, {"event": "not an event"})
    with pytest.raises(ValidationError):
        ob.add([telemetry(), bad])
    assert ob.backlog() == {}
    assert ob.add([telemetry()])[0].seq == 1  # the failed batch consumed no number
    ob.close()


def _insert_record(conn: sqlite3.Connection, seq: int) -> None:
    now = 1_700_000_000_000_000 + seq
    conn.execute(
        "INSERT INTO sessions (id, connector, state, status, started_ts, ended_ts, auth_method, "
        "id_token, id_token_type, meter_device, start_wh, tracker_json, updated_ts) "
        "VALUES (?, 1, 'closed', 'Available', ?, ?, 'Remote', 'T', 'RFID', 'm', 0, '{}', ?)",
        (f"s{seq}", now, now, now),
    )
    body = json.dumps({"session_id": f"s{seq}", "energy_wh": seq})
    conn.execute(
        "INSERT INTO charge_records (seq, id, session_id, prev_hash, hash, body, connector, "
        "started_ts, ended_ts, energy_wh, created_ts) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
        (seq, f"R-{seq}", f"s{seq}", "0" * 64, f"{seq:064x}", body, now, now, seq, now),
    )


def test_charge_records_follow_the_cursor_once_each_and_are_marked_on_puback(tmp_path):
    ob = outbox(tmp_path)
    conn = open_db(tmp_path / "evedge.db")
    for seq in (1, 2, 3):
        _insert_record(conn, seq)
    assert ob.add_charge_records(limit=2) == 2
    assert ob.add_charge_records(limit=2) == 1
    assert ob.add_charge_records() == 0  # the cursor moved with the enqueue: no double
    _insert_record(conn, 4)
    ob.close()
    ob = outbox(tmp_path)  # a restart: the cursor is durable
    assert ob.add_charge_records() == 1
    rows = ob.pending(0, 10)
    docs = [json.loads(r.payload) for r in rows]
    assert [d["record_seq"] for d in docs] == [1, 2, 3, 4]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4]
    assert docs[0]["body"] == {"session_id": "s1", "energy_wh": 1}
    ob.delivered([rows[0].id, rows[2].id])
    marked = conn.execute("SELECT id FROM charge_records WHERE delivered_ts IS NOT NULL")
    assert sorted(r[0] for r in marked) == ["R-1", "R-3"]
    conn.close()
    ob.close()


def test_retention_thins_old_telemetry_first_and_never_drops_kept_streams(tmp_path):
    ob = outbox(tmp_path, max_rows=1000)
    ob.add([session_event(i) for i in range(300)])
    ob.add([health() for _ in range(100)])
    ob.add([telemetry(i) for i in range(1200)])
    assert ob.short_of_room()
    dropped = ob.thin()
    assert not ob.short_of_room()
    assert set(dropped) == {"telemetry"}  # health is touched only once telemetry is gone
    left = ob.backlog()
    assert left["sessions/events"] == 300 and left["health"] == 100
    assert sum(left.values()) <= 900
    seqs = [json.loads(r.payload)["seq"] for r in ob.pending(0, 10_000) if r.stream == "telemetry"]
    # Thinned, not truncated: the oldest part got sparser, the newest is complete.
    assert seqs[-300:] == list(range(901, 1201))
    assert seqs[0] == 1 and all(b - a >= 2 for a, b in itertools.pairwise(seqs[:50]))
    assert seqs == sorted(seqs)
    assert ob.thinned() == {"telemetry": dropped["telemetry"]}
    ob.close()


def test_retention_drops_health_after_telemetry_but_never_kept_messages(tmp_path):
    ob = outbox(tmp_path, max_rows=1000)
    ob.add([session_event(i) for i in range(1100)])
    ob.add([health() for _ in range(50)])
    ob.add([telemetry(i) for i in range(50)])
    dropped = ob.thin()
    assert dropped["telemetry"] == 50 and dropped["health"] == 50
    assert ob.backlog() == {"sessions/events": 1100}  # over the limit, but kept: never dropped
    ob.close()


def test_low_free_disk_counts_as_short_of_room(tmp_path):
    ob = outbox(tmp_path, max_rows=10**6, min_free_mb=10**12)  # more than any disk has free
    ob.add([telemetry(i) for i in range(10)] + [session_event(1)])
    assert ob.short_of_room()
    ob.thin()
    assert ob.backlog() == {"sessions/events": 1}
    ob.close()


def test_a_command_id_is_first_seen_once_even_across_restarts(tmp_path):
    ob = outbox(tmp_path)
    far = 2**60
    assert ob.first_sight("cmd-0001", "get_status", far)
    assert not ob.first_sight("cmd-0001", "get_status", far)
    ob.close()
    ob = outbox(tmp_path)
    assert not ob.first_sight("cmd-0001", "stop_session", far)
    assert ob.first_sight("cmd-0002", "get_status", 1)  # expired at once: forgotten next time
    assert ob.first_sight("cmd-0003", "get_status", far)
    assert ob.first_sight("cmd-0002", "get_status", far)
    ob.close()


def _commit_syncs(ob: Outbox, work) -> list[int]:
    """The `synchronous` level in force at each COMMIT that `work(ob)` makes."""
    levels: list[int] = []

    def trace(sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            levels.append(current[0])
        elif sql.upper().startswith("PRAGMA SYNCHRONOUS ="):
            current[0] = {"NORMAL": 1, "FULL": 2}[sql.split("=")[1].strip().upper()]

    current = [ob._conn.execute("PRAGMA synchronous").fetchone()[0]]
    ob._conn.set_trace_callback(trace)
    try:
        work(ob)
    finally:
        ob._conn.set_trace_callback(None)
    assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again afterwards
    return levels


def test_live_streams_and_acknowledgements_commit_unsynced_everything_else_synced(tmp_path):
    ob = outbox(tmp_path)
    assert _commit_syncs(ob, lambda o: o.add([telemetry(), health()])) == [1]
    # One billing-relevant message makes the whole transaction durable.
    assert _commit_syncs(ob, lambda o: o.add([telemetry(), session_event(1)])) == [2]
    assert _commit_syncs(ob, lambda o: o.add([session_event(2)])) == [2]
    ids = [r.id for r in ob.pending(0, 100)]
    assert _commit_syncs(ob, lambda o: o.delivered(ids)) == [1]
    assert ob.pending(0, 100) == []
    # After the unsynced commits each stream's numbers still advance (telemetry 3, sessions 3).
    assert [m.seq for m in ob.add([telemetry(), session_event(3)])] == [3, 3]
