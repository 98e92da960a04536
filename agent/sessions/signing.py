"""Who signs a session's OCMF readings: the agent with its own key, or the meter itself.

`AgentSigner` builds and signs a record inside the store transaction that keeps it, taking
its pagination number (PG T<n>) from the same transaction, so a number is used once.
`MeterSigner` passes through what a signing meter (e.g. Iskra WM3M4C) produced: verified
against the meter's public key, stored byte for byte, never re-serialized.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol

from agent.billing import keys, ocmf
from agent.events import utcnow
from agent.sessions.model import AuthMethod
from agent.sessions.store import get_state, set_state
from drivers.signing import OcmfSigningMeter

PAGINATION_KEY = "ocmf_pagination"

# How the identification was checked, per authorization method: (IL, IF) for OCMF.
_IDENT = {
    AuthMethod.LOCAL_LIST: ("HEARSAY", ("RFID_PLAIN", "OCPP_WHITELIST")),
    AuthMethod.CACHE: ("HEARSAY", ("RFID_PLAIN", "OCPP_CACHE")),
    AuthMethod.OFFLINE_UNKNOWN: ("HEARSAY", ("RFID_PLAIN", "OCPP_NONE")),  # no OCPP check
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


class ModbusSigningMeter:
    """A `SigningMeter` over a meter's signing registers (drivers/signing.py, the profile's
    [signing] table): the agent writes who charges where, the meter adds its own reading,
    pagination and identity and signs. Begin with the profile's begin command, end with the
    TX letter of the session's end reading (L/R/A/P/E) so the signed record keeps why."""

    def __init__(self, driver: OcmfSigningMeter, gateway: ocmf.Gateway):
        self.driver = driver
        self.gateway = gateway
        self.public_key_hex = ""  # read from the meter before its first record

    @property
    def serial(self) -> str:
        """The meter's serial as the poller read it ("" until then)."""
        value = self.driver.device.identity.get("serial_number")
        return "" if value is None else str(value)

    async def begin(self, req: SignRequest) -> str:
        """Open the meter's transaction; its signed begin record."""
        return await self._run(self.driver.spec.begin, req)

    async def end(self, req: SignRequest) -> str:
        """Close the meter's transaction; its signed end record."""
        tx = req.readings[-1].tx.value if req.readings else ""
        return await self._run(tx if tx in self.driver.spec.ends else "E", req)

    async def _run(self, tx: str, req: SignRequest) -> str:
        if not self.public_key_hex:
            self.public_key_hex = await self.driver.public_key_hex()
        if not self.serial:
            await self.driver.device.read_identity()
        zone = req.readings[-1].time.tzinfo if req.readings else UTC
        return await self.driver.transact(
            tx, meter_dataset(self.gateway, req), utcnow().astimezone(zone)
        )


def meter_dataset(gateway: ocmf.Gateway, req: SignRequest) -> str:
    """The OCMF input dataset a signing meter completes (it fills PG, MV, MM, MS, MF, RD)."""
    u, cp = req.user, req.charge_point
    fields = {
        "FV": ocmf.FORMAT_VERSION,
        "GI": gateway.identification,
        "GS": gateway.serial,
        "GV": gateway.version,
        "PG": "",
        "MV": "",
        "MM": "",
        "MS": "",
        "MF": "",
        "IS": bool(u.assigned),
        "IL": u.level,
        "IF": list(u.flags),
        "IT": u.id_type,
        "ID": u.id_data,
        "CT": cp.id_type,
        "CI": cp.id,
        "RD": [],
    }
    text = json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))
    if "|" in text:
        raise ocmf.OcmfFormatError("'|' is not allowed anywhere in an OCMF payload")
    return text


class MeterSigner:
    """Passes the meter's own signed records through, after verifying them."""

    kind = "meter"

    def __init__(self, meter: SigningMeter):
        self.meter = meter

    @property
    def public_key_hex(self) -> str:
        """The meter's key (known once the meter has been asked for its first record)."""
        return self.meter.public_key_hex

    async def begin(self, req: SignRequest) -> str:
        """The meter's begin record, verified, unchanged."""
        return self._checked(await self.meter.begin(req))

    async def end(self, req: SignRequest) -> str:
        """The meter's end record, verified, unchanged."""
        return self._checked(await self.meter.end(req))

    def _checked(self, text: str) -> str:
        result = ocmf.passthrough_meter_record(
            text, self.public_key_hex, meter_serial=self.meter.serial or None
        )
        return result.text
