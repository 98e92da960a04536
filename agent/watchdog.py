"""Liveness: ping systemd's watchdog only while the agent makes progress.

The pings come from a task on the main event loop, so a blocked loop stops them by itself.
Two more ways to hang are checked before each ping:

- a poller stuck in one device poll (a request whose timeout never fires) for longer than
  `poll_stall_s`: `LinkPoller.busy_since` tells when the poll began;
- a bus consumer that leaves events waiting for longer than `bus_stall_s` (the store writer
  or the session engine wedged): `Subscription.waiting_since` tells since when.

While anything is stuck the pings stop, the log says which part (`watchdog.stuck`) and the
systemd status line names it; systemd then kills and restarts the service after WatchdogSec.
Without a systemd watchdog the checks still run and log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from agent.bus import EventBus
from agent.poller import LinkPoller
from agent.sdnotify import Notifier

log = structlog.get_logger(__name__)

# A poll cycle is bounded by its requests' timeouts and retries (seconds even on a slow
# RS-485 line with a large profile); two minutes in one poll means its timeout never fired.
POLL_STALL_S = 120.0
# Consumers take events within their commit interval (the store writer: 1 s); a minute of
# waiting events means the consumer is wedged, not busy.
BUS_STALL_S = 60.0
# How often the checks run (and log) when systemd asked for no watchdog.
CHECK_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Stuck:
    """One part of the agent that stopped making progress."""

    part: str  # "poller <link>" or "bus consumer <name>"
    for_s: float
    detail: str


class Liveness:
    """Finds stuck pollers and bus consumers."""

    def __init__(
        self,
        pollers: Iterable[LinkPoller],
        bus: EventBus,
        *,
        poll_stall_s: float = POLL_STALL_S,
        bus_stall_s: float = BUS_STALL_S,
    ):
        self.pollers = list(pollers)
        self.bus = bus
        self.poll_stall_s = poll_stall_s
        self.bus_stall_s = bus_stall_s

    def stuck(self, now: float | None = None) -> list[Stuck]:
        """Every part stuck at `now` (monotonic seconds); empty when all make progress."""
        now = time.monotonic() if now is None else now
        out = []
        for p in self.pollers:
            since = p.busy_since
            if since is not None and now - since > self.poll_stall_s:
                out.append(
                    Stuck(
                        f"poller {p.link.name}",
                        now - since,
                        f"polling {p.busy_device} on bus {p.bus_name}",
                    )
                )
        for sub in self.bus.subscriptions():
            since = sub.waiting_since
            if sub.watch and since is not None and now - since > self.bus_stall_s:
                out.append(
                    Stuck(
                        f"bus consumer {sub.name}",
                        now - since,
                        f"{sub.queue.qsize()} events waiting, {sub.dropped} dropped",
                    )
                )
        return out


class Watchdog:
    """Pings the systemd watchdog at its interval while `Liveness` finds nothing stuck."""

    def __init__(self, liveness: Liveness, notifier: Notifier):
        self.liveness = liveness
        self.notifier = notifier
        self.interval_s = notifier.watchdog_interval_s or CHECK_INTERVAL_S
        self.pings = 0
        self._stuck: set[str] = set()

    def check(self) -> bool:
        """Run the checks once, log changes, ping if healthy; True if healthy."""
        stuck = self.liveness.stuck()
        parts = {s.part for s in stuck}
        for s in stuck:
            if s.part not in self._stuck:
                log.error(
                    "watchdog.stuck",
                    part=s.part,
                    stuck_s=round(s.for_s, 1),
                    detail=s.detail,
                    watchdog=self.notifier.watchdog_interval_s is not None,
                    hint="watchdog pings stopped: systemd restarts the service after WatchdogSec",
                )
        for part in sorted(self._stuck - parts):
            log.warning("watchdog.recovered", part=part)
        if parts != self._stuck:
            self.notifier.status("stuck: " + ", ".join(sorted(parts)) if parts else "running")
        self._stuck = parts
        if parts:
            return False
        if self.notifier.watchdog_interval_s is not None and self.notifier.watchdog():
            self.pings += 1
        return True

    async def run(self) -> None:
        """Check and ping every interval until cancelled."""
        log.info(
            "watchdog.start",
            ping_interval_s=self.notifier.watchdog_interval_s,
            poll_stall_s=self.liveness.poll_stall_s,
            bus_stall_s=self.liveness.bus_stall_s,
        )
        while True:
            self.check()
            await asyncio.sleep(self.interval_s)
