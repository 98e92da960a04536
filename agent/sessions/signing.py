"""Who signs a session's OCMF readings: the agent with its own key, or the meter itself.

`AgentSigner` builds and signs a record inside the store transaction that keeps it, taking
its pagination number (PG T<n>) from the same transaction, so a number is used once.
`MeterSigner` passes through what a signing meter (e.g. Iskra WM3M4C) produced: verified
against the meter's public key, stored byte for byte, never re-serialized.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.billing import keys, ocmf
from agent.sessions.model import AuthMethod
from agent.sessions.store import get_state, set_state

PAGINATION_KEY = "ocmf_pagination"

# How the identification was checked, per authorization method: (IL, IF) for OCMF.
_IDENT = {
    AuthMethod.LOCAL_LIST: ("HEARSAY", ("RFID_PLAIN", "OCPP_WHITELIST")),
    AuthMethod.CACHE: ("HEARSAY", ("RFID_PLAIN", "OCPP_CACHE")),
    AuthMethod.ONLINE: ("TRUSTED", ("RFID_PLAIN", "OCPP_AUTH")),
    AuthMethod.REMOTE: ("TRUSTED", ("OCPP_RS",)),
    AuthMethod.CLI: ("HEARSAY", ()),
    AuthMethod.PAYMENT: ("VERIFIED", ()),
}


def user_assignment(method: str, token: str, token_type: str) -> ocmf.UserAssignment:
    """The OCMF user fields for a session's authorization (free vend: nobody assigned)."""
    m = AuthMethod(method)
    if m == AuthMethod.FREE_VEND:
        return ocmf.UserAssignment(assigned=False, level="NONE", id_type="NONE")
    level, flags = _IDENT[m]
    kind = {AuthMethod.REMOTE: "CENTRAL", AuthMethod.PAYMENT: "CARD_TXN_NR"}.get(m, token_type)
    return ocmf.UserAssignment(assigned=True, level=level, flags=flags, id_type=kind, id_data=token)


@dataclass(frozen=True)
class SignRequest:
    """Everything but the pagination that goes into one signed record."""

    meter: ocmf.MeterIdentity
    user: ocmf.UserAssignment
    charge_point: ocmf.ChargePoint
    tariff_text: str | None
    readings: Sequence[ocmf.MeterReading]


class AgentSigner:
    """Signs with the agent's secp256r1 key; PG numbers come from the store."""

    kind = "agent"

    def __init__(self, key: keys.PrivateKey, gateway: ocmf.Gateway):
        self.key = key
        self.gateway = gateway
        self.public_key_hex = keys.public_key_hex(key)

    def sign(self, conn: sqlite3.Connection, req: SignRequest) -> str:
        """Build and sign one record; call inside the transaction that stores it."""
        counter = ocmf.TransactionCounter(
            last=int(get_state(conn, PAGINATION_KEY) or 0),
            persist=lambda n: set_state(conn, PAGINATION_KEY, str(n)),
        )
        return ocmf.build_record(
            self.key,
            pagination=counter.next(),
            gateway=self.gateway,
            meter=req.meter,
            user=req.user,
            charge_point=req.charge_point,
            tariff_text=req.tariff_text,
            readings=list(req.readings),
        )


class SigningMeter(Protocol):
    """A meter that signs its own OCMF records (driver for its signing registers)."""

    public_key_hex: str
    serial: str

    async def begin(self, req: SignRequest) -> str:
        """Start the meter's transaction; returns its signed begin record."""
        ...

    async def end(self, req: SignRequest) -> str:
        """End the meter's transaction; returns its signed end record."""
        ...


class MeterSigner:
    """Passes the meter's own signed records through, after verifying them."""

    kind = "meter"

    def __init__(self, meter: SigningMeter):
        self.meter = meter
        self.public_key_hex = meter.public_key_hex

    async def begin(self, req: SignRequest) -> str:
        """The meter's begin record, verified, unchanged."""
        return self._checked(await self.meter.begin(req))

    async def end(self, req: SignRequest) -> str:
        """The meter's end record, verified, unchanged."""
        return self._checked(await self.meter.end(req))

    def _checked(self, text: str) -> str:
        result = ocmf.passthrough_meter_record(
            text, self.public_key_hex, meter_serial=self.meter.serial
        )
        return result.text
