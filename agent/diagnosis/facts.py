"""Facts behind `station.*` and `session.*` in rule conditions that no register shows.

Station facts (clock, disk, cloud) are providers (callables), so the service reads the
real ones (the kernel's NTP state, free space where the store lives, the last contact with
the cloud) and tests, the simulator and HIL runs set them by hand (`ManualFacts`).

Connector facts come from whoever switches the EVSE (`ConnectorFacts`: the session
engine, or a HIL rig): since when charging is off for sure, and which vehicle is plugged.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent.diagnosis.expr import Value


class ConnectorFacts(Protocol):
    """What the controlling side knows about a connector that no device register shows."""

    def charging_disabled_since(self, connector: int) -> datetime | None:
        """When the agent switched charging off and read the switch back (None: it is on,
        or not confirmed off)."""
        ...

    def vehicle(self, connector: int) -> str | None:
        """A stable, non-secret identity of the vehicle charging now (None: unknown)."""
        ...


class NoConnectorFacts:
    """No controlling side (diagnosis without sessions): every connector fact is unknown."""

    def charging_disabled_since(self, connector: int) -> datetime | None:
        """Unknown."""
        return None

    def vehicle(self, connector: int) -> str | None:
        """Unknown."""
        return None


def disabled_for_s(connectors: ConnectorFacts, connector: int, now: datetime) -> float | None:
    """Seconds since charging was confirmed off at `connector` (None: on or unknown)."""
    since = connectors.charging_disabled_since(connector)
    return None if since is None else round(max(0.0, (now - since).total_seconds()), 3)


@dataclass
class CloudStatus:
    """Last successful contact with the cloud; sync clients (and the probe) update it."""

    configured: bool = False
    last_contact: datetime | None = None
    since: datetime = field(default_factory=lambda: datetime.now(UTC))

    def offline_s(self, now: datetime) -> float | None:
        """Seconds without contact (since start if never), None if no cloud is configured."""
        if not self.configured:
            return None
        return (now - (self.last_contact or self.since)).total_seconds()


def kernel_clock_synced() -> bool:
    """The kernel's NTP state (adjtimex), shared with the session engine's OCMF time status."""
    from agent.billing.ocmf import TimeStatus
    from agent.sessions.clock import clock_status

    return clock_status() == TimeStatus.SYNCHRONIZED


def disk_free(path: Path) -> tuple[float, float] | None:
    """(free %, free MB) of the file system holding `path` (its nearest existing parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return usage.free * 100 / usage.total, usage.free / 1e6


DISK_CACHE_S = 5.0


class CachedDiskFree:
    """disk_free(path), asked of the kernel at most every `ttl_s`: diagnosis evaluates on
    every batch of readings, and a statvfs (with the walk up to an existing parent) each
    time was most of a facts snapshot's cost. Free space does not move in 5 s in a way a
    disk-full rule (minutes of raise_after) would notice."""

    def __init__(
        self, path: Path, ttl_s: float = DISK_CACHE_S, clock: Callable[[], float] = time.monotonic
    ):
        self.path, self.ttl_s, self.clock = path, ttl_s, clock
        self._at: float | None = None
        self._value: tuple[float, float] | None = None

    def __call__(self) -> tuple[float, float] | None:
        """(free %, free MB), at most `ttl_s` old."""
        now = self.clock()
        if self._at is None or now - self._at >= self.ttl_s:
            self._value, self._at = disk_free(self.path), now
        return self._value


class StationFacts:
    """Station-level facts behind `station.*`; each is a provider so tests can set them."""

    def __init__(
        self,
        clock_synced: Callable[[], bool | None] = kernel_clock_synced,
        disk: Callable[[], tuple[float, float] | None] = lambda: None,
        cloud: CloudStatus | None = None,
        tx_exhausted: Callable[[], int | None] = lambda: None,
        billing_tamper: Callable[[], int | None] = lambda: None,
        mqtt_billing_refused: Callable[[], int | None] = lambda: None,
        records_unwritten: Callable[[], int | None] = lambda: None,
    ):
        self.clock_synced = clock_synced
        self.disk = disk
        self.cloud = cloud or CloudStatus()
        # OCPP transaction messages kept after their retries ran out (agent/ocpp/outbox.py
        # sets it to its count; None: no OCPP).
        self.tx_exhausted = tx_exhausted
        # Findings of the store's tamper checks (agent/sessions/integrity.py; None: no billing).
        self.billing_tamper = billing_tamper
        # Charge records / tickets the MQTT broker refused and the outbox keeps
        # (agent/mqtt/publisher.py; None: no MQTT).
        self.mqtt_billing_refused = mqtt_billing_refused
        # Charge records a full disk refused, waiting in memory (agent/sessions/closing.py;
        # the runtime sets it; None: no session engine).
        self.records_unwritten = records_unwritten

    @classmethod
    def for_store(cls, store_path: Path, cloud: CloudStatus | None = None) -> StationFacts:
        """The real providers: kernel clock state, free space where the store lives."""
        return cls(kernel_clock_synced, CachedDiskFree(store_path), cloud)

    def snapshot(self, now: datetime) -> dict[str, Value]:
        """All facts at `now` (providers are called once per evaluation)."""
        disk = self.disk()
        offline = self.cloud.offline_s(now)
        return {
            "clock_synced": self.clock_synced(),
            "disk_free_pct": None if disk is None else round(disk[0], 2),
            "disk_free_mb": None if disk is None else round(disk[1], 1),
            "cloud_configured": self.cloud.configured,
            "cloud_offline_s": None if offline is None else round(offline, 1),
            "ocpp_tx_exhausted": self.tx_exhausted(),
            "billing_tamper": self.billing_tamper(),
            "mqtt_billing_refused": self.mqtt_billing_refused(),
            "records_unwritten": self.records_unwritten(),
        }


class ManualFacts(StationFacts):
    """Facts set by hand (tests, the simulator, HIL runs): `facts.set(clock_synced=False)`."""

    def __init__(self, **values: Value):
        self.values: dict[str, Value] = {
            "clock_synced": True,
            "disk_free_pct": 50.0,
            "disk_free_mb": 8000.0,
            "ocpp_tx_exhausted": 0,
            "billing_tamper": 0,
            "mqtt_billing_refused": 0,
            "records_unwritten": 0,
        }
        super().__init__(
            lambda: self.values["clock_synced"],  # type: ignore[arg-type, return-value]
            lambda: (self.values["disk_free_pct"], self.values["disk_free_mb"]),  # type: ignore[arg-type, return-value]
            tx_exhausted=lambda: self.values["ocpp_tx_exhausted"],  # type: ignore[arg-type, return-value]
            billing_tamper=lambda: self.values["billing_tamper"],  # type: ignore[arg-type, return-value]
            mqtt_billing_refused=lambda: self.values["mqtt_billing_refused"],  # type: ignore[arg-type, return-value]
            records_unwritten=lambda: self.values["records_unwritten"],  # type: ignore[arg-type, return-value]
        )
        self.set(**values)

    def set(self, **values: Any) -> None:
        """Change facts; cloud_configured / cloud_last_contact go to the CloudStatus."""
        for k, v in values.items():
            if k == "cloud_configured":
                self.cloud.configured = bool(v)
            elif k == "cloud_last_contact":
                self.cloud.last_contact = v
            elif k in self.values:
                self.values[k] = v
            else:
                raise KeyError(f"unknown station fact {k!r}")
