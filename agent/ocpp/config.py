"""The `[ocpp]` config section: where the CSMS is and how the charge point proves who it is.

    [ocpp]
    url = "wss://csms.example.com/ocpp"   # the charge point id is appended as the last segment
    charge_point_id = "CP-0001"           # default: station.id
    version = "1.6"
    security_profile = 2                  # 0 none, 1 Basic auth, 2 TLS + Basic, 3 TLS + client cert
    password_file = "/etc/evedge/ocpp.pass"   # profiles 1, 2; mode 0600 or stricter
    ca_file = "/etc/evedge/csms-ca.pem"       # profiles 2, 3: verifies the CSMS
    cert_file = "/etc/evedge/cp.pem"          # profile 3
    key_file = "/etc/evedge/cp.key"           # profile 3
    keys = { MeterValueSampleInterval = "60" }  # OCPP configuration keys (the CSMS's win)
    upload_allow = ["diag.csms.example.com", "*.example.net"]  # GetDiagnostics destinations

`upload_allow`: host patterns (shell-style, `*` and `?`, matched against the URL's host as
written) a GetDiagnostics upload may go to. Empty (the default): any host whose addresses are
all public; loopback, private, link-local and other non-global addresses are refused unless
a pattern lists the host. The CSMS's `retries` and `retryInterval` are clamped to
`upload_retries_max` and `upload_retry_interval_min_s`..`upload_retry_interval_max_s`.

Security profiles per the OCA "Improved security for OCPP 1.6-J" whitepaper. The files are
checked (present, readable, password mode) when the service starts, since `config check`
may run on another machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.ocpp.config_keys import check_file_keys

# Files each security profile needs (the whitepaper: 1 = Basic auth over ws, 2 = TLS + Basic
# auth, 3 = TLS with a client certificate, no password).
PROFILE_FILES: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("password_file",),
    2: ("password_file", "ca_file"),
    3: ("ca_file", "cert_file", "key_file"),
}


class OcppConfig(BaseModel):
    """How to reach the central system."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, description="ws:// or wss:// base URL of the CSMS")
    charge_point_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=48,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="default: station.id",
    )
    version: Literal["1.6"] = "1.6"
    security_profile: int = Field(default=0, ge=0, le=3)
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    call_timeout_s: float = Field(default=30.0, gt=0, le=300, description="answer to a CALL")
    heartbeat_interval_s: int = Field(
        default=300, ge=1, le=86_400, description="until the CSMS sets HeartbeatInterval"
    )
    reconnect_min_s: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_s: float = Field(default=120.0, gt=0, le=3600)
    ping_interval_s: float = Field(default=30.0, gt=0, le=3600, description="WebSocket ping")
    ping_timeout_s: float = Field(default=20.0, gt=0, le=600, description="pong within")
    keys: dict[str, str] = Field(
        default_factory=dict, description="OCPP configuration keys; the CSMS's changes win"
    )
    meter_values_batch: int = Field(
        default=40,
        ge=1,
        le=500,
        description="queued MeterValues entries of one transaction sent as one message "
        "(40 x 8 sampled values: ~45 kB of JSON, under a 64 KiB frame limit)",
    )
    upload_allow: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="host patterns GetDiagnostics may upload to (empty: public hosts only)",
    )
    upload_retries_max: int = Field(default=3, ge=0, le=10, description="GetDiagnostics retries")
    upload_retry_interval_min_s: float = Field(default=30.0, ge=0, le=3600)
    upload_retry_interval_max_s: float = Field(default=600.0, ge=0, le=86_400)
    upload_timeout_s: float = Field(default=120.0, gt=0, le=3600, description="one attempt")

    @field_validator("upload_allow")
    @classmethod
    def _host_patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if not p or len(p) > 253 or any(c in p for c in "/@[] \t"):
                raise ValueError(
                    f"upload_allow: {p!r} is not a host pattern (a host name or address, "
                    "IPv6 without brackets, `*` and `?` allowed; no scheme, path or user)"
                )
        return [p.lower() for p in patterns]

    @model_validator(mode="after")
    def _consistent(self) -> OcppConfig:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme not in ("ws", "wss"):
            raise ValueError(f"url must start with ws:// or wss://, got {self.url!r}")
        _check_url(self.url)
        if scheme == "ws" and self.security_profile >= 2:
            raise ValueError(
                f"security_profile {self.security_profile} uses TLS: the url must be wss://"
            )
        if scheme == "wss" and self.security_profile <= 1:
            raise ValueError(
                f"security_profile {self.security_profile} is without TLS: the url must be "
                "ws:// (use profile 2 or 3 for wss://)"
            )
        missing = [f for f in PROFILE_FILES[self.security_profile] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"security_profile {self.security_profile} needs {', '.join(missing)}")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.upload_retry_interval_min_s > self.upload_retry_interval_max_s:
            raise ValueError(
                "upload_retry_interval_min_s must not exceed upload_retry_interval_max_s"
            )
        if "@" in self.url.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("url must not carry credentials; use password_file")
        problems = check_file_keys(self.keys)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _check_url(url: str) -> None:
    """ValueError unless `url` has a host and, if given, a port in 1..65535."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # "ws://[::1", "ws://h:99999"
        raise ValueError(f"url {url!r} is not a valid URL: {e}") from None
    if not parts.hostname:
        raise ValueError(f"url {url!r} has no host")
    if port == 0:
        raise ValueError(f"url {url!r}: port must be 1..65535")
