"""The MQTT topic tree of one station: `<topic_prefix>/<station-id>/...`, and its streams.

A stream is an ordered sequence of messages with its own sequence numbers; most streams have
one topic, `display` and `replies` spread over several. `bulk` streams may be thinned when
the outbox runs short of room; every other stream is kept until the broker acknowledged it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stream(StrEnum):
    """Every outgoing stream (the value is also the outbox's stream name)."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    HEALTH = "health"
    FAULT_EVENTS = "faults/events"
    FAULTS_ACTIVE = "faults/active"
    SESSION_EVENTS = "sessions/events"
    BILLING_RECORDS = "billing/records"
    DISPLAY = "display"
    TICKETS = "tickets"
    SECURITY_EVENTS = "security/events"
    KPI = "kpi"
    REPLIES = "replies"


# Thinned first when the outbox is short of room (telemetry before health).
BULK_STREAMS: tuple[Stream, ...] = (Stream.TELEMETRY, Stream.HEALTH)
# Retained topics: the broker keeps the last message for late subscribers.
RETAINED_STREAMS: frozenset[Stream] = frozenset(
    {Stream.STATUS, Stream.FAULTS_ACTIVE, Stream.DISPLAY, Stream.KPI}
)


@dataclass(frozen=True)
class Topics:
    """Topic names of one station."""

    prefix: str
    station: str

    @property
    def base(self) -> str:
        """`<prefix>/<station>`."""
        return f"{self.prefix}/{self.station}"

    def stream(self, stream: Stream, part: str | int | None = None) -> str:
        """The topic of a stream (`display` takes the connector id as `part`)."""
        if stream is Stream.REPLIES:
            raise ValueError("replies go to the command's response topic: use reply()")
        topic = f"{self.base}/{stream.value}"
        return topic if part is None else f"{topic}/{part}"

    def command(self, name: str) -> str:
        """Where the backend sends command `name`."""
        return f"{self.base}/cmd/{name}"

    @property
    def command_filter(self) -> str:
        """Subscription filter for this station's commands (one level: replies don't match)."""
        return f"{self.base}/cmd/+"

    def reply(self, name: str) -> str:
        """The reply topic of command `name` when the command gave no MQTT 5 response topic."""
        return f"{self.base}/cmd/{name}/reply"

    @property
    def reply_filter(self) -> str:
        """Where a command's MQTT 5 Response Topic may point: `<base>/reply/#`."""
        return f"{self.base}/reply/#"

    def reply_allowed(self, topic: str) -> bool:
        """Whether a reply may be published on `topic`: under `<base>/reply/`, no wildcards,
        no NUL, at most 1024 bytes. Anything else would let a command's sender make the
        station publish onto its own streams or into another station's tree."""
        head = f"{self.base}/reply/"
        return (
            topic.startswith(head)
            and len(topic) > len(head)
            and not set("+#\0") & set(topic)
            and len(topic.encode()) <= 1024
        )

    def command_name(self, topic: str) -> str | None:
        """The command name if `topic` is one of this station's command topics, else None."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None
