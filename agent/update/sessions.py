"""Ask the running service whether a vehicle charges: an update waits for sessions to end."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agent.api.client import Unreachable, call
from agent.update.status import UpdateRefused, UpdateStatus


def active_sessions(socket: Path | None) -> list[int]:
    """Connectors with a session, from the service's `status`; none if it is not running
    (a stopped service charges nobody) or has no local API configured."""
    if socket is None:
        return []
    try:
        report = call(socket, "status")
    except Unreachable:
        return []
    return [c["connector"] for c in report["connectors"] if c.get("session_id")]


def wait_idle(
    socket: Path | None,
    policy: str,
    max_wait_s: float,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[list[int]], None] | None = None,
) -> None:
    """Return once no session runs; `policy` "refuse" refuses at once, "wait" up to max_wait_s."""
    deadline = time.monotonic() + max_wait_s
    while busy := active_sessions(socket):
        if policy == "refuse":
            raise UpdateRefused(
                UpdateStatus.INSTALLATION_FAILED, f"sessions running on connectors {busy}"
            )
        if time.monotonic() >= deadline:
            raise UpdateRefused(
                UpdateStatus.INSTALLATION_FAILED,
                f"sessions on connectors {busy} still running after {max_wait_s:g} s",
            )
        if on_wait is not None:
            on_wait(busy)
        sleep(poll_s)
