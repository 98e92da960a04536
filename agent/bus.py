"""In-process asyncio event bus: typed pub/sub with bounded queues per subscriber.

A slow consumer never blocks the pollers: when its queue is full the oldest event is
dropped and counted. Consumers that must not lose anything (the store, the outbox) get
a queue large enough for their commit interval and read `dropped` in their health.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent.events import Event


class Subscription:
    """One consumer's queue of events of the types it asked for."""

    def __init__(self, bus: EventBus, types: tuple[type[Event], ...], maxsize: int):
        self._bus = bus
        self.types = types
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        """Wait for the next event."""
        return await self.queue.get()

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting, else None."""
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        """Stop receiving events."""
        self._bus._subs.discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


class EventBus:
    """Publish events to every subscriber whose types match. Publishing never awaits."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.published = 0

    def subscribe(self, *types: type[Event], maxsize: int = 10_000) -> Subscription:
        """Subscribe to events of the given types (all events if none given)."""
        sub = Subscription(self, types or (Event,), maxsize)
        self._subs.add(sub)
        return sub

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
