"""Benchmark: what the signed chain checkpoint adds to closing a session.

Every charge record is followed by a checkpoint write (agent/billing/checkpoint.py: ECDSA
signature, temporary file, fsync, rename, directory fsync). Baseline, measured in the same
run and directory: a store commit of one charge-record-sized row with the store's own
settings (WAL, synchronous=FULL), i.e. the transaction that the record itself costs. Also
measured: the check the agent runs every minute (read and verify the checkpoint, compare
with the store, list the triggers) on a store holding `--records` records.

Usage: .venv/bin/python bench/checkpoint.py [--n 200] [--records 1000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from agent.billing import chain, checkpoint
from agent.billing.checkpoint import Head
from agent.billing.keys import load_or_create_key
from agent.sessions.integrity import checkpoint_problems, trigger_problems
from agent.sessions.store import SessionStore

BODY = "x" * 4000  # a charge record body is a few kB of JSON


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"median {statistics.median(samples) * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="writes of each kind")
    ap.add_argument("--records", type=int, default=1000, help="records in the checked store")
    ap.add_argument("--dir", type=Path, default=None, help="where (default: the temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="evcp-", dir=a.dir) as tmp:
        run(a, Path(tmp))


def run(a: argparse.Namespace, d: Path) -> None:
    """Measure in directory `d` (the store, its checkpoint and a key)."""
    key = load_or_create_key(d / "keys")
    store = SessionStore(d / "evedge.db")
    with store.tx() as c:
        c.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, body TEXT)")
    commits, writes = [], []
    path = checkpoint.checkpoint_path(store.path)
    for i in range(a.n):
        t = time.perf_counter()
        with store.tx() as c:
            c.execute("INSERT INTO bench (body) VALUES (?)", (BODY,))
        commits.append(time.perf_counter() - t)
        t = time.perf_counter()
        checkpoint.write(path, Head("BENCH", i, chain.GENESIS, None, i), key)
        writes.append(time.perf_counter() - t)
    ratio = statistics.median(writes) / statistics.median(commits)
    print(f"store commit of a record-sized row (baseline): {_ms(commits)}")
    print(f"checkpoint write after it: {_ms(writes)}, ratio {ratio:.2f}x the baseline")
    with store.reading() as c:  # records without their sessions: only the check is timed
        c.execute("PRAGMA foreign_keys = OFF")
    with store.tx() as c:
        c.executemany(
            "INSERT INTO charge_records (seq, id, session_id, prev_hash, hash, body, connector,"
            " started_ts, ended_ts, energy_wh, created_ts) VALUES (?, ?, ?, ?, ?, ?, 1, 0, 0,"
            " 0, 0)",
            [(n, f"R{n}", f"S{n}", "0" * 64, f"{n:064x}", BODY) for n in range(1, a.records + 1)],
        )
    checkpoint.write(path, Head("BENCH", a.records, f"{a.records:064x}", None, 0), key)
    checks = []
    for _ in range(a.n):
        t = time.perf_counter()
        with store.reading() as c:
            found = trigger_problems(c) + checkpoint_problems(c, path, "BENCH", None)
        checks.append(time.perf_counter() - t)
    assert found == [], found
    print(f"periodic store check ({a.records} records): {_ms(checks)}")
    store.close()


if __name__ == "__main__":
    main()
