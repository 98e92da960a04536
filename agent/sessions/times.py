"""UTC instants as integer microseconds since the epoch (how the store keeps times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000  # microseconds per second


def to_us(dt: datetime) -> int:
    """Integer µs since the Unix epoch; refuses naive datetimes (their zone is a guess)."""
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: times must be timezone-aware")
    d = dt - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    """The UTC datetime of integer µs since the epoch."""
    return EPOCH + timedelta(microseconds=us)
