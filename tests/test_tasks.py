"""agent/tasks.py: `supervise` restarts a failing task with back-off and lets fatal ones out."""

from __future__ import annotations

import asyncio

import pytest

from agent.tasks import supervise


class Flaky:
    """Fails `failures` times, then returns; records when each run started."""

    def __init__(self, failures: int, error: type[Exception] = RuntimeError):
        self.failures, self.error = failures, error
        self.starts: list[float] = []

    async def run(self) -> None:
        self.starts.append(asyncio.get_running_loop().time())
        if len(self.starts) <= self.failures:
            raise self.error(f"failure {len(self.starts)}")


async def test_a_failing_task_is_restarted_until_it_returns():
    flaky = Flaky(3)
    caught: list[BaseException] = []
    await asyncio.wait_for(
        supervise("flaky", flaky.run, min_s=0.01, max_s=0.04, on_failure=caught.append), 10
    )
    assert len(flaky.starts) == 4
    assert [str(e) for e in caught] == ["failure 1", "failure 2", "failure 3"]
    # Back-off: each wait is at least half the (doubling, capped) back-off.
    gaps = [b - a for a, b in zip(flaky.starts, flaky.starts[1:], strict=False)]
    assert all(g >= low for g, low in zip(gaps, (0.004, 0.009, 0.019), strict=True))


async def test_a_fatal_exception_ends_supervision():
    class Fatal(Exception):
        pass

    flaky = Flaky(5, error=Fatal)
    with pytest.raises(Fatal):
        await asyncio.wait_for(supervise("fatal", flaky.run, fatal=(Fatal,), min_s=0.01), 10)
    assert len(flaky.starts) == 1
