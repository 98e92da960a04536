"""A rate-limited view of the port, for events a peer can provoke at will (invalid frames,
replayed commands): one event per type per window, the next one telling how many were left
out, so a flood neither fills the security log nor the CSMS's queue."""

from __future__ import annotations

from agent.security.log import SecurityEvents
from agent.walls import RateLimited

EVERY_S = 60.0


class Throttled:
    """`record` at most once per `every_s` per event type; False when left out."""

    def __init__(self, port: SecurityEvents, every_s: float = EVERY_S):
        self.port = port
        self._limit = RateLimited(self._emit, every_s)

    def record(self, type: str, tech_info: str | None = None) -> bool:
        """Record the event unless one of its type was recorded less than `every_s` ago."""
        return self._limit(type, type, tech_info=tech_info)

    def _emit(self, type: str, tech_info: str | None, suppressed_since_last: int = 0) -> None:
        if suppressed_since_last:
            tech_info = f"{tech_info or ''} (+{suppressed_since_last} since the last event)"
        self.port.record(type, tech_info)
