"""The publisher: drains the outbox to the broker on its own thread.

Messages go out in outbox order (so in order per stream) with QoS 1, at most `window`
unacknowledged at a time; a message is deleted from the outbox only after its PUBACK.
Database work (reading batches, deleting acknowledged rows in batches, the retention policy)
runs here, never on the asyncio loop, so a large backlog drains without delaying the
pollers. After a reconnect everything unacknowledged is sent again, oldest first.

A publish the broker refuses (MQTT 5 PUBACK reason code >= 0x80, e.g. 0x87 Not authorized by
its ACL) would be refused again on every resend: it is deleted from the outbox with a log
line, except a charge record or ticket, which is never dropped: it is kept and offered
again every `refused_retry_s` (in case the broker's ACL was fixed; not sooner, as
mosquitto 2.0 also closes the connection after refusing), counted in `refused_kept` and
raised as the fault `mqtt_billing_refused` while any is kept.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.outbox import Outbox, Row
from agent.mqtt.topics import Stream
from agent.store.space import disk_full_tolerated
from agent.walls import RateLimited

log = structlog.get_logger(__name__)

# Refused by the broker, kept anyway: billing evidence and drivers' reports.
KEPT_WHEN_REFUSED = frozenset({Stream.BILLING_RECORDS.value, Stream.TICKETS.value})

FETCH = 1000  # rows read per query
ACK_FLUSH_S = 0.05  # acknowledged rows are deleted at least this often (and per FETCH acks)
HOUSEKEEPING_S = 10.0  # retention policy check
STATS_S = 1.0  # backlog figures for state()
YIELD_EVERY = 20  # publishes between GIL hand-overs while a backlog drains
REFUSED_RETRY_S = 60.0  # a kept message the broker refused is offered again this often


@dataclass
class PublisherStats:
    """Counters and the latest backlog figures (read by the service's state())."""

    published: int = 0
    acked: int = 0
    rejected: int = 0  # unpublishable (topic or payload MQTT cannot carry): deleted
    refused_dropped: int = 0  # refused by the broker (PUBACK >= 0x80): deleted
    refused_kept: int = 0  # refused by the broker, kept (charge records, tickets) right now
    resent_after_reconnect: int = 0
    backlog: dict[str, int] = field(default_factory=dict)
    oldest_us: int | None = None
    thinned: dict[str, int] = field(default_factory=dict)


class Publisher:
    """See the module docstring. `connected(gen, client)` / `disconnected(gen)` / `acked()`
    are called from the network thread; `wake()` from anywhere after new rows commit."""

    def __init__(self, outbox: Outbox, window: int, v5: bool):
        self.outbox = outbox
        self.window = window
        self.v5 = v5
        self.stats = PublisherStats()
        self._cond = threading.Condition()
        self._acks: deque[tuple[int, int, bool]] = deque()
        self._client: paho.Client | None = None
        self._gen = 0
        self._woken = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self._refused_rows: dict[int, float] = {}  # kept after a refusal -> when to retry
        self.refused_retry_s = REFUSED_RETRY_S
        self._log_refused = RateLimited(log.error)

    @property
    def thread(self) -> threading.Thread | None:
        """The publisher thread (None before start)."""
        return self._thread

    # ------------------------------------------------------------------ from other threads

    def start(self) -> None:
        """Start the publisher thread."""
        self._thread = threading.Thread(target=self._run, name="mqtt-publish", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after it deleted the rows acknowledged so far."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    def wake(self) -> None:
        """New messages were committed."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def connected(self, gen: int, client: paho.Client) -> None:
        with self._cond:
            self._client, self._gen, self._woken = client, gen, True
            self._cond.notify_all()

    def disconnected(self, gen: int) -> None:
        with self._cond:
            if self._gen == gen:
                self._client = None
            self._cond.notify_all()

    def acked(self, gen: int, mid: int, ok: bool) -> None:
        with self._cond:
            self._acks.append((gen, mid, ok))
            self._cond.notify_all()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("mqtt.publisher_crashed")
            raise

    def _loop(self) -> None:
        gen = -1  # the connection the in-flight map belongs to
        inflight: dict[int, Row] = {}  # mid -> outbox row
        done: list[int] = []  # acknowledged row ids not yet deleted
        queue: deque[Row] = deque()
        after_id = 0
        last_flush = last_house = last_stats = 0.0
        while True:
            with self._cond:
                while not (self._stop or self._acks or self._ready(gen, inflight, queue)):
                    if not self._cond.wait(timeout=min(ACK_FLUSH_S, STATS_S)):
                        break
                stop = self._stop
                acks = list(self._acks)
                self._acks.clear()
                client, cur_gen = self._client, self._gen
            for g, mid, ok in acks:
                if g != gen:
                    continue  # a late ack of a connection we already gave up on
                row = inflight.pop(mid, None)
                if row is None:
                    continue
                if ok:
                    done.append(row.id)
                    self.stats.acked += 1
                    if self._refused_rows.pop(row.id, None) is not None:
                        self.stats.refused_kept = len(self._refused_rows)
                else:
                    self._refused(row)
            now = time.monotonic()
            if done and (stop or len(done) >= FETCH or now - last_flush >= ACK_FLUSH_S):
                with disk_full_tolerated("mqtt outbox: acks"):  # kept in `done`, tried again
                    self.outbox.delivered(done)
                    done.clear()
                last_flush = now
            if stop:
                return
            if cur_gen != gen and client is not None:
                # A new connection: nothing in flight any more; start again from the oldest.
                with disk_full_tolerated("mqtt outbox: acks"):
                    self.outbox.delivered(done)
                    done.clear()
                if inflight:
                    self.stats.resent_after_reconnect += len(inflight)
                gen, inflight, after_id = cur_gen, {}, 0
                queue.clear()
                with self._cond:
                    self._woken = True
            if client is not None and cur_gen == gen:
                retry = self._retry_from(now, inflight)
                if retry is not None and retry <= after_id:
                    # A kept, refused message is due again: read the outbox again from it
                    # (in flight and held messages are skipped; acknowledged ones deleted).
                    self.outbox.delivered(done)
                    done.clear()
                    queue.clear()
                    after_id = retry - 1
                    with self._cond:
                        self._woken = True
                after_id = self._send(client, inflight, queue, after_id)
            if now - last_house >= HOUSEKEEPING_S:
                last_house = now
                self.stats.thinned = self._housekeeping()
            if now - last_stats >= STATS_S:
                last_stats = now
                self.stats.backlog = self.outbox.backlog()
                self.stats.oldest_us = self.outbox.oldest_us()

    def _ready(self, gen: int, inflight: dict, queue: deque) -> bool:
        if self._client is None:
            return False
        if self._gen != gen:
            return True
        return len(inflight) < self.window and (bool(queue) or self._woken)

    def _send(
        self, client: paho.Client, inflight: dict[int, Row], queue: deque[Row], after_id: int
    ) -> int:
        """Publish until the window is full or the outbox is drained; returns the new
        high-water row id."""
        sending = {r.id for r in inflight.values()}  # a re-read (retry) must not resend these
        while len(inflight) < self.window:
            if not queue:
                with self._cond:
                    if not self._woken:
                        break
                    self._woken = False
                rows = self.outbox.pending(after_id, FETCH)
                if len(rows) == FETCH:
                    self.wake()  # more after this batch
                if not rows:
                    break
                queue.extend(rows)
            row = queue.popleft()
            held = self._refused_rows.get(row.id, 0.0) > time.monotonic()
            if row.id in sending or held:  # held: refused before, waits for its retry time
                after_id = row.id
                continue
            try:
                info = client.publish(
                    row.topic, row.payload, qos=1, retain=row.retain, properties=self._props(row)
                )
            except ValueError as e:  # a topic or payload MQTT cannot carry: never sendable
                log.error("mqtt.unpublishable", stream=row.stream, seq=row.seq, error=str(e))
                self.stats.rejected += 1
                self.outbox.discard(row.id)
                after_id = row.id
                continue
            if info.rc != paho.MQTT_ERR_SUCCESS:
                # Connection lost under us: resend from the oldest on the next connection.
                queue.clear()
                return after_id
            inflight[info.mid] = row
            sending.add(row.id)
            after_id = row.id
            self.stats.published += 1
            if self.stats.published % YIELD_EVERY == 0:
                time.sleep(0)  # let the asyncio loop (pollers) take the GIL now, not in 5 ms
        return after_id

    def _refused(self, row: Row) -> None:
        """The broker refused `row` (see the module docstring)."""
        kept = row.stream in KEPT_WHEN_REFUSED
        self._log_refused(
            row.stream,
            "mqtt.publish_refused",
            stream=row.stream,
            seq=row.seq,
            topic=row.topic,
            action="kept, raised as a fault" if kept else "deleted from the outbox",
            hint="the broker's ACL must let this station publish under its own topic tree",
        )
        if kept:
            self._refused_rows[row.id] = time.monotonic() + self.refused_retry_s
        else:
            self.outbox.discard(row.id)
            self.stats.refused_dropped += 1
        self.stats.refused_kept = len(self._refused_rows)

    def _retry_from(self, now: float, inflight: dict[int, Row]) -> int | None:
        """The lowest id of a kept, refused message due for another try, if any."""
        sending = {r.id for r in inflight.values()}
        due = [i for i, at in self._refused_rows.items() if at <= now and i not in sending]
        return min(due) if due else None

    def _props(self, row: Row) -> Properties | None:
        if not self.v5 or row.correlation is None:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = row.correlation
        return props

    def _housekeeping(self) -> dict[str, Any]:
        try:
            with disk_full_tolerated("mqtt outbox: thinning"):  # deleting needs WAL room
                self.outbox.thin()
            return self.outbox.thinned()
        except Exception:  # the disk check must never stop delivery
            log.exception("mqtt.housekeeping_failed")
            return self.stats.thinned
