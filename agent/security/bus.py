"""A sink putting security events on the event bus (the MQTT `security/events` stream)."""

from __future__ import annotations

import asyncio

import structlog

from agent.bus import EventBus
from agent.security.log import SecurityEvent, Sink

log = structlog.get_logger(__name__)


def bus_sink(bus: EventBus) -> Sink:
    """Publish each event on `bus`. The bus is not thread-safe: an event recorded in another
    thread is handed to the loop that recorded the previous one (the agent's, from the
    StartupOfTheDevice event on)."""
    loop: asyncio.AbstractEventLoop | None = None

    def sink(ev: SecurityEvent) -> None:
        nonlocal loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if loop is None or loop.is_closed():
                log.warning("security.not_on_bus", type=ev.type, seq=ev.seq, hint="in the log")
                return
            loop.call_soon_threadsafe(bus.publish, ev)
            return
        bus.publish(ev)

    return sink
