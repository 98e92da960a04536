"""Walls around handlers of untrusted input: count unexpected exceptions, log them rate-limited,
and bound JSON before it is parsed.

A handler of peer input (an MQTT command, an API line, ...) answers an unexpected exception
with an error reply and calls `Wall.caught()`: the exception is counted (shown in `evedge
status`) and logged with its traceback at most once per `log_every_s` per exception type, so a
peer repeating the same bad input cannot flood the journal. `RateLimited` does the same for
any repeated warning (the API's accept loop out of descriptors).

`json_too_deep()` tells whether a JSON document nests deeper than a bound without parsing it
(Python's json module recurses and raises RecursionError far below the size limits).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import structlog

LOG_EVERY_S = 60.0
MAX_JSON_DEPTH = 64

# A string, or an unterminated one up to the end: linear, never backtracks.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
# Byte -> depth change: +1 opens an array/object, -1 closes one, 0 anything else.
_DELTA = [0] * 256
for _b in b"[{":
    _DELTA[_b] = 1
for _b in b"]}":
    _DELTA[_b] = -1
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def json_too_deep(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether `data` (JSON text, possibly malformed) opens more than `max_depth` arrays or
    objects inside each other. Brackets inside strings do not count."""
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False  # the usual case, without looking at strings
    brackets = _STRING.sub(b"", data).translate(None, _BRACKETS)
    return max(accumulate(_DELTA[b] for b in brackets), default=0) > max_depth


@dataclass
class RateLimited:
    """Emit a log event at most once per `every_s` per key; the next one says how many were
    suppressed in between."""

    emit: Callable[..., Any]
    every_s: float = LOG_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def __call__(self, key: str, event: str, **kw: Any) -> bool:
        """Log `event` unless `key` was logged less than `every_s` ago; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            kw["suppressed_since_last"] = suppressed
        self.emit(event, **kw)
        return True


class Wall:
    """Counts and logs (rate-limited, with the traceback) what a handler did not expect."""

    def __init__(self, name: str, log_every_s: float = LOG_EVERY_S):
        self.name = name
        self.errors = 0
        self.last_error: str | None = None
        self._log = RateLimited(structlog.get_logger(name).exception, log_every_s)

    def caught(self, exc: BaseException, **context: Any) -> None:
        """Account `exc` (call from inside the `except` block: the traceback is logged)."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        self._log(type(exc).__name__, f"{self.name}.internal_error", **context)

    def state(self) -> dict[str, Any]:
        """For `evedge status`: errors caught so far and the last one."""
        return {"internal_errors": self.errors, "last_internal_error": self.last_error}
