"""The `[diagnosis]` config section: thresholds the shipped rules use, and per-rule tuning.

    [diagnosis]
    nominal_voltage_v = 230
    undervoltage_pct = 10            # EN 50160: 230 V ± 10 %
    cloud_endpoints = ["csms.example.com:443"]

    [diagnosis.rule.device_not_answering]
    raise_after_s = 10

Thresholds reach rule conditions as `cfg.<name>` (see `thresholds()`); the per-rule table
can disable a rule or change its raise/clear times without editing shipped rule files.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleTuning(_Section):
    """Site overrides for one rule."""

    enabled: bool = True
    raise_after_s: float | None = Field(default=None, ge=0, le=86_400)
    clear_after_s: float | None = Field(default=None, ge=0, le=86_400)
    retries: int | None = Field(default=None, ge=0, le=20, description="latch = retry rules")
    retry_backoff_s: float | None = Field(default=None, ge=0, le=86_400)


class DiagnosisConfig(_Section):
    """Thresholds and switches of on-device diagnosis."""

    enabled: bool = True
    language: str = Field(default="en", pattern=r"^(en|de)$", description="CLI output")
    nominal_voltage_v: float = Field(default=230.0, gt=0, le=1000)
    undervoltage_pct: float = Field(default=10.0, gt=0, lt=100, description="EN 50160: 10")
    overvoltage_pct: float = Field(default=10.0, gt=0, le=100, description="EN 50160: 10")
    phase_loss_pct: float = Field(
        default=50.0, gt=0, lt=100, description="a phase below this % of nominal is lost"
    )
    outage_v: float = Field(default=20.0, ge=0, description="all phases below: no supply")
    nominal_frequency_hz: float = Field(default=50.0, description="50 or 60")
    frequency_tolerance_hz: float = Field(default=0.5, gt=0, le=5, description="EN 50160: 1 %")
    overcurrent_margin_a: float = Field(default=2.0, ge=0, le=50)
    overcurrent_grace_s: float = Field(
        default=5.0, ge=0, le=60, description="IEC 61851-1: the EV has 5 s to follow"
    )
    welded_current_a: float = Field(default=1.0, gt=0, description="current with contactor open")
    contactor_open_s: float = Field(
        default=4.0,
        ge=0,
        le=60,
        description="after charging is switched off (read back) current may flow this long: "
        "the car ramps down (about 3 s once the PWM is off) and the contactor opens",
    )
    no_current_a: float = Field(default=0.5, gt=0, description="below: no current flows")
    temperature_derate_c: float = Field(default=70.0, gt=0, le=200)
    temperature_stop_c: float = Field(default=85.0, gt=0, le=200)
    disk_min_free_pct: float = Field(default=10.0, ge=0, lt=100)
    disk_min_free_mb: float = Field(default=200.0, ge=0)
    cloud_offline_after_s: float = Field(default=900.0, gt=0)
    cloud_endpoints: list[str] = Field(
        default_factory=list, description="host:port the station must reach (probed by TCP)"
    )
    cloud_probe_interval_s: float = Field(default=60.0, ge=5)
    health_window_s: float = Field(default=60.0, ge=10, le=3600)
    rules_dir: Path | None = Field(default=None, description="site rule files (*.toml)")
    rule: dict[str, RuleTuning] = Field(default_factory=dict)

    @field_validator("nominal_frequency_hz")
    @classmethod
    def _grid(cls, v: float) -> float:
        if v not in (50.0, 60.0):
            raise ValueError(f"must be 50 or 60, got {v:g}")
        return v

    @field_validator("cloud_endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for ep in v:
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"endpoint must be host:port, got {ep!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DiagnosisConfig:
        if self.temperature_stop_c <= self.temperature_derate_c:
            raise ValueError(
                f"temperature_stop_c ({self.temperature_stop_c:g}) must be above "
                f"temperature_derate_c ({self.temperature_derate_c:g})"
            )
        if self.outage_v >= self.phase_loss_v:
            raise ValueError(
                f"outage_v ({self.outage_v:g}) must be below the phase-loss level "
                f"({self.phase_loss_v:g} V)"
            )
        from agent.diagnosis.rules import RuleError, load_rules  # rules import this module

        try:
            rules = load_rules(self.rules_dir)
        except RuleError as e:
            raise ValueError(f"rules_dir: {e}") from None
        unknown = sorted(set(self.rule) - set(rules))
        if unknown:
            raise ValueError(f"rule: no rule {', '.join(map(repr, unknown))}; see `evedge faults`")
        for rid, tuning in self.rule.items():
            retry = {"retries", "retry_backoff_s"} & tuning.model_fields_set
            if retry and rules[rid].latch != "retry":
                raise ValueError(
                    f'rule.{rid}: {sorted(retry)[0]}: only for a rule with latch = "retry"'
                )
        return self

    @property
    def undervoltage_v(self) -> float:
        """Lower voltage limit (V)."""
        return self.nominal_voltage_v * (1 - self.undervoltage_pct / 100)

    @property
    def overvoltage_v(self) -> float:
        """Upper voltage limit (V)."""
        return self.nominal_voltage_v * (1 + self.overvoltage_pct / 100)

    @property
    def phase_loss_v(self) -> float:
        """A phase below this voltage is lost (V)."""
        return self.nominal_voltage_v * self.phase_loss_pct / 100

    def thresholds(self) -> dict[str, float]:
        """The station-wide `cfg.<name>` values conditions may use."""
        return {
            "nominal_v": self.nominal_voltage_v,
            "undervoltage_v": self.undervoltage_v,
            "overvoltage_v": self.overvoltage_v,
            "phase_loss_v": self.phase_loss_v,
            "outage_v": self.outage_v,
            "freq_min_hz": self.nominal_frequency_hz - self.frequency_tolerance_hz,
            "freq_max_hz": self.nominal_frequency_hz + self.frequency_tolerance_hz,
            "overcurrent_margin_a": self.overcurrent_margin_a,
            "overcurrent_grace_s": self.overcurrent_grace_s,
            "welded_current_a": self.welded_current_a,
            "contactor_open_s": self.contactor_open_s,
            "no_current_a": self.no_current_a,
            "temperature_derate_c": self.temperature_derate_c,
            "temperature_stop_c": self.temperature_stop_c,
            "disk_min_free_pct": self.disk_min_free_pct,
            "disk_min_free_mb": self.disk_min_free_mb,
            "cloud_offline_after_s": self.cloud_offline_after_s,
        }


# Names a connector scope adds to `cfg` (from its [[connector]] entry).
CONNECTOR_THRESHOLDS = ("max_current_a", "phases", "max_power_w")
# Every `cfg.<name>` a condition may use (kept literal: rules are checked against it while
# this module is still being imported).
STATION_THRESHOLDS = (
    "nominal_v",
    "undervoltage_v",
    "overvoltage_v",
    "phase_loss_v",
    "outage_v",
    "freq_min_hz",
    "freq_max_hz",
    "overcurrent_margin_a",
    "overcurrent_grace_s",
    "welded_current_a",
    "contactor_open_s",
    "no_current_a",
    "temperature_derate_c",
    "temperature_stop_c",
    "disk_min_free_pct",
    "disk_min_free_mb",
    "cloud_offline_after_s",
)
THRESHOLD_NAMES = frozenset(STATION_THRESHOLDS) | frozenset(CONNECTOR_THRESHOLDS)
