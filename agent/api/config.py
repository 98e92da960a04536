"""The `[api]` section: where the local API's Unix socket lives and who may control.

[api]
socket = "/run/evedge/api.sock"
group = "evedge"     # members (and root) may use control operations
mode = 0o660         # or "0660"
max_connections_per_uid = 16   # more from one local user are refused (busy)
max_connections = 256          # from everyone together
idle_timeout_s = 300           # a connection silent this long is closed
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ApiConfig(BaseModel):
    """Local API settings; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    socket: Path = Path("/run/evedge/api.sock")
    group: str = Field(default="evedge", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    mode: int = Field(default=0o660, description="permission bits of the socket file")
    max_connections_per_uid: int = Field(
        default=16, ge=1, le=4096, description="open connections one peer uid may hold"
    )
    max_connections: int = Field(default=256, ge=1, le=16384, description="all peers together")
    idle_timeout_s: float = Field(
        default=300, gt=0, le=86400, description="a connection silent this long is closed"
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                return int(v.removeprefix("0o"), 8)
            except ValueError:
                raise ValueError(f"must be octal permission bits like '0660', got {v!r}") from None
        return v

    @field_validator("mode")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not 0 <= v <= 0o777:
            raise ValueError(f"must be permission bits 0..0o777, got {oct(v)}")
        if v & 0o600 != 0o600:
            raise ValueError(f"the service itself needs rw (0o600), got {oct(v)}")
        return v

    @field_validator("socket")
    @classmethod
    def _fits(cls, v: Path) -> Path:
        if len(str(v).encode()) > 107:
            raise ValueError(f"a Unix socket path is at most 107 bytes, got {len(str(v))}")
        return v
