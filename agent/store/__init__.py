"""The durable store (SQLite): readings ring, device health; later faults, sessions, outbox.

`Store` is the synchronous API (call it from a worker thread); `StoreWriter` is the bus
consumer that batches events into it.
"""

from agent.store.db import (
    SchemaTooNewError,
    Store,
    StoreCorruptError,
    StoreError,
    open_db,
    schema_version,
    transaction,
)
from agent.store.migrations import LATEST_VERSION, MIGRATIONS, Migration
from agent.store.writer import StoreWriter, WriterStats

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "SchemaTooNewError",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreWriter",
    "WriterStats",
    "open_db",
    "schema_version",
    "transaction",
]
