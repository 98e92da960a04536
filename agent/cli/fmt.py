"""How the views write times and durations: one format per view — the station's local time
with its zone (`[billing] timezone`, else the machine's), or UTC with `--utc` — and
durations as `40.7 s`, `12 min 05 s`, `1 h 02 min`."""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from agent.config import StationConfig


def station_tz(cfg: StationConfig, utc: bool = False) -> tzinfo | None:
    """The zone a view shows times in (None: the machine's local zone)."""
    if utc:
        return ZoneInfo("UTC")
    return ZoneInfo(cfg.billing.timezone) if cfg.billing is not None else None


def when(ts: datetime, tz: tzinfo | None, *, date: bool = True) -> str:
    """`2026-12-08 03:02:11 CET` (or only the time, `date=False`)."""
    local = ts.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M:%S %Z}" if date else f"{local:%H:%M:%S %Z}"


def duration(seconds: float) -> str:
    """`40.7 s`, `12 min 05 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"
