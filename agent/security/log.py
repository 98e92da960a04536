"""The security log and the `SecurityEvents` port every service records events through.

The log is a file beside the store (`<store>.security.jsonl`), JSON lines, append-only: one
line per event, `{"ts", "seq", "type", "critical", "tech_info"}` (a `SecurityEvent`, also
the bus event the MQTT `security/events` stream carries). A critical event is
fsynced before `record()` returns (it must survive a power cut right after a tamper or a
reboot); others are flushed to the OS only. The file is rotated when it passes
`max_bytes`: the full file becomes `.1` (the previous `.1` is dropped), so the log never uses
more than about 2 x max_bytes of flash. `seq` keeps counting across rotations and restarts,
and across processes: the agent and a CLI (`evedge update apply`) append under one lock
file (`flock`), each reading the last seq from the file's tail first.

After the line is written, each sink gets the event (the OCPP service queues a
SecurityEventNotification in its durable outbox; the bus carries it to MQTT). A failing sink
is logged and does not stop the others: the file already holds the event.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog
from pydantic import Field, ValidationError

from agent.events import Event
from agent.security.catalog import Catalog, catalog

log = structlog.get_logger(__name__)

MAX_BYTES = 1_000_000  # per file; two files at most
TECH_INFO_MAX = 255  # OCPP 1.6 security: techInfo is string[255]
TAIL_BYTES = 4096  # holds several lines: one is at most ~450 bytes


class SecurityEvent(Event):
    """One recorded security event: a line of the log, and a bus event (`ts`: when)."""

    seq: int = Field(ge=1, description="counts on across restarts and rotations")
    type: str = Field(description="the OCPP security event type (agent/security/events.toml)")
    critical: bool
    tech_info: str | None = Field(default=None, max_length=TECH_INFO_MAX)


class SecurityEvents(Protocol):
    """The port: services call `record` where an event happens (OCPP 1.6J and 2.0.1 alike)."""

    def record(self, type: str, tech_info: str | None = None) -> SecurityEvent:
        """Write the event to the security log and hand it to the sinks. Not from inside a
        store write transaction: a sink (the OCPP outbox) writes to the store."""
        ...


Sink = Callable[[SecurityEvent], None]


def log_path_for(store_path: Path) -> Path:
    """Where the security log of a store lives."""
    return store_path.with_name(store_path.name + ".security.jsonl")


class SecurityLog:
    """The file-backed implementation of the port; see the module docstring. Thread-safe."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, types: Catalog | None = None):
        self.path = path
        self.max_bytes = max_bytes
        self.types = types or catalog()
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()

    def add_sink(self, sink: Sink) -> None:
        """Also hand every later event to `sink` (called in the recording thread)."""
        self._sinks.append(sink)

    def record(self, type: str, tech_info: str | None = None) -> SecurityEvent:
        """See `SecurityEvents.record`; ValueError for a type not in the catalog."""
        kind = self.types.get(type)
        info = None if tech_info is None else tech_info[:TECH_INFO_MAX]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when closed
            seq = self._last_seq() + 1
            ev = SecurityEvent(seq=seq, type=kind.type, critical=kind.critical, tech_info=info)
            self._append(ev)
        log.warning("security.event", type=ev.type, critical=ev.critical, tech_info=info)
        for sink in self._sinks:
            try:
                sink(ev)
            except Exception:
                log.exception("security.sink_failed", type=ev.type, sink=repr(sink))
        return ev

    def events(
        self, oldest: datetime | None = None, latest: datetime | None = None
    ) -> Iterator[SecurityEvent]:
        """Stored events, oldest first, within [oldest, latest] when given (GetLog)."""
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            for ev in _read(path):
                if (oldest is None or ev.ts >= oldest) and (latest is None or ev.ts <= latest):
                    yield ev

    def _append(self, ev: SecurityEvent) -> None:
        line = ev.model_dump_json() + "\n"
        if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if ev.critical:
                os.fsync(f.fileno())

    def _last_seq(self) -> int:
        """The seq of the newest readable line (of `.1` when the file is new); 0: none."""
        for path in (self.path, self.path.with_name(self.path.name + ".1")):
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
                    tail = f.read().splitlines()
            except FileNotFoundError:
                continue
            for line in reversed(tail):
                try:
                    return SecurityEvent.model_validate_json(line).seq
                except ValidationError:
                    continue  # a torn last line, or the cut first one of the tail
        return 0


def _read(path: Path) -> Iterator[SecurityEvent]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for n, line in enumerate(lines, 1):
        try:
            yield SecurityEvent.model_validate_json(line)
        except ValidationError:  # a line torn by a power cut: skip it, say so
            log.warning("security.log_line_unreadable", path=str(path), line=n)
