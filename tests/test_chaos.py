"""kill -9 chaos with the cloud attached: a real agent process (`evedge run`, with [ocpp],
[mqtt], [api] and [driver] on) is SIGKILLed at random points over many short simulated
sessions and restarted each time, while the simulator (`evedge sim`) keeps the cars
charging. In the middle of the run the CSMS (hil/csms.py TestCsms, in this process) goes
away for a while and comes back, and the MQTT broker (a real mosquitto) is restarted.

After a final clean restart and drain: no record lost, none duplicated, the chain and the
signatures verify (`evedge billing verify`), every session has exactly one record; the CSMS
got every transaction once per OCPP message id, in order, with its transaction ids, the
records' energy and OCMF; the backend got every record on billing/records once per msg_id
with gapless seqs, equal to the store's; nothing is left in either outbox. The checks are
in tests/chaos_checks.py.

Counts and duration are printed (run with -s to see them) and written to chaos-summary.json
in the test's tmp dir. CHAOS_SEED picks another random schedule.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from chaos_checks import (
    TransactionIds,
    check_mqtt,
    check_ocpp,
    mqtt_last_seqs,
    mqtt_undelivered,
    ocpp_outbox,
    ocpp_undelivered,
    record_hashes,
    records_unacknowledged,
)
from mqtt_helpers import Backend, Broker
from ocpp_helpers import unbatch

from agent.billing.keys import load_or_create_key, public_key_hex
from agent.sessions.records import verify_records
from agent.sessions.store import SessionStore
from hil.control import send_command
from hil.csms import TestCsms
from hil.procs import (
    EVEDGE,
    Proc,
    fast_billing,
    sim_ready,
    start_agent,
    start_sim,
    until,
    write_station,
)

CP = "CHAOS"
TARGET_SESSIONS = 70
MIN_KILLS = 30
BUDGET_S = 240  # the session loop gives up (and fails) after this long (~150 s is usual)
DRAIN_S = 60  # the final delivery to the CSMS and the broker
TIMEOUT_STOP_S = 30  # TimeoutStopSec= in systemd/evedge.service
# Cloud outages, by plug-in count: the CSMS is down for a stretch of sessions (the agent is
# killed meanwhile, with a growing backlog), the broker is restarted later.
CSMS_DOWN, CSMS_UP = 15, 30
BROKER_DOWN, BROKER_UP = 45, 48


def cloud_sections(tmp: Path, csms_port: int, broker_port: int) -> str:
    """[billing], [sessions], [ocpp], [mqtt], [api] and [driver] of the chaos station."""
    keys = {
        "MeterValueSampleInterval": "1",
        "TransactionMessageRetryInterval": "1",
        "SampledDataSignReadings": "true",
        "PublicKeyWithSignedMeterValue": "OncePerTransaction",
    }
    inline = ", ".join(f'{k} = "{v}"' for k, v in keys.items())
    return (
        fast_billing(tmp)
        + f"""
[ocpp]
url = "ws://127.0.0.1:{csms_port}"
call_timeout_s = 2
reconnect_min_s = 0.2
reconnect_max_s = 0.5
keys = {{ {inline} }}
[mqtt]
host = "127.0.0.1"
port = {broker_port}
tls = false
telemetry_interval_s = 5
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 1
[api]
socket = "{tmp / "api.sock"}"
group = "{grp.getgrgid(os.getgid()).gr_name}"
[driver]
operator = "Chaos Charging"
hotline = "+49 30 1234 5678"
"""
    )


async def sim_cmd(port: int, **cmd) -> dict:
    return await send_command(port, cmd)


def evedge(*args: str) -> subprocess.CompletedProcess:
    """A CLI command (not the service), its output captured."""
    return subprocess.run([EVEDGE, *args], capture_output=True, text=True, timeout=60)


async def settled_status(config: Path, timeout: float = 20) -> dict:
    """`evedge status --json` from the running service (over the local API) once it reports
    no billing backlog (OCPP, charge records, MQTT billing/records; the MQTT figures refresh
    every second); AssertionError if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        out = await asyncio.to_thread(evedge, "status", "--json", "--config", str(config))
        assert out.returncode == 0, out.stdout + out.stderr
        status = json.loads(out.stdout)
        backlog = status["backlog"]
        mqtt = status["sync"].get("mqtt", {}).get("backlog_by_stream", {})
        # Billing data must be through. Live telemetry, health and events keep coming, so
        # their MQTT backlog is only reported (a stall of two such messages on a live
        # connection was seen in about one run in ten; they stay in the outbox, not lost).
        if (
            status["source"] == "service"
            and backlog.get("ocpp") == 0
            and backlog.get("charge_records") == 0
            and mqtt.get("billing/records", 0) == 0
        ):
            return status
        assert loop.time() < deadline, f"status still shows a backlog: {backlog}, mqtt {mqtt}"
        await asyncio.sleep(0.5)


def dump_traffic(tmp: Path, csms: TestCsms, backend: Backend) -> None:
    """What the CSMS and the backend received, as JSON lines, for a failing run's analysis."""
    with (tmp / "csms-received.jsonl").open("w") as f:
        for r in csms.received.get(CP, []):
            f.write(json.dumps([r.unique_id, r.action, r.payload]) + "\n")
    with (tmp / "backend-received.jsonl").open("w") as f:
        for m in backend.snapshot():
            f.write(json.dumps([m.topic, m.payload.decode()]) + "\n")


@pytest.mark.timeout(BUDGET_S + DRAIN_S + 120)
async def test_kill_9_with_cloud_outages_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "4")))
    csms = TestCsms()
    await csms.start()
    ids = TransactionIds(csms)
    broker = Broker(tmp_path / "broker")
    broker.start()
    backend = Backend(broker, client_id="chaos-backend").connect()
    st = write_station(
        tmp_path,
        station_id=CP,
        log_level="warning",
        extra=cloud_sections(tmp_path, csms.port, broker.port),
    )
    db, control, log = st.db, st.control, tmp_path / "agent.log"
    sim = start_sim(st.path, tmp_path / "sim.log")
    agent: Proc | None = None
    t0 = time.monotonic()
    kills = plugs = starts = 0
    seen: dict[str, str] = {}  # every record id ever observed, with its hash
    try:
        await sim_ready(control, proc=sim)
        agent, starts = start_agent(st.path, log), starts + 1
        await csms.wait_connected(CP, timeout=30)
        next_kill = time.monotonic() + rng.uniform(0.5, 4.0)
        while len(record_hashes(db)) < TARGET_SESSIONS or kills < MIN_KILLS:
            assert time.monotonic() - t0 < BUDGET_S, (
                f"only {len(record_hashes(db))} records, {kills} kills in {BUDGET_S} s"
            )
            plugs += 1
            if plugs == CSMS_DOWN:
                await csms.stop()
            elif plugs == CSMS_UP:
                await csms.start()
            elif plugs == BROKER_DOWN:
                await asyncio.to_thread(broker.stop)
            elif plugs == BROKER_UP:
                await asyncio.to_thread(broker.start)
            # One car: plug in, charge a moment (sometimes pausing), unplug.
            await sim_cmd(control, cmd="plug_in", connector=1)
            charge_until = time.monotonic() + rng.uniform(0.4, 1.4)
            paused = False
            while time.monotonic() < charge_until:
                if time.monotonic() >= next_kill:
                    # Between snapshot and kill nothing is lost: a record seen stays.
                    seen.update(record_hashes(db))
                    agent.kill9()
                    kills += 1
                    await asyncio.sleep(rng.choice([0, 0, 0.2, 0.8]))
                    agent, starts = start_agent(st.path, log), starts + 1
                    next_kill = time.monotonic() + rng.uniform(0.5, 4.0)
                if not paused and rng.random() < 0.05:
                    await sim_cmd(control, cmd="suspend", connector=1, suspended=True)
                    paused = True
                await asyncio.sleep(0.05)
            if paused:
                await sim_cmd(control, cmd="suspend", connector=1, suspended=False)
            await sim_cmd(control, cmd="unplug", connector=1)
            await asyncio.sleep(rng.uniform(0.15, 0.5))
        loop_s = time.monotonic() - t0

        # Let the last session close, stop cleanly, start again and let it all drain.
        def idle() -> bool:
            with SessionStore(db) as s:
                return not s.active_sessions()

        await until(idle, 30, "the last session to close", proc=agent)
        # The agent may have been restarted a moment ago: stop it once it handles SIGTERM.
        await until(lambda: agent.handles(signal.SIGTERM), 30, "SIGTERM handled", proc=agent)
        phases = {"session_loop": loop_s, "last_close": time.monotonic() - t0 - loop_s}
        t1 = time.monotonic()
        assert await agent.stop_async(TIMEOUT_STOP_S) == 0, agent.log_tail()
        phases["clean_stop"] = time.monotonic() - t1
        agent, starts = start_agent(st.path, log), starts + 1
        t1 = time.monotonic()
        n_records = len(record_hashes(db))

        def drained() -> bool:
            got = {m.json()["msg_id"] for m in backend.on("billing/records")}
            return (
                ocpp_undelivered(db) == mqtt_undelivered(db) == records_unacknowledged(db) == 0
                and len(got) >= n_records
            )

        await until(drained, DRAIN_S, "both outboxes to drain", proc=agent)
        phases["restart_and_drain"] = time.monotonic() - t1
        t1 = time.monotonic()
        status = await settled_status(st.path)
        assert {"ocpp", "mqtt"} <= set(status["sync"]), status["sync"]
        phases["status"] = time.monotonic() - t1
        t1 = time.monotonic()
        assert await agent.stop_async(TIMEOUT_STOP_S) == 0, agent.log_tail()
        phases["final_stop"] = time.monotonic() - t1
        agent = None
    finally:
        if agent is not None:
            await agent.stop_async(TIMEOUT_STOP_S)
        sim.stop()
        backend.close()
        broker.stop()
        await csms.stop()
        dump_traffic(tmp_path, csms, backend)
    duration = time.monotonic() - t0

    verify = await asyncio.to_thread(evedge, "billing", "verify", "--config", str(st.path))
    final = record_hashes(db)
    with SessionStore(db) as s:
        sessions = s.sessions(limit=10**6)
        records = s.records()
        report = verify_records(s, public_key_hex(load_or_create_key(tmp_path / "keys")))
        assert not s.active_sessions()
        assert s.closed_without_record() == []
    # Batched MeterValues split into their queued rows (asserting they carried exactly those).
    ocpp = check_ocpp(unbatch(csms.received.get(CP, []), db), ocpp_outbox(db), ids, records)
    mqtt = check_mqtt(
        ((m.topic, m.payload) for m in backend.snapshot()), mqtt_last_seqs(db), records
    )
    lost = {r: h for r, h in seen.items() if final.get(r) != h}
    bodies = [json.loads(r.body) for r in records]
    reasons: dict[str, int] = {}
    for b in bodies:
        reasons[b["stop"]["reason"]] = reasons.get(b["stop"]["reason"], 0) + 1
    resumed = sum(any("resumed" in n for n in b["notes"]) for b in bodies)
    summary = {
        "records": len(records),
        "sessions": len(sessions),
        "plug_ins": plugs,
        "kills": kills,
        "agent_starts": starts,
        "csms_restarts": 1,
        "broker_restarts": 1,
        "csms_connections": csms.connections.get(CP, 0),
        "resumed_after_restart": resumed,
        "stop_reasons": reasons,
        "flagged_for_review": report.flagged,
        "signatures_verified": report.signatures,
        "ocpp": ocpp.counts,
        "mqtt": mqtt.counts,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "duration_s": round(duration, 1),
    }
    (tmp_path / "chaos-summary.json").write_text(json.dumps(summary, indent=1))
    print("\nchaos:", json.dumps(summary))
    assert not lost, f"records lost or changed after a kill: {sorted(lost)}"
    assert len(records) >= TARGET_SESSIONS and kills >= MIN_KILLS
    assert len(sessions) == len(records)  # every session ended with exactly one record
    assert len({r.session_id for r in records}) == len(records)  # none duplicated
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert report.ok, [str(p) for p in report.problems]
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for b in bodies:
        assert b["energy_wh"] >= 0
        assert b["meter"]["end_wh"] >= b["meter"]["start_wh"] or b["review"]["required"]
    assert ocpp.problems == [], ocpp.problems[:20]
    assert mqtt.problems == [], mqtt.problems[:20]
