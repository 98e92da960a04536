"""The vocabulary of sessions: connector statuses, stop reasons, authorization, tokens."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """Connector status (OCPP 1.6 ChargePointStatus)."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"  # plugged in (or authorized), no session yet
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"  # offered current, the car does not take it
    SUSPENDED_EVSE = "SuspendedEVSE"  # the EVSE offers no current
    FINISHING = "Finishing"  # session over, cable still plugged in
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class StopReason(StrEnum):
    """Why a session ended (OCPP 2.0.1 ReasonEnumType; 1.6 has a subset)."""

    EV_DISCONNECTED = "EVDisconnected"
    LOCAL = "Local"  # card at the reader, or a technician's CLI
    REMOTE = "Remote"
    DEAUTHORIZED = "DeAuthorized"
    POWER_LOSS = "PowerLoss"  # the agent was not running when the session ended
    ENERGY_LIMIT = "EnergyLimitReached"
    TIME_LIMIT = "TimeLimitReached"
    COST_LIMIT = "LocalOutOfCredit"  # 2.0.1's reason for a spent budget / pre-authorization
    EMERGENCY_STOP = "EmergencyStop"  # fault: the EVSE or diagnosis says stop now
    SOFT_RESET = "SoftReset"  # OCPP Reset.req (Soft)
    HARD_RESET = "HardReset"  # OCPP Reset.req (Hard)
    UNLOCK_COMMAND = "UnlockCommand"  # OCPP UnlockConnector.req
    OTHER = "Other"


class AuthMethod(StrEnum):
    """How a session was authorized (kept in the charge record)."""

    LOCAL_LIST = "LocalList"
    CACHE = "Cache"
    # Offline, a token neither the list nor the cache knows, accepted only because
    # AllowOfflineTxForUnknownId is on: nobody vouched for it (the CSMS judges it later).
    OFFLINE_UNKNOWN = "OfflineUnknown"
    ONLINE = "Online"
    REMOTE = "Remote"  # started by the CSMS (RemoteStart): authorized there
    CLI = "CLI"
    FREE_VEND = "FreeVend"
    PAYMENT = "PaymentTerminal"


class AuthStatus(StrEnum):
    """OCPP AuthorizationStatus."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    UNKNOWN = "Unknown"  # not in list or cache and nobody online to ask


@dataclass(frozen=True)
class IdToken:
    """Who asks to charge. `kind` is the OCMF identification type (ISO14443, CENTRAL, …)."""

    id: str
    kind: str = "LOCAL"

    @property
    def masked(self) -> str:
        """For logs: the token is personal data and, for RFID, a credential."""
        return mask(self.id)


def mask(token: str | None) -> str:
    """`DEMO-0042` -> `DE*****42`: enough to tell tokens apart in a log, not to reuse one."""
    if not token:
        return ""
    if len(token) <= 4:
        return "*" * len(token)
    return token[:2] + "*" * (len(token) - 4) + token[-2:]


def card_token(raw: str) -> IdToken:
    """A token read from an RFID card: ISO14443 when it is a 4 or 7 byte hex UID."""
    hexdigits = set("0123456789abcdefABCDEF")
    if len(raw) in (8, 14) and set(raw) <= hexdigits:
        return IdToken(raw.upper(), "ISO14443")
    return IdToken(raw, "LOCAL")
