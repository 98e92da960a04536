"""The durable store: exact round-trips, ring pruning, migrations, the writer, kill -9 safety."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.bus import EventBus
from agent.events import DeviceHealth, HealthState, Quality, Reading
from agent.store import (
    LATEST_VERSION,
    MIGRATIONS,
    Migration,
    SchemaTooNewError,
    Store,
    StoreCorruptError,
    StoreError,
    StoreWriter,
    open_db,
    schema_version,
)
from agent.store import db as store_db
from agent.store.readings import _row_to_reading, ts_to_us

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
# Writer tests use fixed past timestamps: keep them out of reach of the age bound.
KEEP = 365_000
CHILD = Path(__file__).with_name("store_writer_child.py")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "evedge.db")
    yield s
    s.close()


def reading(device="m1", quantity="voltage_l1", value=230.0, ts=T0, **kw) -> Reading:
    return Reading(ts=ts, device=device, quantity=quantity, value=value, **kw)


def same_value(a, b) -> bool:
    """Equal value *and* type; NaN equals NaN; -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return a == b


# --- round trips ----------------------------------------------------------------------------

VALUES = [
    0,
    -5,
    2**63 - 1,
    -(2**63),
    2**64 + 3,
    -(2**70),
    1.0,
    0.1,
    -0.0,
    1e300,
    5e-324,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    "",
    "C2 fault: ünïcode Ω ' \" ; DROP TABLE readings",
    "42",
    None,
]


def test_every_value_type_round_trips_exactly(store):
    written = [
        reading(
            quantity="q",
            value=v,
            ts=T0 + timedelta(microseconds=i),
            unit="Wh",
            quality=Quality.NOT_AVAILABLE if v is None else Quality.GOOD,
        )
        for i, v in enumerate(VALUES)
    ]
    assert store.append_readings(written) == len(VALUES)

    back = store.history("m1", "q")
    assert len(back) == len(VALUES)
    for w, b in zip(written, back, strict=True):
        assert same_value(b.value, w.value), (w.value, b.value)
        assert b.ts == w.ts and b.ts.tzinfo is not None and b.ts.utcoffset() == timedelta(0)
        assert b.ts.microsecond == w.ts.microsecond
        assert (b.device, b.quantity, b.unit, b.quality) == (w.device, w.quantity, "Wh", w.quality)
    assert back[-1].quality is Quality.NOT_AVAILABLE


def test_timestamp_with_other_offset_is_the_same_instant_in_utc(store):
    cest = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 30, 0, 999999, tzinfo=cest)
    store.append_readings([reading(ts=local)])
    (back,) = store.latest()
    assert back.ts == local
    assert back.ts.tzinfo == UTC and back.ts.hour == 12 and back.ts.microsecond == 999999


def test_naive_timestamps_never_reach_the_database(store):
    with pytest.raises(ValueError, match="naive"):
        ts_to_us(datetime(2026, 1, 1))


def test_append_is_one_transaction(store):
    good = reading()
    # model_copy skips validation: the NOT NULL constraint fails on the second row, after
    # the first was inserted, so only a rollback explains an empty table.
    bad = reading(ts=T0 + timedelta(seconds=1)).model_copy(update={"device": None})
    with pytest.raises(sqlite3.IntegrityError):
        store.append_readings([good, bad])
    assert store.count_readings() == 0
    assert store.append_readings([good]) == 1  # and the connection is still usable


def test_malformed_rows_are_rejected_by_the_schema(store):
    conn = store._conn
    insert = (
        "INSERT INTO readings (ts, device, quantity, vtype, value_num, value_text, unit, quality)"
        " VALUES (0, 'd', 'q', ?, ?, ?, '', 'good')"
    )
    for vtype, num, text in [
        ("bool", 2, None),
        ("int", 1.5, None),
        ("str", None, None),
        ("none", 0, None),
        ("blob", None, None),
        ("float", 1.0, "x"),
    ]:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert, (vtype, num, text))


# --- queries --------------------------------------------------------------------------------


def test_latest_is_newest_per_device_and_quantity(store):
    store.append_readings(
        [
            reading("m1", "voltage_l1", 229.0, T0),
            reading("m1", "voltage_l1", 231.0, T0 + timedelta(seconds=2)),
            # inserted later but older: latest() goes by ts, not by insertion order
            reading("m1", "voltage_l1", 100.0, T0 + timedelta(seconds=1)),
            reading("m1", "energy_import_wh", 1000, T0),
            reading("m1", "energy_import_wh", 1010, T0 + timedelta(seconds=5)),
            reading("evse1", "cp_state", "A", T0),
            reading("evse1", "cp_state", "C", T0 + timedelta(seconds=3)),
        ]
    )
    # same ts twice: the later insert wins
    store.append_readings([reading("evse1", "cp_state", "B", T0 + timedelta(seconds=3))])

    latest = {(r.device, r.quantity): r for r in store.latest()}
    assert len(latest) == 3
    assert latest["m1", "voltage_l1"].value == 231.0
    assert latest["m1", "voltage_l1"].ts == T0 + timedelta(seconds=2)
    assert latest["m1", "energy_import_wh"].value == 1010
    assert latest["evse1", "cp_state"].value == "B"

    only_m1 = store.latest("m1")
    assert {r.quantity for r in only_m1} == {"voltage_l1", "energy_import_wh"}
    assert all(r.device == "m1" for r in only_m1)
    assert store.latest("nope") == []


def test_history_since_and_limit(store):
    store.append_readings([reading(value=i, ts=T0 + timedelta(seconds=i)) for i in range(10)])
    store.append_readings([reading(quantity="other", value=99, ts=T0)])

    assert [r.value for r in store.history("m1", "voltage_l1")] == list(range(10))
    since = store.history("m1", "voltage_l1", since=T0 + timedelta(seconds=7))
    assert [r.value for r in since] == [7, 8, 9]
    # limit keeps the newest, still oldest first
    assert [r.value for r in store.history("m1", "voltage_l1", limit=3)] == [7, 8, 9]
    assert store.history("m2", "voltage_l1") == []


def test_health_round_trip_and_an_older_event_never_wins(store):
    h = DeviceHealth(
        ts=T0,
        device="m1",
        bus="rs485-1",
        state=HealthState.DEGRADED,
        last_good=T0 - timedelta(seconds=3),
        latency_ms=12.5,
        consecutive_failures=2,
        polls=100,
        timeouts=3,
        crc_errors=1,
        exceptions={2: 4, 11: 1},
        last_error="illegal data address",
    )
    store.put_health(h)
    store.put_health(DeviceHealth(ts=T0, device="evse1", bus="tcp", state=HealthState.OK))
    assert store.health()[1] == h

    newer = h.model_copy(update={"ts": T0 + timedelta(seconds=1), "state": HealthState.OFFLINE})
    store.put_health(newer)
    store.put_health(h)  # late arrival of the older one
    by_device = {x.device: x for x in store.health()}
    assert by_device["m1"] == newer
    assert by_device["evse1"].state is HealthState.OK


# --- pruning --------------------------------------------------------------------------------


def test_prune_keeps_the_newest_max_rows(store):
    # inserted newest-first, so "oldest" must come from ts, not from id
    store.append_readings(
        [reading(value=i, ts=T0 + timedelta(seconds=i)) for i in reversed(range(50))]
    )
    deleted = store.prune(max_rows=20, max_age_days=365, now=T0 + timedelta(minutes=1))
    assert deleted == 30
    assert [r.value for r in store.history("m1", "voltage_l1")] == list(range(30, 50))
    assert store.prune(max_rows=20, max_age_days=365, now=T0 + timedelta(minutes=1)) == 0


def test_prune_drops_rows_older_than_max_age(store):
    now = T0 + timedelta(days=30)
    store.append_readings(
        [
            reading(value=1, ts=now - timedelta(days=20)),
            reading(value=2, ts=now - timedelta(days=14, seconds=1)),
            reading(value=3, ts=now - timedelta(days=13)),
            reading(value=4, ts=now),
        ]
    )
    store.put_health(DeviceHealth(ts=T0, device="m1", bus="b", state=HealthState.OK))
    assert store.prune(max_rows=1000, max_age_days=14, now=now) == 2
    assert [r.value for r in store.history("m1", "voltage_l1")] == [3, 4]
    assert len(store.health()) == 1  # other tables are never pruned here


# --- database file, pragmas, migrations -----------------------------------------------------


def test_fresh_database_is_at_latest_version_with_durable_pragmas(tmp_path):
    path = tmp_path / "deep" / "dir" / "evedge.db"
    conn = open_db(path)
    try:
        assert path.exists()
        assert schema_version(conn) == LATEST_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"readings", "device_health"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"readings_device_quantity_ts", "readings_ts"} <= indexes
    finally:
        conn.close()


def test_reopening_is_idempotent_and_keeps_data(tmp_path):
    path = tmp_path / "evedge.db"
    with Store(path) as s:
        s.append_readings([reading()])
    with Store(path) as s:
        assert s.schema_version() == LATEST_VERSION
        assert s.latest() == [reading()]
    with Store(path) as s:
        assert s.count_readings() == 1


def test_future_schema_version_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "evedge.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(SchemaTooNewError, match="newer") as err:
        Store(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, it is a technician's note\n" * 100, os.urandom(8192)],
    ids=["text", "random"],
)
def test_garbage_file_is_refused_naming_the_path_and_never_recreated(tmp_path, content):
    path = tmp_path / "evedge.db"
    path.write_bytes(content)
    with pytest.raises(StoreCorruptError) as err:
        Store(path)
    assert str(path) in str(err.value)
    assert "not a valid SQLite database" in str(err.value)
    assert path.read_bytes() == content


def test_a_foreign_sqlite_database_is_not_adopted(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an evedge store") as err:
        Store(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # not even switched to WAL


def test_migrations_are_numbered_one_by_one():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == LATEST_VERSION


def test_appending_a_migration_upgrades_an_existing_database(tmp_path, monkeypatch):
    path = tmp_path / "evedge.db"
    with Store(path) as s:
        s.append_readings([reading()])
    extra = Migration(
        LATEST_VERSION + 1,
        "test table",
        """
        -- a comment; with a semicolon
        CREATE TABLE t_extra (id INTEGER PRIMARY KEY, note TEXT);
        INSERT INTO t_extra (note) VALUES ('a;b');
        """,
    )
    monkeypatch.setattr(store_db, "MIGRATIONS", (*store_db.MIGRATIONS, extra))
    monkeypatch.setattr(store_db, "LATEST_VERSION", extra.version)
    conn = open_db(path)
    try:
        assert schema_version(conn) == extra.version
        assert conn.execute("SELECT note FROM t_extra").fetchall() == [("a;b",)]
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 1
    finally:
        conn.close()


def test_a_failing_migration_leaves_the_database_at_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "evedge.db"
    Store(path).close()
    broken = Migration(
        LATEST_VERSION + 1,
        "broken",
        "CREATE TABLE t_half (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    monkeypatch.setattr(store_db, "MIGRATIONS", (*store_db.MIGRATIONS, broken))
    monkeypatch.setattr(store_db, "LATEST_VERSION", broken.version)
    with pytest.raises(StoreError, match="no_such_table") as err:
        open_db(path)
    assert str(path) in str(err.value) and f"still at version {LATEST_VERSION}" in str(err.value)
    monkeypatch.undo()
    conn = open_db(path)
    try:
        assert schema_version(conn) == LATEST_VERSION
        assert conn.execute("SELECT name FROM sqlite_master WHERE name='t_half'").fetchall() == []
    finally:
        conn.close()


def test_integrity_check_reports_ok(store):
    store.append_readings([reading()])
    assert store.integrity_check() == "ok"


# --- StoreWriter ----------------------------------------------------------------------------


async def wait_for(predicate, timeout=5.0):
    """Poll `predicate` every few ms; fail the test if it is not true within `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_writer_end_to_end_every_published_event_is_committed(store):
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=KEEP, commit_interval_s=0.02, max_batch=256)
    task = asyncio.create_task(writer.run())
    n = 3000
    for i in range(n):
        bus.publish(reading("m1", "energy_import_wh", i, T0 + timedelta(microseconds=i)))
        if i % 500 == 0:
            await asyncio.sleep(0.01)  # let commits run while more is being published
    bus.publish(DeviceHealth(ts=T0, device="m1", bus="rs485-1", state=HealthState.OK))
    await stop(task)

    assert store.count_readings() == n
    history = store.history("m1", "energy_import_wh", limit=n)
    assert [r.value for r in history] == list(range(n))
    assert [h.device for h in store.health()] == ["m1"]
    assert writer.stats.written == n + 1
    assert writer.stats.batches >= 2  # committed while publishing, not only on cancel
    assert writer.stats.last_commit_ts is not None
    assert writer.dropped == 0
    assert writer.stats.write_errors == 0


async def test_writer_commits_a_full_batch_without_waiting_for_the_interval(store):
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=KEEP, commit_interval_s=60, max_batch=10)
    task = asyncio.create_task(writer.run())
    for i in range(25):
        bus.publish(reading(value=i, ts=T0 + timedelta(seconds=i)))
    await wait_for(lambda: writer.stats.batches >= 2)
    assert store.count_readings() == 20  # the last 5 wait for the interval...
    await stop(task)
    assert store.count_readings() == 25  # ...or for the flush on cancel


async def test_writer_commits_after_the_interval_without_cancel(store):
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=KEEP, commit_interval_s=0.05, max_batch=1000)
    task = asyncio.create_task(writer.run())
    for i in range(3):
        bus.publish(reading(value=i, ts=T0 + timedelta(seconds=i)))
    await wait_for(lambda: writer.stats.written == 3)
    assert store.count_readings() == 3 and writer.stats.batches == 1
    await stop(task)


async def test_writer_keeps_a_failed_batch_and_retries(store, monkeypatch):
    real = store.write_batch
    calls = []

    def flaky(readings, healths):
        calls.append(len(readings))
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(readings, healths)

    monkeypatch.setattr(store, "write_batch", flaky)
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=KEEP, commit_interval_s=0.01)
    task = asyncio.create_task(writer.run())
    for i in range(5):
        bus.publish(reading(value=i, ts=T0 + timedelta(seconds=i)))
    await wait_for(lambda: writer.stats.written == 5)
    await stop(task)
    assert writer.stats.write_errors == 1 and writer.stats.lost == 0
    assert [r.value for r in store.history("m1", "voltage_l1")] == list(range(5))


async def test_cancel_during_an_in_flight_commit_writes_each_event_exactly_once(store, monkeypatch):
    real = store.write_batch
    in_commit = threading.Event()

    def slow(readings, healths):
        in_commit.set()
        time.sleep(0.1)  # a slow fsync
        return real(readings, healths)

    monkeypatch.setattr(store, "write_batch", slow)
    bus = EventBus()
    writer = StoreWriter(store, bus, max_age_days=KEEP, commit_interval_s=0.001, max_batch=5)
    task = asyncio.create_task(writer.run())
    for i in range(5):
        bus.publish(reading(value=i, ts=T0 + timedelta(seconds=i)))
    await wait_for(in_commit.is_set)
    for i in range(5, 8):
        bus.publish(reading(value=i, ts=T0 + timedelta(seconds=i)))
    await stop(task)
    assert [r.value for r in store.history("m1", "voltage_l1")] == list(range(8))
    counters = writer.counters()
    assert counters["written"] == 8 and counters["batches"] == 2
    assert counters["dropped"] == 0 and counters["pending"] == 0


async def test_writer_prunes_the_ring(store):
    old = datetime.now(UTC) - timedelta(days=30)
    store.append_readings([reading(value=i, ts=old + timedelta(seconds=i)) for i in range(10)])
    bus = EventBus()
    writer = StoreWriter(store, bus, max_rows=1000, max_age_days=14, commit_interval_s=0.01)
    task = asyncio.create_task(writer.run())
    await wait_for(lambda: writer.stats.pruned == 10)
    bus.publish(reading(value="fresh", ts=datetime.now(UTC)))
    await wait_for(lambda: writer.stats.written == 1)
    await stop(task)
    assert [r.value for r in store.latest()] == ["fresh"]


# --- kill -9 --------------------------------------------------------------------------------


def _load_child_module():
    spec = importlib.util.spec_from_file_location("store_writer_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kill_9_mid_write_loses_no_committed_row_and_leaves_a_sound_database(tmp_path):
    """SIGKILL a writer process at different moments; every reported commit must survive."""
    expected_reading = _load_child_module().expected_reading
    path = tmp_path / "evedge.db"
    batch = 300
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    last_reported = 0
    # (commits to see before the kill, extra delay): lands between, inside and at commits.
    for commits, delay in [(2, 0.0), (4, 0.002), (7, 0.013)]:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(path), str(batch)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            seen = 0
            while seen < commits:
                line = proc.stdout.readline()
                assert line.startswith("committed "), (line, proc.stderr.read())
                last_reported = int(line.split()[1])
                seen += 1
            if delay:
                # a busy wait is more precise than sleep() at the millisecond scale
                end = time.perf_counter() + delay
                while time.perf_counter() < end:
                    pass
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL

        with Store(path) as s:
            assert s.integrity_check() == "ok"
            count = s.count_readings()
            assert count >= last_reported
            assert count % batch == 0, "a partial batch survived: transactions are not atomic"
            rows = s._conn.execute(
                "SELECT id, ts, device, quantity, vtype, value_num, value_text, unit, quality"
                " FROM readings ORDER BY id"
            ).fetchall()
        assert [r[0] for r in rows] == list(range(1, count + 1))
        for row in rows:
            got, want = _row_to_reading(row), expected_reading(row[0])
            assert got == want and same_value(got.value, want.value), row
