"""OCPP firmware statuses, the refusal they come with, and the security event log line."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class UpdateStatus(StrEnum):
    """SignedFirmwareStatusNotification (1.6 security) / FirmwareStatusNotification (2.0.1)."""

    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    DOWNLOAD_FAILED = "DownloadFailed"
    SIGNATURE_VERIFIED = "SignatureVerified"
    INVALID_SIGNATURE = "InvalidSignature"
    INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
    INSTALLING = "Installing"
    INSTALL_REBOOTING = "InstallRebooting"
    INSTALLED = "Installed"
    INSTALLATION_FAILED = "InstallationFailed"


Reporter = Callable[[UpdateStatus], None]


class UpdateRefused(Exception):
    """An update stopped with a final OCPP `status`; `event` is its security event, if any."""

    def __init__(self, status: UpdateStatus, message: str, event: str | None = None):
        super().__init__(message)
        self.status = status
        self.event = event


def security_event(kind: str, **fields: object) -> None:
    """Log one security event (OCPP SecurityEventNotification type) as a structured line.

    The append-only security log and its OCPP/MQTT delivery come later (issue 15 item 3);
    they will read this same event name and type."""
    log.warning("security_event", type=kind, **fields)
