"""OCPP 1.6J (security whitepaper ed. 3): security events as SecurityEventNotification.req."""

from __future__ import annotations

from datetime import UTC
from typing import Protocol

from agent.security.log import SecurityEvent, Sink

ACTION = "SecurityEventNotification"


class NoticeQueue(Protocol):
    """What the sink needs of the OCPP outbox (agent/ocpp/outbox.py)."""

    def enqueue_notice(self, action: str, payload: dict) -> int: ...


def payload(ev: SecurityEvent) -> dict:
    """The camelCase request body of an event."""
    stamp = ev.ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"type": ev.type, "timestamp": stamp}
    if ev.tech_info:
        body["techInfo"] = ev.tech_info
    return body


def outbox_sink(outbox: NoticeQueue) -> Sink:
    """A sink queueing each event in the durable outbox: sent in order once the CSMS accepted
    the boot, retried and kept like the transaction messages (none is ever dropped)."""

    def sink(ev: SecurityEvent) -> None:
        outbox.enqueue_notice(ACTION, payload(ev))

    return sink
