"""The running release says it is healthy: READY sent, a first poll cycle done, store open.

agent/runtime.py starts `report_healthy` right after sd_notify READY (the store opened
before); it writes the marker the boot check and `Updater.settle` wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import structlog

from agent.poller import LinkPoller
from agent.update import probation

log = structlog.get_logger(__name__)

POLL_S = 0.2


def state_dir(store_path: Path) -> Path:
    """The update state directory: beside the store, in the service's StateDirectory."""
    return store_path.parent / "update"


def running_version() -> str:
    """This release's version (the installed evedge distribution's)."""
    try:
        return version("evedge")
    except PackageNotFoundError:
        return "0+unknown"


async def report_healthy(pollers: Iterable[LinkPoller], store_path: Path) -> None:
    """Wait until every device was polled once (success or not: the loop works), then write
    this release's health marker; a marker that cannot be written is logged, not fatal."""
    devices = [pd for p in pollers for pd in p.devices]
    while not all(pd.health.polls for pd in devices):
        await asyncio.sleep(POLL_S)
    v = running_version()
    try:
        await asyncio.to_thread(probation.mark_healthy, state_dir(store_path), v)
    except OSError as e:
        log.warning("update.health_marker_failed", version=v, error=str(e))
        return
    log.info("update.healthy", version=v)
