"""The `[mqtt]` section of the station config: broker, credentials, topics, outbox limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.secretfile import SecretFileError, read_secret


class MqttConfigError(ValueError):
    """A credential file cannot be used (missing, unreadable, or readable by others)."""


class MqttConfig(BaseModel):
    """Cloud sync over MQTT. Absent section: no MQTT client runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_-]+$")
    port: int = Field(default=8883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = True
    ca_file: Path | None = Field(default=None, description="broker CA; None: the system CAs")
    cert_file: Path | None = Field(default=None, description="client certificate (mTLS)")
    key_file: Path | None = Field(default=None, description="client key (mTLS)")
    username: str | None = None
    password_file: Path | None = Field(default=None, description="mode 0600, one line")
    client_id: str | None = Field(default=None, description="default: evedge-<station id>")
    topic_prefix: str = Field(default="evedge/v1", pattern=r"^[^#+]+[^/#+]$")
    telemetry_interval_s: float = Field(default=10, ge=0.1, le=3600)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 86400, ge=0, description="MQTT 5 session expiry")
    reconnect_min_s: float = Field(default=1, gt=0, le=60)
    reconnect_max_s: float = Field(default=60, gt=0, le=3600)
    inflight_window: int = Field(default=200, ge=1, le=65535, description="unacked publishes")
    outbox_max_rows: int = Field(default=1_000_000, ge=1000, description="thin bulk beyond this")
    min_free_disk_mb: float = Field(default=200, ge=0, description="thin bulk below this free")
    command_max_ttl_s: float = Field(
        default=300, gt=0, le=86400, description="a command's expiry may lie at most this far ahead"
    )
    command_queue: int = Field(
        default=64, ge=1, le=10_000, description="commands waiting to run; more: `busy`"
    )
    command_max_bytes: int = Field(
        default=1 << 20, ge=1024, le=16 << 20, description="larger command payloads: `invalid`"
    )

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mTLS needs both)")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file/key_file need tls = true")
        if self.password_file is not None and not self.username:
            raise ValueError("password_file needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


def read_password(path: Path) -> str:
    """The broker password from `path`: the first line, refusing a file others can read.

    The message names the file and the fix, never the content.
    """
    try:
        first = read_secret(path, "mqtt.password_file").splitlines()[0]
    except SecretFileError as e:
        raise MqttConfigError(str(e)) from None
    if not first:
        raise MqttConfigError(f"mqtt.password_file {path}: the first line is empty")
    return first
