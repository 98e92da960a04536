"""The availability KPI report: the shape `evedge report --kpi --format json`, the API, the
MQTT `kpi` stream and the diagnostics bundle share (JSON Schema: agent/mqtt/schemas/kpi.json).
Minutes are floats rounded to 0.01; percentages to 0.001."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

MINUTES_PER_YEAR = 525_600
FORMULA = (
    "NEVI uptime (23 CFR 680.116(b)): mu = (525600 - (T_outage - T_excluded)) / 525600 x 100 "
    "over the 12 months ending with the month; T_outage: minutes the port could not deliver "
    "a session (status Faulted or Unavailable, a fault that faults it, or the CSMS "
    "unreachable); T_excluded: of those, minutes of a grid outage, a vehicle-side fault, "
    "scheduled maintenance, or a CSMS outage while the port could charge ([kpi] config)"
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Excluded(_Model):
    """Excluded outage minutes by cause (a minute with several causes counts once, for the
    first in this order)."""

    grid: float = 0
    maintenance: float = 0
    vehicle: float = 0
    csms: float = 0


class MonthKpi(_Model):
    """One calendar month (station timezone) of one connector; the current one runs to now."""

    month: str = Field(description="YYYY-MM")
    start: AwareDatetime
    end: AwareDatetime
    minutes: float = Field(ge=0, description="minutes in the month (so far)")
    outage_min: float = Field(ge=0, description="T_outage")
    excluded_min: float = Field(ge=0, description="T_excluded")
    excluded_by: Excluded
    uptime_pct: float = Field(ge=0, le=100, description="this month alone")
    uptime_12m_pct: float = Field(
        ge=0, le=100, description="NEVI mu over the 12 months ending with this one"
    )
    attempts: int = Field(ge=0, description="sessions started")
    successful: int = Field(ge=0, description="delivered energy and not ended by a fault")
    first_try_success_pct: float | None = Field(
        default=None, ge=0, le=100, description="visits whose first attempt succeeded"
    )
    fault_ended: int = Field(ge=0, description="sessions ended by a fault")


class FaultCode(_Model):
    """A fault that ended a session, as reported upstream."""

    fault_id: str
    rule: str
    mrec: str | None = Field(default=None, description="ChargeX MREC code, e.g. CX017")
    ocpp: str = Field(description="OCPP 1.6 ChargePointErrorCode")


class FaultEnded(_Model):
    """A session that a fault ended."""

    session_id: str
    ended: AwareDatetime
    stop_reason: str
    faults: list[FaultCode]


class ConnectorKpi(_Model):
    """The KPIs of one connector (port)."""

    connector: int
    uptime_12m_pct: float = Field(ge=0, le=100, description="the newest month's NEVI mu")
    months: list[MonthKpi]
    fault_sessions: list[FaultEnded]
    fault_codes: dict[str, int] = Field(description="'MREC/OCPP' code -> sessions it ended")


class KpiReport(_Model):
    """Availability KPIs of the station, per connector, month by month."""

    station: str
    generated_at: AwareDatetime
    timezone: str
    formula: str = FORMULA
    data_since: AwareDatetime | None = Field(
        default=None, description="the oldest fact in the store: before it, nothing is known"
    )
    connectors: list[ConnectorKpi]
