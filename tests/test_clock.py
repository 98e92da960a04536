"""The kernel clock check: the same answer as libc found the classic way, without a process."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from agent.billing.ocmf import TimeStatus
from agent.sessions.clock import TIME_ERROR, clock_status

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux")


def kernel_state() -> int:
    """adjtimex through libc located by ldconfig (the way that used to run on every check)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc.adjtimex(ctypes.create_string_buffer(512))


def test_clock_status_matches_the_kernel():
    state = kernel_state()
    expected = (
        TimeStatus.UNSYNCHRONIZED if state < 0 or state == TIME_ERROR else TimeStatus.SYNCHRONIZED
    )
    assert clock_status() == expected


def test_clock_status_starts_no_process(monkeypatch):
    """Diagnosis checks the clock on every evaluation: a fork+exec each time (ldconfig) cost
    more CPU than the whole poll cycle. Any subprocess now fails the check loudly."""
    clock_status()  # first call resolves libc; must not spawn either, but warm anything else

    def no_spawn(*args, **kwargs):
        raise AssertionError(f"clock_status started a process: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_spawn)
    from agent.sessions import clock

    clock._adjtimex.cache_clear()  # resolve again, now under the guard
    for _ in range(100):
        assert clock_status() in (TimeStatus.SYNCHRONIZED, TimeStatus.UNSYNCHRONIZED)
