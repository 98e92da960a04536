"""A bounded in-memory ring of recent log events, for the diagnostics bundle.

`capture` is a structlog processor (agent/logsetup.py puts it after the secret redaction, so
the ring holds what the journal holds). Events are kept as JSON-ready dicts; the oldest go
first when the ring is full.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime
from typing import Any

MAX_EVENTS = 5000


class LogRing:
    """The newest `maxlen` log events."""

    def __init__(self, maxlen: int = MAX_EVENTS):
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def capture(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """structlog processor: keep a copy of the event, pass it on unchanged."""
        entry = {k: _plain(v) for k, v in event_dict.items() if k != "exc_info"}
        with self._lock:
            self._events.append(entry)
        return event_dict

    def events(self, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
        """Kept events, oldest first, within [since, until] by their ISO `timestamp`."""
        with self._lock:
            out = list(self._events)
        if since is None and until is None:
            return out
        return [e for e in out if _within(e.get("timestamp"), since, until)]

    def clear(self) -> None:
        """Forget every kept event."""
        with self._lock:
            self._events.clear()


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None)) else str(v)


def _within(ts: Any, since: datetime | None, until: datetime | None) -> bool:
    try:
        t = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return True  # no usable time: keep it rather than lose it
    if t.tzinfo is None:
        return True
    return (since is None or t >= since) and (until is None or t <= until)


RING = LogRing()  # the process's ring, fed by agent/logsetup.py
