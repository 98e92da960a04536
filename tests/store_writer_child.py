"""Child process for the store's kill -9 test.

Usage: python store_writer_child.py DB_PATH BATCH_SIZE

Appends batches of deterministic readings (row n is `expected_reading(n)`) forever,
printing "committed <total>" (flushed) after each commit returns. It continues numbering
from the rows already in the database, so it can be killed and restarted on the same file.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import structlog

from agent.events import Quality, Reading
from agent.store import Store

BASE_TS = datetime(2026, 1, 1, tzinfo=UTC)


def expected_reading(n: int) -> Reading:
    """The reading the child writes as row number `n` (1-based): every value type in turn."""
    ts = BASE_TS + timedelta(milliseconds=n, microseconds=n % 997)
    kind = n % 6
    quality = Quality.GOOD
    value: float | int | str | bool | None
    if kind == 0:
        value = n * 1_000_003
    elif kind == 1:
        value = n / 7
    elif kind == 2:
        value = n % 4 == 1
    elif kind == 3:
        value = f"state-{n}-Ω"
    elif kind == 4:
        value, quality = None, Quality.NOT_AVAILABLE
    else:
        value = 2**64 + n  # beyond SQLite's 64-bit integers
    return Reading(
        ts=ts, device=f"meter{n % 3}", quantity=f"q{kind}", value=value, unit="u", quality=quality
    )


def main() -> None:
    path, batch_size = sys.argv[1], int(sys.argv[2])
    # Logs go to stderr: stdout carries only the committed counts the parent parses.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    store = Store(path)
    total = store.count_readings()
    while True:
        batch = [expected_reading(total + k + 1) for k in range(batch_size)]
        total += store.append_readings(batch)
        print(f"committed {total}", flush=True)


if __name__ == "__main__":
    main()
