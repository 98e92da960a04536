"""Small asyncio helpers shared by the runtime, the session engine and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable

import structlog

log = structlog.get_logger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel every task, then wait for each to finish (their CancelledError is expected)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    fatal: tuple[type[BaseException], ...] = (),
    min_s: float = 1.0,
    max_s: float = 60.0,
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    """Run `run()` until it returns; when it raises, start it again after a back-off.

    For tasks whose failure must not stop the agent (the OCPP connection, MQTT): metering
    and sessions go on while one restarts. The back-off doubles from `min_s` to `max_s`
    (jittered, so a fleet does not retry in step) and starts over once a run lasted `max_s`.
    `fatal` exceptions (a deliberate exit such as OCPP's HardReset) are re-raised.
    `on_failure(exc)` is called inside the `except` block (e.g. a Wall's `caught`, which
    counts and logs the traceback); without it the failure is logged here.
    """
    loop = asyncio.get_running_loop()
    backoff = min_s
    restarts = 0
    while True:
        started = loop.time()
        try:
            await run()
            return
        except fatal:
            raise
        except Exception as e:
            if on_failure is not None:
                on_failure(e)
            else:
                log.exception("task.failed", task=name)
            error = f"{type(e).__name__}: {e}"[:200]
        if loop.time() - started >= max_s:
            backoff = min_s  # it ran fine for a while: a fresh failure, not a crash loop
        delay = random.uniform(backoff / 2, backoff)
        restarts += 1
        log.warning("task.restart", task=name, error=error, restarts=restarts, in_s=round(delay, 2))
        await asyncio.sleep(delay)
        backoff = min(backoff * 2, max_s)
