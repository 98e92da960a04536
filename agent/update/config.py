"""The `[update]` section: where releases live, whom to trust, how long probation lasts.

[update]
root_ca_file = "/etc/evedge/update-root.pem"  # the manufacturer's root: signers chain to it
releases_dir = "/opt/evedge/releases"         # one <version>/venv per release
current_link = "/opt/evedge/current"          # the unit runs current/venv/bin/evedge
healthy_within_s = 300     # the new release must report healthy within this, else rollback
max_boots = 3              # starts on probation before rollback (a crash loop)
during_session = "wait"    # or "refuse": an update while a vehicle charges
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class UpdateConfig(BaseModel):
    """Signed self-update settings; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root_ca_file: Path | None = Field(
        default=None, description="PEM root certificate(s); without it every update is refused"
    )
    download_ca_file: Path | None = Field(
        default=None, description="PEM CAs for https downloads; default: the system's"
    )
    releases_dir: Path = Path("/opt/evedge/releases")
    current_link: Path = Path("/opt/evedge/current")
    healthy_within_s: float = Field(default=300, gt=0, le=3600)
    max_boots: int = Field(default=3, ge=1, le=20)
    during_session: Literal["wait", "refuse"] = "wait"
    session_wait_max_s: float = Field(
        default=4 * 3600, gt=0, description="waiting longer for sessions to end: InstallationFailed"
    )
    max_retries: int = Field(default=5, ge=0, le=20, description="clamp of OCPP `retries`")
    retry_interval_s: tuple[float, float] = Field(
        default=(5, 3600), description="clamp of OCPP `retryInterval`: (min, max) seconds"
    )
    restart_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "restart", "evedge"], min_length=1
    )
