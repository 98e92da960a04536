"""Which processes a test run left behind.

Every process the suite starts inherits EVEDGE_TEST_RUN (children of children too, and orphans
reparented to init keep it), so at the end the run can find what is still alive by reading
/proc/PID/environ — no matter who started it or whether its parent is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

MARK = "EVEDGE_TEST_RUN"


def mark_run() -> bytes:
    """Tag this process's environment (inherited by every child); returns the tag."""
    tag = f"{os.getpid()}-{time.time_ns()}"
    os.environ[MARK] = tag
    return f"{MARK}={tag}".encode()


def alive_with(tag: bytes) -> dict[int, str]:
    """PID -> command line of every other process whose environment carries `tag`."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if tag not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z":  # a zombie is dead already; its parent reaps it
            found[int(proc.name)] = cmd.strip()
    return found


def leftovers(tag: bytes, grace_s: float = 5.0) -> dict[int, str]:
    """The tagged processes still alive after `grace_s` (a process may be exiting just now);
    each is then killed, since the run started it."""
    deadline = time.monotonic() + grace_s
    while (found := alive_with(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found
