"""The `[driver]` config section: what drivers see at the station and whom they can call.

    [driver]
    language = "de"                      # default display language (en, de)
    operator = "Example Charging GmbH"
    hotline = "+49 30 1234 5678"
    contact = "support@example.com"      # optional: e-mail or web address
    report_url = "https://charge.example.com/report"   # QR "report a problem" link base

Absent section: no driver display service (tickets still work from the CLI).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

SHIPPED_LANGUAGES = ("en", "de")  # one messages/<lang>.toml each; the catalog checks the set


class DriverConfig(BaseModel):
    """Driver-facing texts and contacts of the station."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str = Field(default="en", description="default display language")
    operator: str = Field(min_length=1, max_length=80, description="shown with the hotline")
    hotline: str = Field(
        pattern=r"^\+?[0-9][0-9 ()/-]{3,23}$", description="phone number drivers can call"
    )
    contact: str = Field(default="", max_length=120, description="e-mail or web address")
    report_url: str | None = Field(
        default=None, description="https base of the QR 'report a problem' link"
    )
    refresh_s: float = Field(
        default=60, ge=5, le=3600, description="re-render (time-of-day prices) at least this often"
    )

    @field_validator("language")
    @classmethod
    def _shipped(cls, v: str) -> str:
        if v not in SHIPPED_LANGUAGES:
            raise ValueError(f"must be one of {', '.join(SHIPPED_LANGUAGES)}, got {v!r}")
        return v

    @field_validator("report_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"must be an https:// address with a host, got {v!r}")
        if parts.query or parts.fragment:
            raise ValueError("must have no ?query or #fragment: station and connector are added")
        return v
