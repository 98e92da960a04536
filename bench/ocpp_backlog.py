"""Benchmark: draining a 7-day OCPP outage, and what it does to the live poll loop.

A store is filled with the transaction messages of `--sessions` sessions of `--minutes`
each with MeterValues every 10 s (the default: 500 sessions of 20 min, about 61,500
messages, what a busy two-connector station queues in a week without its CSMS), exactly as
the outbox keeps them (agent/ocpp/outbox.py). Then the real agent (pollers against the
simulator `evedge sim`, session engine, OCPP service) starts against that store:

1. baseline: the CSMS (`python -m hil.csms`, another process) is down for `--baseline-s`;
   the poll loop's timing is measured (intervals between the meter's successive readings);
2. drain: the CSMS comes up; the time until the outbox is empty and messages/s are
   measured, and the poll loop's timing meanwhile.

Printed: drain time, messages/s, poll interval p50/p99/max and jitter (p99 of |interval -
nominal|) in both phases, and the ratio drain/baseline. Everything the CSMS acknowledged
is checked against the store afterwards (all delivered, none twice).

`--rtt-ms` makes the CSMS answer every call that late (a real network's round trip);
`--batch` is `[ocpp] meter_values_batch` (1: every queued MeterValues alone, the baseline
for the batched drain; the agent's default is 40). At one CALL in flight (OCPP 1.6 §4.1.1)
the round trips alone bound the drain from below: each session's StartTransaction and
StopTransaction are two CALLs whatever the batch, so the 7-day default (500 sessions) needs
at least 1,000 x RTT plus its MeterValues CALLs; the bound is printed.

Usage: .venv/bin/python bench/ocpp_backlog.py [--sessions 500] [--minutes 20]
       [--baseline-s 20] [--poll-s 0.1] [--rtt-ms 0] [--batch 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import structlog

from agent.config import parse_config
from agent.events import READINGS, Reading
from agent.ocpp import metervalues as mv
from agent.ocpp.outbox import begin_transaction_in, enqueue_in
from agent.runtime import Agent
from agent.sessions.times import US
from agent.store.db import open_db, transaction
from hil.procs import StationFile, free_port, sim_ready, start_sim, write_station

ROOT = Path(__file__).resolve().parents[1]
MV_INTERVAL_S = 10
WEEK_US = 7 * 86400 * US
WARMUP_S = 3.0


def station(tmp: Path, csms_port: int, poll_s: float, batch: int) -> StationFile:
    """The billed one-connector station with [ocpp] at `csms_port`, polled every `poll_s`."""
    extra = f"""[billing]
tariff = "{ROOT / "config" / "tariffs" / "simple-energy.json"}"
key_dir = "{tmp / "keys"}"
[ocpp]
url = "ws://127.0.0.1:{csms_port}"
call_timeout_s = 10
reconnect_min_s = 0.2
reconnect_max_s = 0.5
meter_values_batch = {batch}
keys = {{ MeterValueSampleInterval = "0" }}
"""
    return write_station(
        tmp,
        station_id="BENCH",
        meter_interval_s=poll_s,
        evse_interval_s=poll_s,
        timeout_s=0.5,
        log_level="warning",
        extra=extra,
    )


def fill(db: Path, sessions: int, minutes: int) -> int:
    """Queue the week's transaction messages; returns how many."""
    conn = open_db(db)
    start0 = int(time.time() * US) - WEEK_US
    step = WEEK_US // sessions
    n = 0
    register = 1_000_000
    with transaction(conn):
        for i in range(sessions):
            sid = f"bench-{i:05d}"
            connector = 1 + i % 2
            t = start0 + i * step
            begin_transaction_in(conn, sid, connector, t)
            start = {
                "connectorId": connector,
                "idTag": f"CARD-{i % 50:04d}",
                "meterStart": register,
                "timestamp": mv.iso(t),
            }
            enqueue_in(conn, sid, connector, "StartTransaction", start, t)
            n += 1
            for k in range(minutes * 60 // MV_INTERVAL_S):
                at = t + (k + 1) * MV_INTERVAL_S * US
                register += 30  # 11 kW
                values = {
                    "energy_import_wh": register,
                    "power_w": 11000.0,
                    **{f"current_l{p}": 16.0 for p in (1, 2, 3)},
                    **{f"voltage_l{p}": 230.1 for p in (1, 2, 3)},
                }
                svs = mv.sampled_values(
                    values,
                    [mv.ENERGY, "Power.Active.Import", "Current.Import", "Voltage"],
                    mv.PERIODIC,
                )
                payload = {"connectorId": connector, "meterValue": [mv.meter_value(at, svs)]}
                enqueue_in(conn, sid, connector, "MeterValues", payload, at)
                n += 1
            end = t + minutes * 60 * US
            stop = {
                "idTag": start["idTag"],
                "meterStop": register,
                "timestamp": mv.iso(end),
                "reason": "EVDisconnected",
            }
            enqueue_in(conn, sid, connector, "StopTransaction", stop, end)
            n += 1
    conn.close()
    return n


def pending(db: Path) -> int:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return c.execute("SELECT count(*) FROM ocpp_outbox WHERE delivered_ts IS NULL").fetchone()[
            0
        ]
    finally:
        c.close()


class PollClock:
    """Intervals between the meter's successive energy readings (the poll loop's beat)."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.intervals: list[float] = []

    def feed(self, r: Reading) -> None:
        if r.device != "meter1" or r.quantity != "energy_import_wh":
            return
        t = r.ts.timestamp()
        if self.last is not None:
            self.intervals.append(t - self.last)
        self.last = t

    def take(self) -> list[float]:
        out, self.intervals = self.intervals, []
        return out


def figures(intervals: list[float], nominal: float) -> dict[str, float]:
    xs = sorted(intervals)
    dev = sorted(abs(x - nominal) for x in xs)

    def pct(v: list[float], p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    return {
        "polls": len(xs),
        "p50_ms": 1000 * statistics.median(xs),
        "p99_ms": 1000 * pct(xs, 0.99),
        "max_ms": 1000 * xs[-1],
        "jitter_p99_ms": 1000 * pct(dev, 0.99),
    }


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with TemporaryDirectory() as d:
        tmp = Path(d)
        csms_port = free_port()
        st = station(tmp, csms_port, args.poll_s, args.batch)
        cfg = parse_config(st.text)
        db = st.db
        t0 = time.perf_counter()
        queued = fill(db, args.sessions, args.minutes)
        print(
            f"queued {queued} transaction messages of {args.sessions} sessions "
            f"in {time.perf_counter() - t0:.1f} s ({db.stat().st_size / 1e6:.1f} MB)"
        )
        sim = start_sim(st.path)
        csms = None
        agent = Agent(cfg)
        clock = PollClock()
        sub = agent.bus.subscribe(*READINGS, maxsize=100_000)

        async def collect() -> None:
            async for ev in sub:
                for r in ev.samples():
                    clock.feed(r)

        collector = asyncio.create_task(collect())
        try:
            await sim_ready(st.control, proc=sim)
            await agent.start()
            await asyncio.sleep(WARMUP_S)  # connect attempts, session recovery: not measured
            clock.take()
            await asyncio.sleep(args.baseline_s)
            base = clock.take()
            csms = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hil.csms",
                    "--port",
                    str(csms_port),
                    "--delay-ms",
                    str(args.rtt_ms),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
            )
            t_up = time.perf_counter()
            while not agent.ocpp.online.is_set():
                await asyncio.sleep(0.01)
            t_online = time.perf_counter()
            while await asyncio.to_thread(pending, db) > 0:
                await asyncio.sleep(0.5)
            t_done = time.perf_counter()
            during = clock.take()
            calls = agent.ocpp.ctx.parts["outbox"].calls
        finally:
            collector.cancel()
            await agent.stop()
            sim.stop()
            if csms is not None:
                csms.terminate()
        drain_s = t_done - t_online
        b, dr = figures(base, args.poll_s), figures(during, args.poll_s)
        with sqlite3.connect(db) as c:
            delivered = c.execute(  # the agent's own SecurityEventNotifications left out
                "SELECT count(*) FROM ocpp_outbox WHERE delivered_ts IS NOT NULL AND action IN "
                "('StartTransaction', 'MeterValues', 'StopTransaction')"
            ).fetchone()[0]
            ids = c.execute(
                "SELECT count(*), count(DISTINCT transaction_id) FROM ocpp_transactions"
            ).fetchone()
        print(f"connect + boot after the CSMS came up: {t_online - t_up:.2f} s")
        print(
            f"drain at {args.rtt_ms:g} ms RTT, batch {args.batch}: {delivered} messages in "
            f"{calls} CALLs in {drain_s:.1f} s = {delivered / drain_s:.0f} msg/s "
            f"({1000 * drain_s / calls:.2f} ms per CALL, one in flight at a time)"
        )
        floor = calls * args.rtt_ms / 1000  # OCPP 1.6 §4.1.1: one CALL in flight at a time
        print(
            f"round trips alone: {calls} x {args.rtt_ms:g} ms = {floor:.1f} s; the agent, "
            f"the CSMS and the link add {drain_s - floor:.1f} s"
        )
        print(f"transactions with their own CSMS id: {ids[1]} of {ids[0]}")
        print(f"poll interval, nominal {1000 * args.poll_s:.0f} ms:")
        for name, f in (("baseline (CSMS down)", b), ("during the drain", dr)):
            print(
                f"  {name:22s} polls {f['polls']:6d}  p50 {f['p50_ms']:7.1f} ms  "
                f"p99 {f['p99_ms']:7.1f} ms  max {f['max_ms']:7.1f} ms  "
                f"jitter p99 {f['jitter_p99_ms']:6.1f} ms"
            )
        ratio = dr["jitter_p99_ms"] / max(b["jitter_p99_ms"], 0.1)
        print(
            f"ratio drain/baseline: jitter p99 x{ratio:.2f}, "
            f"p99 interval x{dr['p99_ms'] / b['p99_ms']:.2f}"
        )
        print(
            json.dumps(
                {
                    "queued": queued,
                    "delivered": delivered,
                    "calls": calls,
                    "rtt_ms": args.rtt_ms,
                    "batch": args.batch,
                    "drain_s": round(drain_s, 1),
                    "msg_per_s": round(delivered / drain_s),
                    "baseline": b,
                    "drain": dr,
                }
            )
        )
        assert delivered == queued, f"{queued - delivered} messages not delivered"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--minutes", type=int, default=20)
    p.add_argument("--baseline-s", type=float, default=20.0)
    p.add_argument("--poll-s", type=float, default=0.1)
    p.add_argument("--rtt-ms", type=float, default=0.0, help="the CSMS answers this late")
    p.add_argument("--batch", type=int, default=1, help="[ocpp] meter_values_batch")
    asyncio.run(main(p.parse_args()))
