"""The SQLite connection: durability pragmas, schema migrations, and the `Store` facade."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import structlog

from agent.events import DeviceHealth, Reading, utcnow
from agent.store import readings as rd
from agent.store.migrations import LATEST_VERSION, MIGRATIONS, statements
from agent.store.space import (
    DiskFullError,
    StoreError,
    StoreSpace,
    checkpoint,
    is_disk_full,
    space_for,
    wal_pages,
)

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 5000
T = TypeVar("T")


class StoreCorruptError(StoreError):
    """The file at the store path is not a readable SQLite database."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer evedge whose schema this code does not know."""


class SchemaTooOldError(StoreError):
    """A read-only reader needs a newer schema than the store has (the service migrates)."""


class StoreMissingError(StoreError):
    """There is no store file at the path (the service has not run with this config)."""


class StoreConnection(sqlite3.Connection):
    """A writer's connection: knows the room policy of its file (see agent/store/space.py)."""

    space: StoreSpace | None = None


_QUICK_CHECKED: set[Path] = set()  # files quick_check'ed by this process (once per file)


def open_readonly(path: str | Path, need: int = LATEST_VERSION) -> sqlite3.Connection:
    """Open the store at `path` read-only, for the CLI while the service may be down.

    Never creates, migrates or otherwise writes the file (an SQLite `mode=ro` URI). Raises
    `StoreMissingError` when there is no file, `SchemaTooNewError` / `StoreCorruptError`
    like `open_db`, and `SchemaTooOldError` when the schema is older than `need` (a reader
    that copes with older schemas passes a lower `need` and checks `schema_version`).
    """
    path = Path(path)
    if not path.exists():
        raise StoreMissingError(f"{path}: no store there (the service has not run with it yet)")
    try:
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the store database: {e}") from e
    try:
        _sqlite_call(path, lambda: _check(conn, path))
        version = schema_version(conn)
        if version < need:
            raise SchemaTooOldError(
                f"{path}: the store is at schema {version}, this evedge expects "
                f"{LATEST_VERSION}; start the service to migrate it"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def open_db(path: str | Path) -> sqlite3.Connection:
    """Open (creating if absent) the store database at `path` and migrate it to the latest schema.

    WAL journal, `synchronous=FULL` (a committed row survives a power cut), foreign keys on,
    a busy timeout for the CLI reading while the service writes. The connection is in
    autocommit mode: use `transaction()` for writes. Raises `StoreCorruptError` for a file
    that is not a database (it is never recreated) and `SchemaTooNewError` for a newer schema.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{path}: cannot create the store directory: {e}") from e
    try:
        # check_same_thread=False: Store serialises access with its own lock, and callers
        # reach it from asyncio.to_thread workers, which are not always the same thread.
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=StoreConnection
        )
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the store database: {e}") from e
    conn.space = space_for(path)
    try:
        # Validate before anything that writes (WAL mode is recorded in the file header), so a
        # file we refuse is left byte-for-byte as we found it.
        _sqlite_call(path, lambda: _check(conn, path))
        _quick_check_once(conn, path)
        mode = _sqlite_call(path, lambda: _set_pragmas(conn, path))
        if mode.lower() != "wal":
            # Still durable with synchronous=FULL; only readers block the writer. Worth a warning.
            log.warning("store.no_wal", path=str(path), journal_mode=mode)
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _sqlite_call(path: Path, fn: Callable[[], T]) -> T:
    """Run `fn`, turning low-level sqlite errors into StoreErrors that name the file."""
    try:
        return fn()
    except DiskFullError as e:
        raise DiskFullError(f"{path}: {e}") from e
    except sqlite3.OperationalError as e:
        if is_disk_full(e):
            raise DiskFullError(
                f"{path}: cannot open the store: {_FULL_HINT}. {_NO_BILLING}"
            ) from e
        raise StoreError(f"{path}: cannot open the store database: {e}") from e
    except sqlite3.DatabaseError as e:
        raise StoreCorruptError(
            f"{path}: not a valid SQLite database ({e}). The file was left untouched: move it "
            "aside (keep it, it may hold billing data) and restart to create a fresh store."
        ) from e


_FULL_HINT = (
    "the store's disk is full (database or disk is full): free up space on it (journal logs "
    "are a common cause; never delete the store, it holds billing records)"
)


_NO_BILLING = "Until it has room evedge cannot record sessions or bill (exit 6: retried)."


def _quick_check_once(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's quick_check, the first time this process opens `path` for writing: a garbled
    file is refused at start with a clear message, not found by a failing write later."""
    key = path.resolve()
    if key in _QUICK_CHECKED:
        return
    rows = _sqlite_call(path, lambda: conn.execute("PRAGMA quick_check(5)").fetchall())
    problems = [str(r[0]) for r in rows]
    if problems != ["ok"]:
        raise StoreCorruptError(
            f"{path}: the store database is damaged (quick_check: {'; '.join(problems)}). "
            "The file was left untouched: stop the service, keep a copy of it (it holds "
            "billing data), then try `sqlite3 FILE .recover` into a new file or move it aside "
            "and restart to create a fresh store."
        )
    _QUICK_CHECKED.add(key)


def _check(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # The first real read: a file that is not a database fails here.
    has_tables = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 1"
    ).fetchone()
    version = schema_version(conn)
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"{path}: database schema version {version} is newer than this evedge supports "
            f"(up to {LATEST_VERSION}). Upgrade evedge, or restore the backup that matches "
            "this version. The file was not modified."
        )
    if version == 0 and has_tables:
        raise StoreError(
            f"{path}: an SQLite database with tables but no evedge schema version; it is not "
            "an evedge store. Point [store] path at another file. The file was not modified."
        )


def _set_pragmas(conn: sqlite3.Connection, path: Path) -> str:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Checkpoints every WAL_PAGES (16 MB; fewer checkpoints, fewer copies of hot pages), but
    # on a small volume the WAL alone would fill the disk first, holding the whole store,
    # with no room left to checkpoint it: at most 1/16 of the volume. The WAL file keeps
    # that size after a checkpoint (reused from its start, not regrown).
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = wal_pages(path, page_size)
    conn.execute(f"PRAGMA wal_autocheckpoint = {pages:d}")
    conn.execute(f"PRAGMA journal_size_limit = {pages * page_size:d}")
    return mode


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new, empty one)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


@contextmanager
def transaction(conn: sqlite3.Connection, billing: bool = False) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    IMMEDIATE takes the write lock up front, so a second writer waits (busy_timeout) at
    BEGIN instead of failing halfway through with SQLITE_BUSY. A full disk raises
    `DiskFullError` and is reported to the file's `StoreSpace` (which releases the billing
    reserve); `billing`: the transaction writes billing data (sessions, charge records), whose
    failure on a full disk blocks new sessions until one succeeds again.
    """
    space = getattr(conn, "space", None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as e:
        # SQLite may already have rolled back by itself (e.g. SQLITE_FULL); don't mask the cause.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not is_disk_full(e):
            raise
        if space is not None:
            space.full(conn, billing)
        if isinstance(e, DiskFullError):
            raise
        raise DiskFullError(_FULL_HINT) from e
    if space is not None:
        space.wrote(billing)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    start = schema_version(conn)
    for m in MIGRATIONS:
        if m.version <= start:
            continue
        try:
            with transaction(conn):
                # Re-read under the write lock: another process may have migrated meanwhile.
                current = schema_version(conn)
                if current >= m.version:
                    continue
                for stmt in statements(m.sql):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {m.version:d}")
        except sqlite3.Error as e:
            if is_disk_full(e):
                raise DiskFullError(
                    f"{path}: cannot create the store's tables (schema migration {m.version}): "
                    f"{_FULL_HINT}. {_NO_BILLING}"
                ) from e
            raise StoreError(
                f"{path}: schema migration {m.version} ({m.name}) failed: {e}. It was rolled "
                f"back; the database is still at version {schema_version(conn)}."
            ) from e
        log.info("store.migrated", path=str(path), version=m.version, migration=m.name)


class Store:
    """Synchronous access to the store; thread-safe, meant to be called via asyncio.to_thread."""

    def __init__(self, path: str | Path, readonly: bool = False, telemetry: bool = False):
        """`readonly`: for readers such as `evedge bundle`; the file is never created or
        migrated and may have an older schema (`schema_version`), writes fail.

        `telemetry`: this connection writes only the readings ring and device health, with
        `synchronous = NORMAL`: a commit is not synced to the disk by itself, only with the
        next synced commit of a billing or outbox connection or the next WAL checkpoint (the
        flash-wear side of issue 16). A power cut may lose those last readings; a crash of
        the process loses nothing committed, and the file is never corrupted either way.
        """
        self.path = Path(path)
        self._conn = open_readonly(self.path, need=1) if readonly else open_db(self.path)
        if telemetry:
            self._conn.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.Lock()
        self.space = space_for(self.path)

    def append_readings(self, readings: Sequence[Reading]) -> int:
        """Insert `readings` in one transaction; returns how many were written."""
        if not readings:
            return 0
        with self._lock, transaction(self._conn):
            return rd.insert_readings(self._conn, readings)

    def latest(self, device: str | None = None) -> list[Reading]:
        """The newest reading per (device, quantity), optionally for one device only."""
        with self._lock:
            return rd.select_latest(self._conn, device)

    def history(
        self, device: str, quantity: str, since: datetime | None = None, limit: int = 1000
    ) -> list[Reading]:
        """Readings of one quantity since `since` (inclusive): the newest `limit`, oldest first."""
        with self._lock:
            return rd.select_history(self._conn, device, quantity, since, limit)

    def put_health(self, h: DeviceHealth) -> None:
        """Record `h` as its device's latest health (an older event never overwrites a newer)."""
        with self._lock, transaction(self._conn):
            rd.upsert_health(self._conn, h)

    def write_batch(self, readings: Sequence[Reading], healths: Sequence[DeviceHealth]) -> int:
        """Readings and health updates in a single transaction; returns rows written."""
        with self._lock, transaction(self._conn):
            n = rd.insert_readings(self._conn, readings) if readings else 0
            for h in healths:
                rd.upsert_health(self._conn, h)
        return n + len(healths)

    def health(self) -> list[DeviceHealth]:
        """Latest stored health of every device."""
        with self._lock:
            return rd.select_health(self._conn)

    def prune(self, max_rows: int, max_age_days: float, now: datetime | None = None) -> int:
        """Trim the readings ring to the newest `max_rows` no older than `max_age_days`.

        Only readings are pruned; returns the number of rows deleted.
        """
        t0 = time.perf_counter()
        with self._lock, transaction(self._conn):
            deleted = rd.prune_readings(self._conn, max_rows, max_age_days, now or utcnow())
        if deleted:
            ms = round((time.perf_counter() - t0) * 1000, 1)
            log.info("store.pruned", path=str(self.path), rows=deleted, duration_ms=ms)
        return deleted

    def count_readings(self) -> int:
        """Number of readings currently in the ring."""
        with self._lock:
            return rd.count_readings(self._conn)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on a feature's own tables (BEGIN IMMEDIATE ... COMMIT)."""
        with self._lock, transaction(self._conn):
            yield self._conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, under the lock (not re-entrant: no nesting with tx)."""
        with self._lock:
            yield self._conn

    def schema_version(self) -> int:
        """Schema version of the open database."""
        with self._lock:
            return schema_version(self._conn)

    def checkpoint(self) -> None:
        """Checkpoint the WAL into the database and truncate it (see space.checkpoint)."""
        with self._lock:
            checkpoint(self._conn)

    def integrity_check(self) -> str:
        """Run SQLite's full integrity check: "ok", or the problems it found, one per line."""
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
