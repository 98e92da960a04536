"""Is the system clock synchronized? It decides the OCMF time status (S or U) of readings."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from agent.billing.ocmf import TimeStatus

TIME_ERROR = 5  # adjtimex(2): "clock not synchronized"


def clock_status() -> TimeStatus:
    """SYNCHRONIZED if the kernel says NTP keeps the clock in sync, else UNSYNCHRONIZED.

    adjtimex with modes = 0 only reads (no privilege needed). Claiming S on a clock nobody
    checked would put a false statement into every signed record, so anything unclear is U.
    """
    if not sys.platform.startswith("linux"):
        return TimeStatus.UNSYNCHRONIZED
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 first
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return TimeStatus.UNSYNCHRONIZED
    if state < 0 or state == TIME_ERROR:
        return TimeStatus.UNSYNCHRONIZED
    return TimeStatus.SYNCHRONIZED
