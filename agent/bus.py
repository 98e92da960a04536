"""In-process asyncio event bus: typed pub/sub with bounded queues per subscriber.

A slow consumer never blocks the pollers: when its queue is full the oldest event is
dropped and counted. Consumers that must not lose anything (the store, the outbox) get
a queue large enough for their commit interval and read `dropped` in their health.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

from agent.events import Event


class Subscription:
    """One consumer's queue of events of the types it asked for."""

    def __init__(
        self,
        bus: EventBus,
        types: tuple[type[Event], ...],
        maxsize: int,
        name: str,
        watch: bool,
    ):
        self._bus = bus
        self.types = types
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.name = name
        self.watch = watch
        # Since when events have waited without the consumer taking one (None: nothing
        # waits); the watchdog tells a stuck consumer from an idle one by it.
        self.waiting_since: float | None = None

    def _offer(self, event: Event) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        """Wait for the next event."""
        return self._taken(await self.queue.get())

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting, else None."""
        try:
            return self._taken(self.queue.get_nowait())
        except asyncio.QueueEmpty:
            return None

    def _taken(self, event: Event) -> Event:
        self.waiting_since = None if self.queue.empty() else time.monotonic()
        return event

    def close(self) -> None:
        """Stop receiving events."""
        self._bus._subs.discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while True:
            yield await self.get()


class EventBus:
    """Publish events to every subscriber whose types match. Publishing never awaits."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.published = 0

    def subscribe(
        self,
        *types: type[Event],
        maxsize: int = 10_000,
        name: str | None = None,
        watch: bool = True,
    ) -> Subscription:
        """Subscribe to events of the given types (all events if none given).

        `name` labels the consumer in watchdog logs (default: the subscribing module).
        With `watch` (the default) a consumer that leaves events waiting too long counts
        as stuck and stops the systemd watchdog pings (agent/watchdog.py); pass
        watch=False for consumers outside the agent's control, such as API clients.
        """
        name = name or sys._getframe(1).f_globals.get("__name__", "?")
        sub = Subscription(self, types or (Event,), maxsize, name, watch)
        self._subs.add(sub)
        return sub

    def subscriptions(self) -> list[Subscription]:
        """The open subscriptions (for health checks)."""
        return list(self._subs)

    def publish_many(self, events: list[Event]) -> None:
        """Publish several events in order."""
        for event in events:
            self.publish(event)

    def publish(self, event: Event) -> None:
        """Deliver `event` to matching subscribers, without waiting."""
        self.published += 1
        for sub in list(self._subs):
            if isinstance(event, sub.types):
                sub._offer(event)
