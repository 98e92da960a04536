"""Config sections of sessions and billing: `[billing]`, `[sessions]` and `[auth]`.

They hang off StationConfig (one field each); a station without `[billing]` polls and stores
readings but runs no session engine. Relative paths (tariff file, key directory) are taken
from the working directory, like `[store] path`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.billing.atomic import write_atomic
from agent.billing.tariff import Tariff, TariffError, load_tariff
from agent.billing.usable import TariffLimits, check_usable


def _no_float(v: object) -> object:
    # TOML floats are binary; money goes through str() so 0.1 stays 0.1.
    return Decimal(str(v)) if isinstance(v, float) else v


Money = Annotated[Decimal, BeforeValidator(_no_float), Field(ge=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionLimits(_Section):
    """Stop a session when it reaches any of these (None: no limit)."""

    max_energy_wh: int | None = Field(default=None, gt=0)
    max_duration_s: int | None = Field(default=None, gt=0)
    max_cost: Money | None = Field(default=None, description="incl. VAT where known, else excl.")


class Sampling(_Section):
    """Meter samples kept with each session (besides its start, end, gaps and anomalies)."""

    interval_s: float = Field(default=60, gt=0, le=3600, description="periodic sample")
    clock_aligned_s: int = Field(
        default=900, ge=0, le=86400, description="sample at each multiple (UTC); 0: off"
    )
    checkpoint_s: float = Field(
        default=5, gt=0, le=300, description="how often the last register reading is persisted"
    )
    measurands: list[str] = Field(
        default_factory=lambda: ["energy_import_wh", "power_w"],
        description="quantities stored with each sample (energy_import_wh is always kept)",
    )

    @field_validator("measurands")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from drivers import quantities

        for q in v:
            if q not in quantities.QUANTITIES:
                raise ValueError(f"unknown quantity {q!r}")
        return v


class PaymentConfig(_Section):
    """An ad-hoc payment terminal: pre-authorize, capture the final cost, void on failure."""

    enabled: bool = False
    preauth_cap: Money = Field(default=Decimal("50.00"), description="most ever pre-authorized")
    preauth_energy_wh: int = Field(
        default=30_000, gt=0, description="pre-authorize the price of this much energy (capped)"
    )
    timeout_s: float = Field(default=30, gt=0, le=300)


class BillingConfig(_Section):
    """How sessions are priced, signed and kept."""

    # Before `tariff`: its validator checks the file against these.
    tariff_limits: TariffLimits = TariffLimits()
    tariff: Path | None = Field(
        default=None,
        description="OCPI 2.2.1 tariff file (JSON or TOML); never written: a tariff set "
        "remotely is kept beside the store and wins until this file changes",
    )
    timezone: str = "UTC"
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    retention_days: int = Field(default=730, ge=1, description="after the cloud confirmed")
    key_dir: Path = Path("/var/lib/evedge/keys")
    signer: Literal["agent", "meter"] = "agent"
    free_vend: bool = False
    free_vend_token: str = Field(default="FREEVEND", min_length=1, max_length=36)
    limits: SessionLimits = SessionLimits()
    sampling: Sampling = Sampling()
    payment: PaymentConfig = PaymentConfig()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {v!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return v

    @field_validator("tariff")
    @classmethod
    def _tariff_loads(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        limits = info.data.get("tariff_limits")
        if v is not None and limits is not None:
            load_billing_tariff(v, limits)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> BillingConfig:
        if self.tariff is None and not self.free_vend:
            raise ValueError("tariff: required unless free_vend = true")
        if self.tariff is not None and self.currency is not None:
            t = load_billing_tariff(self.tariff, self.tariff_limits)
            if t.currency != self.currency:
                raise ValueError(
                    f"currency: tariff {t.id} is in {t.currency}, the station bills {self.currency}"
                )
        if self.payment.enabled and self.tariff is None:
            raise ValueError("payment: a payment terminal needs a tariff to pre-authorize from")
        return self


def load_billing_tariff(path: Path, limits: TariffLimits) -> Tariff:
    """Load a tariff for billing; ValueError (one line per problem) if it is invalid or not
    usable (agent/billing/usable.py: absurd prices or steps, no fallback element). Its
    validity period is not checked here: a tariff that expired is still the one the station
    has (sessions priced by it are flagged for review), and CLI commands must still load."""
    try:
        return check_usable(load_tariff(path), limits, None, str(path))
    except TariffError as e:
        raise ValueError("; ".join(f"{path}: {p}: {m}" for p, m in e.problems)) from None


class SessionsConfig(_Section):
    """Timing of the session engine."""

    connection_timeout_s: float = Field(
        default=60, gt=0, description="an authorization waits this long for the plug"
    )
    meter_max_age_s: float = Field(
        default=10, gt=0, description="a register reading older than this is stale"
    )
    end_reading_timeout_s: float = Field(
        default=5, gt=0, description="wait for a meter reading taken after the stop"
    )
    recovery_timeout_s: float = Field(
        default=10, gt=0, description="after a restart, wait this long for EVSE and meter"
    )
    gap_after_s: float = Field(
        default=10, gt=0, description="no register reading for this long is a metering gap"
    )
    jump_slack_wh: int = Field(
        default=5, ge=0, description="tolerance over max power x time before a jump is flagged"
    )
    backwards_glitch_wh: int = Field(
        default=1000,
        ge=0,
        description="a register drop up to this is a glitch (nothing billed until it passes its "
        "high-water mark again); a larger drop is a reset (counted from the new value)",
    )
    estimate_tolerance_pct: float = Field(
        default=20,
        gt=0,
        le=100,
        description="a record is flagged when the billed energy is below the meter's power x "
        "time estimate by more than this share of it (and estimate_min_wh)",
    )
    estimate_min_wh: int = Field(
        default=20, ge=0, description="register resolution and ramps: shortfalls up to this pass"
    )
    review_fault_components: tuple[str, ...] = Field(
        default=("FiscalMetering",),
        description="faults with these OCPP 2.0.1 components during a session flag its record",
    )
    nominal_voltage_v: float = Field(default=230, gt=0, le=1000)
    failsafe_timeout_s: float = Field(
        default=30,
        ge=2,
        le=3600,
        description="EVSEs with a failsafe ([failsafe] in their profile) fall back to "
        "failsafe_current_a when the agent has not written for this long",
    )
    failsafe_current_a: float = Field(
        default=6, ge=0, le=80, description="0 (stop) or 6..80 A: what the EVSE offers then"
    )

    @field_validator("failsafe_current_a")
    @classmethod
    def _legal_current(cls, v: float) -> float:
        if 0 < v < 6:
            raise ValueError(f"must be 0 (stop charging) or 6..80 A (IEC 61851), got {v:g}")
        return v


class LocalListEntry(_Section):
    id: str = Field(min_length=1, max_length=36)
    status: Literal["Accepted", "Blocked", "Expired", "Invalid"] = "Accepted"
    group: str | None = Field(default=None, max_length=36)


class AuthConfig(_Section):
    """Authorization: local list (seeded from here), cache, offline behaviour."""

    local_list: list[LocalListEntry] = Field(default_factory=list)
    cache_enabled: bool = True
    cache_ttl_s: int = Field(default=7 * 86400, gt=0)
    allow_offline_unknown: bool = Field(
        default=False, description="accept unknown tokens while the online authorizer is down"
    )
    online_timeout_s: float = Field(default=10, gt=0, le=120)


# A tariff set remotely (API/MQTT set_tariff) lives in the state directory beside the store:
# the config's own file (/etc/evedge, read-only under ProtectSystem=strict) is never written.
REMOTE_TARIFF_FILE = "remote-tariff.json"
# billing_state key: SHA-256 of the config's tariff file when the remote tariff was set.
REMOTE_TARIFF_BASE_KEY = "remote_tariff_base"


def remote_tariff_path(store_path: Path) -> Path:
    """Where the remotely set tariff is kept: `remote-tariff.json` beside the store
    (/var/lib/evedge/remote-tariff.json with the default store)."""
    return store_path.parent / REMOTE_TARIFF_FILE


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (OSError if it cannot be read)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class TariffChoice:
    """The tariff in force at start, where it comes from and why."""

    tariff: Tariff | None
    source: Literal["config", "remote", "none"]
    path: Path | None
    reason: str

    @classmethod
    def remote(cls, tariff: Tariff, path: Path, config: Path) -> TariffChoice:
        """The remotely set tariff, kept at `path`, in force instead of `config`'s."""
        return cls(tariff, "remote", path, f"set remotely; replaces {config} until that changes")

    def as_json(self) -> dict[str, str | None]:
        """For status answers: id, source, file, reason."""
        return {
            "id": None if self.tariff is None else self.tariff.id,
            "source": self.source,
            "file": None if self.path is None else str(self.path),
            "reason": self.reason,
        }


def choose_tariff(billing: BillingConfig, store_path: Path, base: str | None) -> TariffChoice:
    """The tariff in force: the remotely set one (see remote_tariff_path) while it is valid
    and the config's tariff file is still the one it replaced (`base`: that file's SHA-256
    when it was set; None: unknown, the remote one wins); else the config's file."""
    config = billing.tariff
    if config is None:
        return TariffChoice(None, "none", None, "no [billing] tariff: free vend")
    remote = remote_tariff_path(store_path)
    if not remote.exists():
        return TariffChoice(
            load_billing_tariff(config, billing.tariff_limits),
            "config",
            config,
            "no tariff was set remotely",
        )
    why = None
    try:
        tariff = load_billing_tariff(remote, billing.tariff_limits)
        if billing.currency is not None and tariff.currency != billing.currency:
            why = f"it is in {tariff.currency}, the station bills {billing.currency}"
        elif base is not None and base != file_sha256(config):
            why = f"{config} changed since it was set (a local edit wins)"
    except (OSError, ValueError) as e:
        why = f"it cannot be used: {e}"
    if why is not None:
        return TariffChoice(
            load_billing_tariff(config, billing.tariff_limits),
            "config",
            config,
            f"remote tariff {remote} ignored: {why}",
        )
    return TariffChoice.remote(tariff, remote, config)


def write_tariff_file(path: Path, tariff: Tariff) -> None:
    """Write the tariff as JSON atomically (see write_atomic): a crash leaves the old file or
    the new one, never half of one."""
    write_atomic(path, tariff.model_dump_json(indent=2, exclude_none=True) + "\n")
