"""Is the system clock synchronized? It decides the OCMF time status (S or U) of readings."""

from __future__ import annotations

import ctypes
import functools
import sys

from agent.billing.ocmf import TimeStatus

TIME_ERROR = 5  # adjtimex(2): "clock not synchronized"


@functools.cache
def _adjtimex():
    """libc's adjtimex, resolved once.

    CDLL(None) looks the symbol up in the running process, which has libc loaded: unlike
    ctypes.util.find_library (a fork+exec of ldconfig), it costs nothing per call, and the
    clock is checked on every diagnosis evaluation and every session start.
    """
    return ctypes.CDLL(None, use_errno=True).adjtimex


def clock_status() -> TimeStatus:
    """SYNCHRONIZED if the kernel says NTP keeps the clock in sync, else UNSYNCHRONIZED.

    adjtimex with modes = 0 only reads (no privilege needed). Claiming S on a clock nobody
    checked would put a false statement into every signed record, so anything unclear is U.
    """
    if not sys.platform.startswith("linux"):
        return TimeStatus.UNSYNCHRONIZED
    try:
        adjtimex = _adjtimex()
    except (OSError, AttributeError):
        return TimeStatus.UNSYNCHRONIZED
    buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 first
    state = adjtimex(buf)
    if state < 0 or state == TIME_ERROR:
        return TimeStatus.UNSYNCHRONIZED
    return TimeStatus.SYNCHRONIZED
