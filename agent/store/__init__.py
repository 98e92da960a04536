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
from agent.store.space import (
    DiskFullError,
    StoreSpace,
    configure_space,
    disk_full_tolerated,
    space_for,
)
from agent.store.writer import StoreWriter, WriterStats

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "DiskFullError",
    "Migration",
    "SchemaTooNewError",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreSpace",
    "StoreWriter",
    "WriterStats",
    "configure_space",
    "disk_full_tolerated",
    "open_db",
    "schema_version",
    "space_for",
    "transaction",
]
