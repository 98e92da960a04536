"""`[kpi]`: how the availability KPIs count (agent/kpi/uptime.py).

NEVI uptime (23 CFR 680.116(b)): μ = (525,600 − (T_outage − T_excluded)) / 525,600 × 100 over
the last 12 months. What counts as T_excluded — outage time explained by causes outside the
operator's control — is listed here, so a site can follow its program's reading of the rule.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

RULE_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")


class KpiConfig(BaseModel):
    """Exclusions and counting rules of the availability KPIs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid_rules: tuple[str, ...] = Field(
        default=("supply_outage",),
        description="diagnosis rules that mean the grid failed: their outage time is excluded",
    )
    exclude_vehicle_side: bool = Field(
        default=True, description="outage time of faults diagnosed on the vehicle's side"
    )
    exclude_maintenance: bool = Field(
        default=True, description="scheduled maintenance windows a technician set"
    )
    csms_rules: tuple[str, ...] = Field(
        default=("cloud_unreachable",),
        description="diagnosis rules that mean the CSMS/network was unreachable: counted as "
        "outage (the network saw the port as down) and excluded while the port could charge",
    )
    months: int = Field(default=12, ge=1, le=36, description="months reported, newest last")
    retry_window_s: float = Field(
        default=600,
        gt=0,
        le=86_400,
        description="a new attempt with the same token on the same connector within this "
        "after a failed one is a retry, not a first try",
    )
    min_energy_wh: int = Field(
        default=1, ge=0, description="a session that delivered less did not succeed"
    )
    failed_stop_reasons: tuple[str, ...] = Field(
        default=("EmergencyStop",),
        description="sessions stopped for these reasons failed (ended by a fault)",
    )
    publish_interval_s: float = Field(
        default=86_400, ge=60, description="MQTT `kpi` stream: how often the report goes out"
    )

    @field_validator("grid_rules", "csms_rules")
    @classmethod
    def _rule_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for rid in v:
            if not RULE_ID.fullmatch(rid):
                raise ValueError(f"{rid!r} is not a rule id (lower case, digits, _)")
        return v
