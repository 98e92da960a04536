"""The MQTT cloud sync service: bus events -> outbox -> broker, commands -> ops -> replies.

Asyncio side: consumers turn bus events into messages and commit them to the outbox in
batches (worker thread), the command loop validates and runs commands. Thread side: the
connection (network thread) and the publisher (drains the outbox). See agent/mqtt/README.md
for the topic and payload contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog

from agent.bus import EventBus
from agent.config import StationConfig
from agent.events import (
    READINGS,
    ChargeRecordWritten,
    DeviceHealth,
    DriverMessage,
    Event,
    FaultCleared,
    FaultRaised,
    HealthState,
    Reading,
    SessionEvent,
    TicketCreated,
    utcnow,
)
from agent.mqtt.commands import CommandHandler
from agent.mqtt.config import MqttConfig
from agent.mqtt.connection import Connection, Handlers, Incoming
from agent.mqtt.outbox import Outbox, Outgoing, Retention
from agent.mqtt.payloads import StatusMessage
from agent.mqtt.publisher import Publisher
from agent.mqtt.topics import Stream, Topics
from agent.ops import Ops
from agent.security.log import SecurityEvent, SecurityEvents, SecurityLog, log_path_for
from agent.security.throttle import Throttled
from agent.sessions.times import to_us
from agent.store.space import disk_full_tolerated
from agent.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

MAX_CONCURRENT_COMMANDS = 4
# Tickets another process committed to the store (`evedge tickets create` while the API was
# unreachable) come with no bus event: the service looks for them this often.
TICKET_POLL_S = 30.0


def agent_version() -> str:
    """The installed evedge version."""
    try:
        return version("evedge")
    except PackageNotFoundError:
        return "unknown"


class MqttService:
    """See the module docstring. Construct before the pollers start (it subscribes here)."""

    def __init__(
        self, cfg: StationConfig, bus: EventBus, ops: Ops, security: SecurityEvents | None = None
    ):
        assert cfg.mqtt is not None
        self.cfg = cfg
        self.m: MqttConfig = cfg.mqtt
        self.ops = ops
        self.topics = Topics(self.m.topic_prefix, cfg.station.id)
        self.outbox = Outbox(
            cfg.store.path, self.topics, Retention(self.m.outbox_max_rows, self.m.min_free_disk_mb)
        )
        self.publisher = Publisher(self.outbox, self.m.inflight_window, self.m.protocol == "5")
        # Alone (tests, CLI) the service writes the agent's security log beside the store.
        security = security or SecurityLog(log_path_for(cfg.store.path))
        self.commands = CommandHandler(
            ops, self.outbox, self.topics, self.m.command_max_ttl_s, self.m.command_max_bytes,
            Throttled(security),
        )  # fmt: skip
        self.connection = Connection(
            self.m,
            self.m.client_id or f"evedge-{cfg.station.id}",
            self.topics.stream(Stream.STATUS),
            self.topics.command_filter,
            Handlers(
                birth=self._birth,
                up=self.publisher.connected,
                down=self.publisher.disconnected,
                acked=self.publisher.acked,
                message=self._incoming_threadsafe,
            ),
        )
        # Subscribed now, not in run(): nothing published after construction is missed.
        self._readings = bus.subscribe(*READINGS, maxsize=100_000, name="mqtt.telemetry")
        self._events = bus.subscribe(
            DeviceHealth,
            FaultRaised,
            FaultCleared,
            SessionEvent,
            ChargeRecordWritten,
            DriverMessage,
            TicketCreated,
            SecurityEvent,
            maxsize=50_000,
            name="mqtt.events",
        )
        # Bounded: a flood of commands is answered `busy` (newest first), not queued for
        # minutes; the broker's own queue is not ours to bound.
        self._incoming: asyncio.Queue[Incoming] = asyncio.Queue(self.m.command_queue)
        self.busy = 0  # commands refused because the queue was full
        self._health_sent: dict[str, HealthState] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active: dict[str, FaultRaised] = {}
        self._offline_clean = b""
        self._status_seq = 0  # the first of the last two status numbers reserved
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self.ticket_poll_s = TICKET_POLL_S

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, catch up on charge records, then forward events and serve commands."""
        self._loop = asyncio.get_running_loop()
        self._active = {f.fault_id: f for f in (await self.ops.active_faults()).faults}
        # Restartable (agent/runtime.py supervises run()): a thread still alive from the
        # previous run goes on; a dead one is started anew.
        for part in (self.publisher, self.connection):
            if part.thread is None or not part.thread.is_alive():
                part.start()
        self._started = True
        log.info(
            "mqtt.start",
            broker=f"{self.m.host}:{self.m.port}",
            protocol=self.m.protocol,
            tls=self.m.tls,
            mtls=self.m.cert_file is not None,
            topics=self.topics.base,
        )
        await self._enqueue_records()
        await self._enqueue_tickets()
        loops = [
            self._telemetry_loop(),
            self._event_loop(),
            self._command_loop(),
            self._ticket_loop(),
            self._kpi_loop(),
        ]
        tasks = [asyncio.create_task(c, name=f"mqtt {c.__name__}") for c in loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            await cancel_and_wait(tasks)
            await cancel_and_wait(list(self._tasks))

    async def flush(self, timeout: float) -> None:
        """Wait (at most `timeout`) until the broker acknowledged everything committed so
        far; returns at once when not connected (the outbox keeps it for the next start)."""
        deadline = time.monotonic() + timeout
        upto = await asyncio.to_thread(self.outbox.last_id)
        self.publisher.wake()
        while self.connection.connected and time.monotonic() < deadline:
            if not await asyncio.to_thread(self.outbox.remaining, upto):
                return
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Publish `offline` (clean), disconnect, stop the threads, close the outbox."""
        self._readings.close()
        self._events.close()
        if self._started:
            await asyncio.to_thread(self.connection.stop, self._offline_clean)
            await asyncio.to_thread(self.publisher.stop)
        self.outbox.close()
        log.info("mqtt.stop", published=self.publisher.stats.published)

    def state(self) -> dict[str, Any]:
        """For `evedge status`: connection, backlog per stream, oldest undelivered age."""
        st = self.publisher.stats
        oldest = st.oldest_us
        return {
            "connected": self.connection.connected,
            "broker": f"{self.m.host}:{self.m.port}",
            "protocol": self.m.protocol,
            "tls": self.m.tls,
            "connects": self.connection.connects,
            "last_error": self.connection.last_error,
            "backlog": sum(st.backlog.values()),
            "backlog_by_stream": dict(st.backlog),
            "oldest_undelivered_age_s": (
                None if oldest is None else round((to_us(utcnow()) - oldest) / 1e6, 1)
            ),
            "published": st.published,
            "acked": st.acked,
            "rejected": st.rejected,
            "thinned": dict(st.thinned),
            "refused_by_broker": st.refused_dropped + st.refused_kept,
            "refused_kept": st.refused_kept,
            "commands": {
                "busy": self.busy,
                "refused_response_topic": self.commands.refused_topics,
                **self.commands.wall.state(),
            },
        }

    def _check_threads(self) -> None:
        """A dead publisher or network thread would stall delivery silently: end the service
        loudly instead (the agent stops, systemd restarts it, the outbox resumes)."""
        for name, thread in (
            ("publisher", self.publisher.thread),
            ("network", self.connection.thread),
        ):
            if thread is not None and not thread.is_alive():
                raise RuntimeError(f"the MQTT {name} thread ended; see the log above")

    # ------------------------------------------------------------------ network thread hooks

    def _birth(self) -> tuple[bytes, bytes]:
        """Status payloads of the next connection: online, and offline as its Last Will."""
        seq = self._status_seq + 2  # on a full disk: numbered on, not persisted
        with disk_full_tolerated("mqtt status numbering"):  # (a reconnect must not fail)
            seq = self.outbox.next_seq(Stream.STATUS, 2)
        self._status_seq = seq
        common = dict(station=self.topics.station, agent_version=agent_version())
        online = StatusMessage(msg_id=_mid(), seq=seq, ts=utcnow(), state="online", **common)
        will = StatusMessage(
            msg_id=_mid(), seq=seq + 1, ts=utcnow(), state="offline", clean=False, **common
        )
        self._offline_clean = will.model_copy(update={"clean": True}).model_dump_json().encode()
        return online.model_dump_json().encode(), will.model_dump_json().encode()

    def _incoming_threadsafe(self, msg: Incoming) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._offer, msg)

    def _offer(self, msg: Incoming) -> None:
        """Queue a command, or answer `busy` when the queue is full (the newest waits least)."""
        try:
            self._incoming.put_nowait(msg)
            return
        except asyncio.QueueFull:
            pass
        self.busy += 1
        reply = self.commands.refuse(
            msg, "busy", f"{self._incoming.maxsize} commands are waiting; try again later"
        )
        self._spawn(self._deliver(msg, reply), "mqtt busy reply")

    # ------------------------------------------------------------------ producers

    async def _commit(self, items: list[Outgoing]) -> None:
        if items:
            with disk_full_tolerated("mqtt outbox"):
                await asyncio.to_thread(self.outbox.add, items)
            self.publisher.wake()

    async def _enqueue_records(self) -> None:
        """Copy charge records after the billing cursor into the outbox (on a full disk the
        cursor stays: they are copied at the next ChargeRecordWritten or start)."""
        with disk_full_tolerated("mqtt outbox: charge records"):
            while await asyncio.to_thread(self.outbox.add_charge_records):
                self.publisher.wake()

    async def _telemetry_loop(self) -> None:
        latest: dict[tuple[str, str], Reading] = {}
        samples = 0
        start = utcnow()
        next_at = time.monotonic() + self.m.telemetry_interval_s
        while True:
            timeout = next_at - time.monotonic()
            if timeout > 0:
                # asyncio.timeout: Python 3.11's wait_for may lose a cancel (see diagnosis).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        ev = await self._readings.get()
                    while ev is not None:
                        for r in ev.samples():
                            latest[(r.device, r.quantity)] = r
                            samples += 1
                        ev = self._readings.get_nowait()
                continue
            self._check_threads()
            end = utcnow()
            if latest:
                readings = [
                    dict(device=r.device, quantity=r.quantity, value=r.value, unit=r.unit,
                         quality=r.quality, ts=r.ts)
                    for r in latest.values()
                ]  # fmt: skip
                data = dict(interval_start=start, interval_end=end, samples=samples,
                            readings=readings)  # fmt: skip
                await self._commit([Outgoing(Stream.TELEMETRY, data)])
            latest, samples, start = {}, 0, end
            next_at += self.m.telemetry_interval_s
            if next_at < time.monotonic():  # we fell behind (e.g. suspended): don't burst
                next_at = time.monotonic() + self.m.telemetry_interval_s

    async def _event_loop(self) -> None:
        while True:
            batch = [await self._events.get()]
            while (ev := self._events.get_nowait()) is not None and len(batch) < 500:
                batch.append(ev)
            items: list[Outgoing] = []
            records = tickets = False
            for ev in batch:
                items.extend(self._messages(ev))
                records |= isinstance(ev, ChargeRecordWritten)
                tickets |= isinstance(ev, TicketCreated)
            await self._commit(items)
            if records:
                await self._enqueue_records()
            if tickets:
                await self._enqueue_tickets()

    def _messages(self, ev: Event) -> list[Outgoing]:
        if isinstance(ev, DeviceHealth):
            # The poller reports health after every cycle; the contract is "when it changes".
            if self._health_sent.get(ev.device) == ev.state:
                return []
            self._health_sent[ev.device] = ev.state
            return [Outgoing(Stream.HEALTH, {"health": ev})]
        if isinstance(ev, SessionEvent):
            return [Outgoing(Stream.SESSION_EVENTS, {"event": ev})]
        if isinstance(ev, SecurityEvent):
            return [Outgoing(Stream.SECURITY_EVENTS, {"event": ev})]
        if isinstance(ev, DriverMessage):
            return [
                Outgoing(
                    Stream.DISPLAY,
                    {"connector": ev.connector, "message": ev},
                    topic=self.topics.stream(Stream.DISPLAY, ev.connector),
                )
            ]
        if isinstance(ev, FaultRaised):
            self._active[ev.fault_id] = ev
            event = Outgoing(Stream.FAULT_EVENTS, {"kind": "raised", "raised": ev})
        elif isinstance(ev, FaultCleared):
            self._active.pop(ev.fault_id, None)
            event = Outgoing(Stream.FAULT_EVENTS, {"kind": "cleared", "cleared": ev})
        else:
            return []
        snapshot = sorted(self._active.values(), key=lambda f: f.ts)
        return [event, Outgoing(Stream.FAULTS_ACTIVE, {"faults": snapshot})]

    async def _enqueue_tickets(self) -> None:
        """Copy tickets neither delivered nor queued into the outbox (the query skips those
        already there, so the event loop and the poll never queue one twice)."""
        with disk_full_tolerated("mqtt outbox: tickets"):
            while await asyncio.to_thread(self.outbox.add_tickets):
                self.publisher.wake()

    async def _ticket_loop(self) -> None:
        """Pick up tickets written by another process (no TicketCreated on our bus)."""
        while True:
            await asyncio.sleep(self.ticket_poll_s)
            await self._enqueue_tickets()

    async def _kpi_loop(self) -> None:
        """The KPI report on the `kpi` stream at every multiple of [kpi] publish_interval_s
        (wall clock, UTC: daily at midnight by default), whatever the restarts in between."""
        every = self.cfg.kpi.publish_interval_s
        while True:
            now = utcnow().timestamp()
            await asyncio.sleep(every - now % every)
            await self.publish_kpi()

    async def publish_kpi(self) -> None:
        """Compute the KPI report now and queue it on the `kpi` stream."""
        try:
            report = await self.ops.kpi()
        except Exception:  # a store problem must not end MQTT sync
            log.exception("mqtt.kpi_failed")
            return
        await self._commit([Outgoing(Stream.KPI, {"report": report})])

    # ------------------------------------------------------------------ commands

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command_loop(self) -> None:
        slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        while True:
            await slots.acquire()
            msg = await self._incoming.get()
            self._spawn(self._command(msg, slots), "mqtt command")

    async def _command(self, msg: Incoming, slots: asyncio.Semaphore) -> None:
        try:
            await self._deliver(msg, await self.commands.handle(msg))
        finally:
            slots.release()

    async def _deliver(self, msg: Incoming, reply: Outgoing | None) -> None:
        if reply is None:
            return
        try:
            await self._commit([reply])
        except Exception as e:  # committing the reply failed: counted, the service runs on
            self.commands.wall.caught(e, topic=msg.topic[:200])


def _mid() -> str:
    return uuid.uuid4().hex
