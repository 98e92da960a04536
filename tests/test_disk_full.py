"""A full disk is a state, not a crash (issue 17 item 3).

Two ways to fill a store: SQLite's `PRAGMA max_page_count` (deterministic, any machine) for
the store API and its writers, and a real 2 MB tmpfs (needs root and mount; skipped with the
reason otherwise) for the whole agent: `evedge sim` + `evedge run` with billing and MQTT to a
real mosquitto, the disk filled by another file while a car charges.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent.bus import EventBus
from agent.events import DeviceHealth, HealthState, Reading, utcnow
from agent.sessions.store import SessionStore
from agent.store import DiskFullError, Store, StoreWriter, disk_full_tolerated, transaction
from agent.store.db import StoreConnection
from agent.store.space import StoreSpace, configure_space, dropped_on_full, space_for


def reading(i: int) -> Reading:
    return Reading(device="m", quantity="power_w", value=float(i), unit="W", ts=utcnow())


def fill_pages(conn: sqlite3.Connection) -> None:
    """Cap the connection's file at its current size: every growing write now fails."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_store_raises_disk_full_and_keeps_what_was_committed(tmp_path):
    store = Store(tmp_path / "evedge.db")
    store.append_readings([reading(0)])
    fill_pages(store._conn)
    with pytest.raises(DiskFullError) as err:
        store.append_readings([reading(i) for i in range(5000)])
    assert isinstance(err.value, sqlite3.OperationalError)  # old handlers still catch it
    assert "disk is full" in str(err.value) and "never delete the store" in str(err.value)
    assert store.count_readings() == 1  # rolled back whole, the earlier row kept
    assert store.space.full_events == 1
    store.close()


def test_a_non_billing_writer_drops_and_counts_instead_of_ending(tmp_path):
    store = Store(tmp_path / "evedge.db")
    fill_pages(store._conn)
    before = dropped_on_full().get("test writer", 0)
    ran_on = False
    with disk_full_tolerated("test writer"):
        store.append_readings([reading(i) for i in range(5000)])
    ran_on = True
    assert ran_on and dropped_on_full()["test writer"] == before + 1
    with pytest.raises(ValueError), disk_full_tolerated("test writer"):
        raise ValueError("other errors pass through")
    store.close()


async def test_the_readings_writer_survives_a_full_store_and_resumes(tmp_path):
    store, bus = Store(tmp_path / "evedge.db"), EventBus()
    writer = StoreWriter(store, bus, commit_interval_s=0.05, prune_interval_s=3600)
    task = asyncio.create_task(writer.run())
    fill_pages(store._conn)
    for i in range(3000):
        bus.publish(reading(i))
    for _ in range(400):
        if writer.stats.thinned >= 3000:
            break
        await asyncio.sleep(0.05)
    assert writer.stats.thinned >= 3000 and not task.done()
    assert writer.counters()["pending"] == 0  # given up on, not retried forever
    store._conn.execute("PRAGMA max_page_count = 1073741823")  # room again
    bus.publish(reading(1))
    for _ in range(200):
        if store.count_readings():
            break
        await asyncio.sleep(0.05)
    assert store.count_readings() == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    store.close()


async def test_below_min_free_readings_stop_and_health_is_still_kept(tmp_path):
    store, bus = Store(tmp_path / "evedge.db"), EventBus()
    store.space = StoreSpace(store.path, min_free_mb=100, free=lambda _p: 99.0)
    writer = StoreWriter(store, bus, commit_interval_s=0.05, prune_interval_s=3600)
    task = asyncio.create_task(writer.run())
    bus.publish(reading(1))
    bus.publish(DeviceHealth(device="m", bus="lan", state=HealthState.OK))
    for _ in range(200):
        if store.health():
            break
        await asyncio.sleep(0.05)
    assert [h.device for h in store.health()] == ["m"]
    assert store.count_readings() == 0 and writer.stats.thinned == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    store.close()


def test_a_low_disk_halves_the_ring_so_billing_reuses_its_pages(tmp_path):
    store, bus = Store(tmp_path / "evedge.db"), EventBus()
    store.append_readings([reading(i) for i in range(2000)])
    store.space = StoreSpace(store.path, min_free_mb=100, free=lambda _p: 10.0)
    writer = StoreWriter(store, bus, max_rows=500_000)
    asyncio.run(writer._prune())
    assert store.count_readings() == 1000
    store.close()


def test_the_reserve_is_released_on_the_first_full_write_then_billing_blocks(tmp_path):
    db = tmp_path / "evedge.db"
    space = configure_space(db, min_free_mb=0, reserve_mb=0.2)
    sessions = SessionStore(db)
    assert space.ensure_reserve() and space.reserve_path.stat().st_size == 200_000
    # Blocks really allocated (a sparse file would reserve nothing).
    assert space.reserve_path.stat().st_blocks * 512 >= 200_000
    fill_pages(sessions._conn)
    big = "x" * 200_000
    with pytest.raises(DiskFullError), sessions.tx() as c:
        c.execute("INSERT INTO billing_state (key, value) VALUES ('a', ?)", (big,))
    assert not space.reserve_path.exists() and space.reserve_released
    assert not space.billing_blocked  # the reserve made room: the next write may pass
    with pytest.raises(DiskFullError), sessions.tx() as c:
        c.execute("INSERT INTO billing_state (key, value) VALUES ('b', ?)", (big,))
    assert space.billing_blocked  # no reserve left: new sessions are refused
    sessions._conn.execute("PRAGMA max_page_count = 1073741823")
    with sessions.tx() as c:
        c.execute("INSERT INTO billing_state (key, value) VALUES ('c', 'ok')")
    assert not space.billing_blocked  # a billing write passed again
    sessions.close()


def test_a_telemetry_write_failing_never_blocks_billing(tmp_path):
    store = Store(tmp_path / "evedge.db")
    fill_pages(store._conn)
    with pytest.raises(DiskFullError), transaction(store._conn) as c:
        c.execute(
            "INSERT INTO device_health (device, health, ts) VALUES ('m', ?, 0)", ("x" * 9999,)
        )
    assert store.space.full_events == 1 and not store.space.billing_blocked
    store.close()


def test_billing_unblocks_when_free_space_grows(tmp_path):
    free = [5.0]
    space = StoreSpace(tmp_path / "evedge.db", free=lambda _p: free[0])
    space.full(sqlite3.connect(":memory:"), billing=True)
    assert space.billing_blocked
    free[0] = 5.5
    space._free_at = -10  # the cache would hide the change for 2 s
    assert space.billing_blocked  # half a MB is not enough to try again
    free[0] = 7.0
    space._free_at = -10
    assert not space.billing_blocked


def test_no_reserve_when_it_would_eat_the_min_free_margin(tmp_path):
    space = StoreSpace(tmp_path / "evedge.db", min_free_mb=50, reserve_mb=8, free=lambda _p: 55.0)
    assert not space.ensure_reserve() and not space.reserve_path.exists()
    space.free_mb()
    assert space.state()["low"] is False


# ---------------------------------------------------------------- the agent on a 2 MB disk


@pytest.fixture
def tiny_volume(tmp_path):
    """A 2 MB tmpfs (needs root and mount); skipped with the reason where that fails."""
    vol = tmp_path / "vol"
    vol.mkdir()
    try:
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(vol)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root and CAP_SYS_ADMIN needed): {out.stderr}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], capture_output=True, timeout=10)


def fill_disk(path: Path) -> None:
    """Write `path` until the file system says ENOSPC."""
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        assert e.errno == 28, e


def sessions_of(db: Path) -> list:
    with SessionStore(db, readonly=True) as s:
        return s.sessions()


async def unplug(control: int, text, agent) -> None:
    """Unplug the car and wait until the agent saw it: it switches the EVSE off (a session
    ran) or the connector becomes Available."""
    from hil.control import send_command
    from hil.procs import until

    signs = ("quantity=charging_enabled value=False", "status=Available")
    before = [text().count(s) for s in signs]
    await send_command(control, {"cmd": "unplug", "connector": 1})
    seen = lambda: any(text().count(s) > n for s, n in zip(signs, before, strict=True))  # noqa: E731
    await until(seen, 30, "the agent saw the unplug", proc=agent)


async def test_the_agent_runs_on_a_2mb_disk_through_full_and_back(tiny_volume, tmp_path, broker):
    from mqtt_helpers import Backend

    from hil.control import send_command
    from hil.procs import EVEDGE, fast_billing, sim_ready, start_agent, start_sim, until
    from hil.procs import write_station as write

    mqtt = f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port}
tls = false
telemetry_interval_s = 0.5
reconnect_min_s = 0.2
reconnect_max_s = 1
"""
    st = write(tiny_volume, station_id="TINY", extra=fast_billing(tiny_volume) + mqtt)
    # Thresholds scaled to the 2 MB volume: 0.6 MB kept for billing, a 0.3 MB reserve.
    st.path.write_text(
        st.text.replace("[store]\n", "[store]\nmin_free_disk_mb = 0.6\nreserve_mb = 0.3\n")
    )
    backend = Backend(broker, client_id="tiny-backend").connect()
    log = tmp_path / "agent.log"
    text = lambda: log.read_text(errors="replace") if log.exists() else ""  # noqa: E731
    fillers = [tiny_volume / f"filler{i}" for i in range(2)]
    with start_sim(st.path, tmp_path / "sim.log") as sim:
        await sim_ready(st.control, proc=sim)
        agent = start_agent(st.path, log)
        try:
            await until(lambda: backend.on("telemetry"), 30, "first telemetry", proc=agent)
            await send_command(st.control, {"cmd": "plug_in", "connector": 1})
            await until(lambda: sessions_of(st.db), 30, "a session", proc=agent)

            fill_disk(fillers[0])  # another program fills the disk while the car charges
            await until(lambda: "store.reserve_released" in text(), 30, "reserve", proc=agent)
            fill_disk(fillers[1])  # and takes the reserve's room too
            await until(lambda: "store.billing_blocked" in text(), 30, "blocked", proc=agent)
            await until(lambda: "store.disk_full" in text(), 30, "dropped writes", proc=agent)
            await unplug(st.control, text, agent)
            assert agent.poll() is None, agent.log_tail()

            for f in fillers:  # room again: the session's record is written (late, if need be)
                f.unlink()
            await until(lambda: closed_with_records(st.db), 30, "the record", proc=agent)
            await send_command(st.control, {"cmd": "plug_in", "connector": 1})
            await until(lambda: len(sessions_of(st.db)) == 2, 30, "a new session", proc=agent)
            n = len(backend.on("telemetry"))
            await until(lambda: len(backend.on("telemetry")) > n, 30, "telemetry", proc=agent)
        finally:
            rc = await agent.stop_async()
            backend.close()
    assert rc == 0, agent.log_tail()
    assert "Traceback" not in text()
    verify = subprocess.run(
        [EVEDGE, "billing", "verify", "--config", str(st.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def closed_with_records(db: Path) -> bool:
    with SessionStore(db, readonly=True) as s:
        sessions = s.sessions()
        records = {r.session_id for r in s.records()}
    return bool(sessions) and all(x.state == "closed" and x.id in records for x in sessions)


async def test_the_agent_starts_on_a_2mb_disk_and_says_why_it_keeps_no_readings(
    tiny_volume, tmp_path
):
    from hil.procs import sim_ready, start_agent, start_sim, until
    from hil.procs import write_station as write

    st = write(tiny_volume, station_id="TINY")  # the default [store] min_free_disk_mb: 50
    log = tmp_path / "agent.log"
    text = lambda: log.read_text(errors="replace") if log.exists() else ""  # noqa: E731
    with start_sim(st.path, tmp_path / "sim.log") as sim:
        await sim_ready(st.control, proc=sim)
        agent = start_agent(st.path, log)
        try:
            await until(lambda: "store.disk_low" in text(), 30, "the warning", proc=agent)
            await until(lambda: "device.ok" in text(), 30, "polling", proc=agent)
        finally:
            rc = await agent.stop_async()
    said = " ".join(text().split())
    assert rc == 0, agent.log_tail()
    assert "readings are not stored" in said and "store.reserve_skipped" in said
    with Store(st.db, readonly=True) as store:
        assert store.count_readings() == 0  # the 2 MB are left to billing


def test_the_agent_says_why_when_the_disk_cannot_hold_the_store(tiny_volume, tmp_path):
    from hil.procs import EVEDGE
    from hil.procs import write_station as write

    st = write(tiny_volume, station_id="TINY")
    fill_disk(tiny_volume / "filler")
    out = subprocess.run(
        [EVEDGE, "run", "--config", str(st.path), "--console-logs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 6, out.stdout + out.stderr  # Exit.DISK_FULL: systemd retries
    said = " ".join(out.stderr.split())
    assert "disk is full" in said and "cannot record sessions or bill" in said
    assert "Traceback" not in out.stderr


def test_space_for_is_one_policy_per_file(tmp_path):
    a = space_for(tmp_path / "x.db")
    assert space_for(str(tmp_path / "x.db")) is a and space_for(tmp_path / "y.db") is not a


# ---------------------------------------------------------------- sessions on a full store


def cap_all(cap: bool) -> None:
    """Cap (or uncap) the file size for every store connection of this process (SQLite's
    page limit is per connection)."""
    for c in gc.get_objects():
        if isinstance(c, StoreConnection):
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed
                if cap:
                    fill_pages(c)
                else:
                    c.execute("PRAGMA max_page_count = 1073741823")


def exhaust(conn: sqlite3.Connection) -> None:
    """Make the store full for every connection of this process: no file growth, no free
    page left."""
    conn.execute("CREATE TABLE IF NOT EXISTS test_filler (b BLOB)")
    cap_all(True)
    size = 65536
    while size >= 64:
        try:
            conn.execute("INSERT INTO test_filler VALUES (zeroblob(?))", (size,))
        except sqlite3.OperationalError:
            size //= 2


async def test_a_refused_record_blocks_new_sessions_until_it_is_written(tmp_path):
    from sessions_helpers import CARD, billed_config, running

    from agent.sessions.connector import CommandRefused
    from agent.sessions.model import card_token

    cfg = billed_config(tmp_path, billing="[billing.sampling]\ninterval_s = 0.2")
    # No reserve; and "below min_free" all along, as on a real full disk: no reading may take
    # the room billing needs (the readings ring never grows).
    store = cfg.store.model_copy(update={"reserve_mb": 0, "min_free_disk_mb": 1e6})
    cfg = cfg.model_copy(update={"store": store})
    async with running(cfg) as rig:
        await rig.card_charging()
        conn, lock = rig.engine.store._conn, rig.engine.store._lock
        with lock:  # the engine's own connection, used by its worker threads
            exhaust(conn)
        # A meter sample fails first (its table's pages are full): billing is blocked.
        await rig.until(lambda: space_for(cfg.store.path).billing_blocked, 15, "blocked")
        rig.sim.unplug(1)
        await rig.until(lambda: rig.conn.unwritten is not None, 15, "the record refused")
        assert rig.conn.session is None  # the car is gone; its record waits in memory
        with rig.store() as st:
            assert st.records() == []
        rig.sim.plug_in(1)
        await rig.until(lambda: rig.conn.cp in ("B", "C"), 5, "plugged")
        with pytest.raises(CommandRefused, match="disk is full"):
            await rig.engine.authorize(1, card_token(CARD))
        assert rig.conn.unwritten is not None
        facts = rig.agent.diagnosis.facts.snapshot(utcnow())
        assert facts["records_unwritten"] == 1  # rule store_cannot_bill: a critical fault

        cap_all(False)  # room again
        rec = await rig.record(1)
        assert rig.conn.unwritten is None
        with rig.store() as st:
            assert st.session(rec.session_id).state == "closed"
        rig.sim.unplug(1)
        await rig.status("Available")
        await rig.card_charging()  # a new session starts
        assert rig.conn.session is not None and rig.conn.session.id != rec.session_id


def test_telemetry_commits_unsynced_billing_and_outboxes_fully_synced(tmp_path):
    """Flash wear (issue 16): the readings ring's connection commits with synchronous=NORMAL
    (no fsync per commit); every other writer keeps FULL (a committed row survives a power
    cut)."""
    from agent.mqtt.outbox import Outbox, Retention
    from agent.mqtt.topics import Topics

    db = tmp_path / "evedge.db"
    level = lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
    telemetry, plain = Store(db, telemetry=True), Store(db)
    sessions = SessionStore(db)
    outbox = Outbox(db, Topics("evedge/v1", "ST"), Retention(1000, 0))
    assert level(telemetry._conn) == 1  # NORMAL
    assert level(plain._conn) == level(sessions._conn) == level(outbox._conn) == 2  # FULL
    for c in (telemetry, plain, sessions, outbox):
        c.close()
