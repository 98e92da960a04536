"""StoreWriter: the bus consumer that batches Readings and DeviceHealth into the store.

Disk work runs in a worker thread (asyncio.to_thread) so the event loop never waits on an
fsync. One commit per batch: a batch closes `commit_interval_s` after its first event, or
as soon as it holds `max_batch` events, whichever comes first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import structlog

from agent.bus import EventBus
from agent.events import READINGS, DeviceHealth, Event, utcnow
from agent.store.db import Store
from agent.store.space import disk_full_tolerated
from agent.store.thinning import Deadband, Thinner

log = structlog.get_logger(__name__)


@dataclass
class WriterStats:
    """Counters a technician (and `evedge status`) can read."""

    written: int = 0  # rows committed: a row per value, the newest health per device per batch
    batches: int = 0
    last_commit_ts: datetime | None = None
    write_errors: int = 0
    lost: int = 0  # events given up after write failures (pending buffer full)
    pruned: int = 0
    thinned: int = 0  # readings not stored: the disk is below [store] min_free_disk_mb or full
    skipped: int = 0  # readings not stored: within the deadband of a stored one (retention)


class StoreWriter:
    """Consume readings and DeviceHealth events from `bus`, commit them to `store` in batches."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        max_rows: int = 500_000,
        max_age_days: float = 14,
        commit_interval_s: float = 1.0,
        max_batch: int = 1000,
        prune_interval_s: float = 300.0,
        queue_size: int = 50_000,
        max_pending: int = 100_000,
        retention: Deadband | None = None,
    ):
        self.store = store
        self.max_rows = max_rows
        self.max_age_days = max_age_days
        self.commit_interval_s = commit_interval_s
        self.max_batch = max_batch
        self.prune_interval_s = prune_interval_s
        self.max_pending = max_pending
        self.stats = WriterStats()
        self._thinner = Thinner(retention or Deadband())
        # Subscribe now, not in run(): nothing published before the task starts is missed.
        self._sub = bus.subscribe(*READINGS, DeviceHealth, maxsize=queue_size)
        self._pending: list[Event] = []
        self._getter: asyncio.Future[Event] | None = None
        # Prune at the first chance: the ring bounds may have changed since the last run.
        self._next_prune = 0.0
        self._retry_delay = 0.0

    @property
    def dropped(self) -> int:
        """Events the bus dropped because this writer's queue was full."""
        return self._sub.dropped

    def counters(self) -> dict[str, object]:
        """All counters in one dict (for status output and health)."""
        return {**asdict(self.stats), "dropped": self.dropped, "pending": len(self._pending)}

    async def run(self) -> None:
        """Write until cancelled; on cancel, commit whatever was received, then re-raise."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._collect(loop)
                await self._flush()
                if loop.time() >= self._next_prune:
                    await self._prune()
                    self._next_prune = loop.time() + self.prune_interval_s
                if self._retry_delay:
                    await asyncio.sleep(self._retry_delay)
        except asyncio.CancelledError:
            # Cut off at the cancel: stop the getter (an event it had not taken yet stays
            # queued), take everything queued, stop receiving, commit once more.
            self._stop_getter()
            self._drain(limit=None)
            self._sub.close()
            await self._flush(final=True)
            if self._pending:
                log.error(
                    "store.unsaved_on_stop", path=str(self.store.path), rows=len(self._pending)
                )
            raise
        finally:
            self._stop_getter()
            self._sub.close()

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fill `_pending` until the batch is full or `commit_interval_s` after its first event.

        When idle, returns empty-handed at the next prune time.
        """
        self._drain(self.max_batch)
        if not self._pending and not await self._wait_event(self._next_prune - loop.time()):
            return
        deadline = loop.time() + self.commit_interval_s
        while len(self._pending) < self.max_batch:
            self._drain(self.max_batch)
            remaining = deadline - loop.time()
            if len(self._pending) >= self.max_batch or remaining <= 0:
                break
            if not await self._wait_event(remaining):
                break

    async def _wait_event(self, timeout: float) -> bool:
        """Wait up to `timeout` s for one event and append it to `_pending`."""
        if self._getter is None:
            self._getter = asyncio.ensure_future(self._sub.get())
        # asyncio.wait, unlike wait_for, leaves the getter running on timeout, so an event
        # that arrives right at the deadline is kept for the next batch, never lost.
        done, _ = await asyncio.wait({self._getter}, timeout=max(0.0, timeout))
        if not done:
            return False
        self._pending.append(self._getter.result())
        self._getter = None
        return True

    def _stop_getter(self) -> None:
        if self._getter is None:
            return
        if self._getter.done() and not self._getter.cancelled():
            self._pending.append(self._getter.result())
        else:
            self._getter.cancel()
        self._getter = None

    def _drain(self, limit: int | None) -> None:
        """Move already-queued events into `_pending` (up to `limit` pending in total)."""
        if self._getter is not None and self._getter.done():
            self._stop_getter()  # its event is older than anything still queued
        while limit is None or len(self._pending) < limit:
            ev = self._sub.get_nowait()
            if ev is None:
                return
            self._pending.append(ev)

    async def _flush(self, final: bool = False) -> None:
        """Commit `_pending` in a worker thread; on failure keep it for the next attempt.
        `final`: also the newest reading of each series the retention policy held back."""
        if not self._pending and not final:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(asyncio.to_thread(self._write, batch, final))
        try:
            ok = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The thread cannot be stopped: wait for its verdict so the batch is neither
            # lost nor written twice, then let the cancellation proceed.
            ok = await task
            if not ok:
                self._requeue(batch)
            raise
        if ok:
            self._retry_delay = 0.0
        else:
            self._requeue(batch)
            self._retry_delay = min(max(self._retry_delay * 2, 0.5), 30.0)

    def _requeue(self, batch: list[Event]) -> None:
        self._pending = batch + self._pending
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            # Telemetry may be thinned; keep the newest. (Billing never goes through here.)
            del self._pending[:excess]
            self.stats.lost += excess
            log.error("store.events_lost", path=str(self.store.path), rows=excess)

    def _write(self, batch: list[Event], final: bool = False) -> bool:
        """Worker thread: one transaction for the batch. True when committed or given up on
        for lack of disk space (telemetry yields its room to billing, never retried)."""
        # A device cycle's values arrive as one event; the rows are one per value.
        readings = [r for e in batch if isinstance(e, READINGS) for r in e.samples()]
        # The store keeps each device's newest health only: serialise (JSON) and upsert that
        # one, not every poll's (a device at 1 Hz publishes one per poll).
        newest: dict[str, DeviceHealth] = {}
        for e in batch:
            if isinstance(e, DeviceHealth) and (
                e.device not in newest or e.ts >= newest[e.device].ts
            ):
                newest[e.device] = e
        healths = list(newest.values())
        seen = len(readings)
        readings, stored = self._thinner.select(readings)
        skipped = seen - len(readings)
        if final:
            # The newest value of each series, so the ring's latest are exact after a clean stop.
            for h in self._thinner.held():
                key = (h.device, h.quantity)
                if key not in stored or stored[key].ts < h.ts:
                    readings.append(h)
                    stored[key] = h
                    skipped -= 1  # counted when it was held back
        if not readings and not healths:
            self.stats.skipped += skipped
            return True
        if readings and self.store.space.low():
            self.stats.thinned += len(readings)
            readings, stored = [], {}
        t0 = time.perf_counter()
        try:
            n = None
            with disk_full_tolerated("readings ring"):
                n = self.store.write_batch(readings, healths)
            if n is None:  # the disk was full: dropped, counted, logged
                self.stats.thinned += len(readings) + len(healths)
                return True
        except Exception as e:
            self.stats.write_errors += 1
            log.error(
                "store.write_failed", path=str(self.store.path), rows=len(batch), error=str(e)
            )
            return False
        self._thinner.commit(stored)
        self.stats.skipped += skipped
        self.stats.written += n
        self.stats.batches += 1
        self.stats.last_commit_ts = utcnow()
        ms = round((time.perf_counter() - t0) * 1000, 1)
        log.debug("store.committed", path=str(self.store.path), rows=n, duration_ms=ms)
        return True

    async def _prune(self) -> None:
        max_rows = self.max_rows
        low = self.store.space.low()
        if low:
            # Short of room: halve the ring, its freed pages are reused by billing writes.
            max_rows = min(max_rows, await asyncio.to_thread(self.store.count_readings) // 2)
        try:
            self.stats.pruned += await asyncio.to_thread(
                self.store.prune, max_rows, self.max_age_days
            )
        except Exception as e:
            log.error("store.prune_failed", path=str(self.store.path), error=str(e))
        if low:
            await asyncio.to_thread(self.store.checkpoint)
