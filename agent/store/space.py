"""Room on the store's disk: the disk-full error, the low-disk guard and the billing reserve.

A full disk is a state of the station, never a crash:

- Every write goes through `transaction()` (agent/store/db.py), which turns SQLite's
  SQLITE_FULL into `DiskFullError`. Writers that are not billing catch it with
  `disk_full_tolerated(...)`: the message or reading is dropped and counted, the loop goes on.
- Telemetry (the readings ring) and the MQTT bulk streams stop growing while the disk has less
  than `[store] min_free_disk_mb` free (`StoreSpace.low()`): that margin is left to billing.
- A reserve file (`[store] reserve_mb`, next to the store) holds room that other programs on
  the same disk (logs, updates) cannot take. It is deleted - the room handed to billing - the
  first time a write finds the disk full, and made again at a later start with room to spare.
- A billing write (`transaction(conn, billing=True)`) that fails on a full disk sets
  `billing_blocked` (for the diagnosis and `evedge status`) until a billing write succeeds or
  the disk has room again. A charge record that could not be written is kept by its connector
  and retried; that connector refuses new sessions meanwhile (agent/sessions/closing.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

RESERVE_SUFFIX = ".reserve"
STORE_FULL = "the store's disk is full: a charge record could not be written"
# 16 MB of WAL between automatic checkpoints (SQLite's default: 1000 pages). A page rewritten
# by many commits (outbox, readings index leaves) is copied into the database once per
# checkpoint, so fewer checkpoints write less to the flash (issue 16; bench/footprint.py).
WAL_PAGES = 4000
FREE_CACHE_S = 2.0  # statvfs at most this often per store (writers ask on every batch)
UNBLOCK_MB = 1.0  # this much more free space than after a failed billing write: try again
LOG_EVERY_S = 60.0  # one log line per minute per writer while the disk stays full


class StoreError(Exception):
    """The store cannot be used; the message names the file and what to do."""


class DiskFullError(StoreError, sqlite3.OperationalError):
    """A write failed because the store's disk (or its size limit) is full.

    Also an `sqlite3.OperationalError`, so code that handled the raw SQLite error still does.
    """


def is_disk_full(e: BaseException) -> bool:
    """Is `e` SQLite's "database or disk is full" (SQLITE_FULL) or an ENOSPC?"""
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(e, OSError) and e.errno == 28  # ENOSPC


def free_mb(path: Path) -> float | None:
    """Free MB for unprivileged writers on the file system holding `path` (or its nearest
    existing parent); None when it cannot be read."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free / 1e6
    except OSError:
        return None


def wal_pages(path: Path, page_size: int) -> int:
    """The WAL auto-checkpoint size for the store at `path`: `WAL_PAGES`, but at most 1/16 of
    its volume (never under 16 pages)."""
    try:
        total = shutil.disk_usage(path.parent).total
    except OSError:
        return WAL_PAGES
    return max(16, min(WAL_PAGES, total // 16 // page_size))


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database and truncate it (what a full disk frees first: the WAL
    holds old page versions). Never raises; a busy reader only makes it partial."""
    try:
        busy, wal, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as e:
        log.warning("store.checkpoint_failed", error=str(e))
        return
    log.debug("store.checkpointed", busy=bool(busy), wal_pages=wal, checkpointed=done)


class StoreSpace:
    """The room policy of one store file (shared by every connection to it)."""

    def __init__(
        self,
        path: Path,
        min_free_mb: float = 0.0,
        reserve_mb: float = 0.0,
        free: Callable[[Path], float | None] = free_mb,
    ):
        self.path = path
        self.min_free_mb = min_free_mb
        self.reserve_mb = reserve_mb
        self._free = free
        self._lock = threading.Lock()
        self._free_at = -FREE_CACHE_S
        self._free_cached: float | None = None
        self._blocked_at_free: float | None = None  # free MB after a failed billing write
        self._blocked_logged = -LOG_EVERY_S
        self.full_events = 0  # writes refused by SQLite with SQLITE_FULL
        self.reserve_released = False

    @property
    def reserve_path(self) -> Path:
        """The reserve file: `<store>.reserve`."""
        return self.path.with_name(self.path.name + RESERVE_SUFFIX)

    def free_mb(self) -> float | None:
        """Free MB on the store's disk, re-read at most every FREE_CACHE_S seconds."""
        now = time.monotonic()
        with self._lock:
            if now - self._free_at >= FREE_CACHE_S:
                self._free_cached = self._free(self.path)
                self._free_at = now
            return self._free_cached

    def low(self) -> bool:
        """Below `min_free_disk_mb`: telemetry must not grow the store (billing may)."""
        free = self.free_mb()
        return free is not None and free < self.min_free_mb

    def ensure_reserve(self) -> bool:
        """Create the reserve file if configured, absent, and the disk keeps `min_free_mb`
        free after it. Returns whether a reserve now exists. Never raises."""
        if self.reserve_mb <= 0:
            return False
        target = int(self.reserve_mb * 1e6)
        try:
            if self.reserve_path.stat().st_size >= target:
                return True
        except OSError:
            pass
        free = self._free(self.path)
        if free is None or free - self.reserve_mb < self.min_free_mb:
            log.warning(
                "store.reserve_skipped", path=str(self.reserve_path), free_mb=free,
                reserve_mb=self.reserve_mb, min_free_mb=self.min_free_mb,
                hint="not enough free space for the billing reserve: free up the disk",
            )  # fmt: skip
            return False
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, target)  # real blocks: a sparse file reserves none
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("store.reserve_failed", path=str(self.reserve_path), error=str(e))
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            return False
        self._free_at = -FREE_CACHE_S
        log.info("store.reserve_ready", path=str(self.reserve_path), reserve_mb=self.reserve_mb)
        return True

    def release_reserve(self) -> bool:
        """Delete the reserve file, handing its room to the store. True if one was deleted."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            log.error("store.reserve_release_failed", path=str(self.reserve_path), error=str(e))
            return False
        self.reserve_released = True
        self._free_at = -FREE_CACHE_S
        log.warning(
            "store.reserve_released", path=str(self.reserve_path), reserve_mb=self.reserve_mb,
            hint="the disk is full: the billing reserve was released; free up the disk",
        )  # fmt: skip
        return True

    def at_start(self) -> None:
        """At the agent's start: make the reserve, and say plainly if the disk is short."""
        self.ensure_reserve()
        free = self.free_mb()
        if free is not None and free < self.min_free_mb:
            log.critical(
                "store.disk_low", path=str(self.path), free_mb=round(free, 1),
                min_free_mb=self.min_free_mb,
                hint="the store's disk is below [store] min_free_disk_mb: readings are not "
                "stored and the MQTT bulk streams are thinned; billing uses the remaining room "
                "and new sessions are refused once a charge record cannot be written. Free up "
                "the disk or move [store] path to a larger one.",
            )  # fmt: skip

    @property
    def billing_blocked(self) -> bool:
        """A billing write failed on a full disk and nothing since shows room again (a billing
        write succeeded, or UNBLOCK_MB more free space than right after the failure)."""
        if self._blocked_at_free is None:
            return False
        free = self.free_mb()
        if free is not None and free >= self._blocked_at_free + UNBLOCK_MB:
            self._unblock("free space grew")
        return self._blocked_at_free is not None

    def _unblock(self, why: str) -> None:
        self._blocked_at_free = None
        log.info("store.billing_resumed", path=str(self.path), why=why)

    def wrote(self, billing: bool) -> None:
        """A write transaction committed."""
        if billing and self._blocked_at_free is not None:
            self._unblock("a billing write succeeded")

    def full(self, conn: sqlite3.Connection, billing: bool) -> None:
        """A write transaction on `conn` failed with the disk full. The reserve, if any, is
        released and the WAL checkpointed into the room (the next write may then pass);
        without a reserve, a failed billing write blocks new sessions."""
        self.full_events += 1
        self._free_at = -FREE_CACHE_S
        released = self.release_reserve()
        checkpoint(conn)
        if released or not billing or self._blocked_at_free is not None:
            return
        free = self._free(self.path)
        self._blocked_at_free = float("inf") if free is None else free
        now = time.monotonic()
        if now - self._blocked_logged < LOG_EVERY_S:
            return
        self._blocked_logged = now
        log.critical(
            "store.billing_blocked", path=str(self.path),
            hint="a billing write failed: the disk is full. A charge record that cannot be "
            "written is retried, its connector takes no new session meanwhile; free up the "
            "disk (never delete the store file).",
        )  # fmt: skip

    def state(self) -> dict[str, object]:
        """For `evedge status` and the diagnosis: free space, thresholds, flags."""
        return {
            "free_mb": None if (f := self.free_mb()) is None else round(f, 1),
            "min_free_mb": self.min_free_mb,
            "low": self.low(),
            "billing_blocked": self.billing_blocked,
            "full_events": self.full_events,
            "reserve_released": self.reserve_released,
        }


_SPACES: dict[Path, StoreSpace] = {}
_SPACES_LOCK = threading.Lock()


def _key(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def space_for(path: str | Path) -> StoreSpace:
    """The room policy of the store at `path` (one per file in this process; the defaults
    guard nothing until `configure_space` sets the thresholds)."""
    key = _key(path)
    with _SPACES_LOCK:
        space = _SPACES.get(key)
        if space is None:
            space = _SPACES[key] = StoreSpace(key)
        return space


def configure_space(path: str | Path, min_free_mb: float, reserve_mb: float) -> StoreSpace:
    """Set the thresholds of the store at `path` (the agent does it once, from [store])."""
    space = space_for(path)
    space.min_free_mb = min_free_mb
    space.reserve_mb = reserve_mb
    space._free_at = -FREE_CACHE_S
    return space


class _Limiter:
    """One log line per `what` per LOG_EVERY_S, with the count dropped meanwhile."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self.dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, what: str) -> int | None:
        """Count one; the count since the last line when a line is due, else None."""
        now = time.monotonic()
        with self._lock:
            self.dropped[what] = self.dropped.get(what, 0) + 1
            if now - self._last.get(what, -LOG_EVERY_S) < LOG_EVERY_S:
                return None
            self._last[what] = now
            return self.dropped[what]


_limiter = _Limiter()


@contextlib.contextmanager
def disk_full_tolerated(what: str) -> Iterator[None]:
    """Run a non-billing write; on `DiskFullError` drop it, count it and log at most once a
    minute (`what` names the writer, e.g. "mqtt outbox"), instead of ending the caller.

    Works around sync and async bodies alike (`with ...: await to_thread(...)`).
    """
    try:
        yield
    except DiskFullError as e:
        total = _limiter.hit(what)
        if total is not None:
            log.error(
                "store.disk_full", writer=what, dropped_total=total, error=str(e),
                hint="the store's disk is full: this write was dropped; free up the disk",
            )  # fmt: skip


def dropped_on_full() -> dict[str, int]:
    """Writes dropped by `disk_full_tolerated` so far, per writer."""
    return dict(_limiter.dropped)
