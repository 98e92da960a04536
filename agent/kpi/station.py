"""The KPI report of a configured station, from any open store (the service's, or the
CLI's read-only one)."""

from __future__ import annotations

from datetime import datetime

from agent.config import StationConfig
from agent.events import utcnow
from agent.kpi.history import Reading
from agent.kpi.model import KpiReport
from agent.kpi.uptime import build_kpis


def station_kpis(
    cfg: StationConfig, reading: Reading, *, months: int | None = None, now: datetime | None = None
) -> KpiReport:
    """The KPIs of every configured connector, months in the billing timezone (else UTC).
    Blocking: call it from a worker thread in the service."""
    kcfg = cfg.kpi if months is None else cfg.kpi.model_copy(update={"months": months})
    with reading() as c:
        return build_kpis(
            c,
            station=cfg.station.id,
            connectors=[c.id for c in cfg.connector],
            tz=cfg.billing.timezone if cfg.billing else "UTC",
            now=now or utcnow(),
            cfg=kcfg,
        )
