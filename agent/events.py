"""Typed events carried on the agent bus. Producers don't know consumers."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """Timezone-aware current UTC time (the only clock events use)."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every bus event: immutable, UTC-stamped."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ts: AwareDatetime = Field(default_factory=utcnow)


class Quality(StrEnum):
    """How far a reading can be trusted."""

    GOOD = "good"
    NOT_AVAILABLE = "not_available"  # the device said it has no value (ABB 0xFFFF...)


class Reading(Event):
    """One decoded value of one device, as read at `ts` (never re-stamped)."""

    device: str
    quantity: str
    value: float | int | str | bool | None
    unit: str = ""
    quality: Quality = Quality.GOOD


class HealthState(StrEnum):
    """Device communication state. Stale is a state, not a reading."""

    UNKNOWN = "unknown"  # not polled yet
    OK = "ok"
    DEGRADED = "degraded"  # answers, but some reads fail (exceptions, bad frames)
    OFFLINE = "offline"  # consecutive failures past the threshold; its values are stale


class DeviceHealth(Event):
    """Communication health of one device, published after every poll cycle that changes it."""

    device: str
    bus: str
    state: HealthState
    last_good: AwareDatetime | None = None
    latency_ms: float | None = None
    consecutive_failures: int = 0
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: dict[int, int] = Field(default_factory=dict, description="Modbus code -> count")
    last_error: str | None = None
