"""OCMF records (S.A.F.E. Open Charge Metering Format): build, sign, parse, verify, pass through.

A record is `OCMF|{payload}|{signature}`. The payload JSON is serialized once, compactly, and
the ECDSA signature covers exactly its UTF-8 bytes; a verifier must see those bytes unchanged,
so nothing here ever re-serializes a parsed payload. Our own records are signed with the
agent's key (`keys.PrivateKey`); records a signing meter produced are only verified and
passed on byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.billing.keys import PrivateKey, PublicKeyLike, load_public_key

log = structlog.get_logger(__name__)

HEADER = "OCMF"
FORMAT_VERSION = "1.0"
GATEWAY_ID = "evedge"
SIGNATURE_ALGORITHM = "ECDSA-secp256r1-SHA256"  # the spec's default since OCMF 0.4
OBIS_IMPORT_ENERGY = "01-00:01.08.00*FF"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Spec tables 11, 13-16, 17, 18, 10: values outside them make a record other verifiers warn on.
IDENTIFICATION_LEVELS = _words(
    "NONE HEARSAY TRUSTED VERIFIED CERTIFIED SECURE MISMATCH INVALID OUTDATED UNKNOWN"
)
IDENTIFICATION_FLAGS = _words(
    "RFID_NONE RFID_PLAIN RFID_RELATED RFID_PSK OCPP_NONE OCPP_RS OCPP_AUTH OCPP_RS_TLS "
    "OCPP_AUTH_TLS OCPP_CACHE OCPP_WHITELIST OCPP_CERTIFIED ISO15118_NONE ISO15118_PNC "
    "PLMN_NONE PLMN_RING PLMN_SMS"
)
IDENTIFICATION_TYPES = _words(
    "NONE DENIED UNDEFINED ISO14443 ISO15693 EMAID EVCCID EVCOID ISO7812 CARD_TXN_NR "
    "CENTRAL CENTRAL_1 CENTRAL_2 LOCAL LOCAL_1 LOCAL_2 PHONE_NUMBER KEY_CODE"
)
CHARGE_POINT_TYPES = frozenset({"EVSEID", "CBIDC"})
METER_STATUSES = frozenset("NGTDRMXIOSEF")
_ID_FORMATS = {
    "ISO14443": re.compile(r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{14}"),  # 4 or 7 byte UID
    "ISO15693": re.compile(r"[0-9A-Fa-f]{16}"),  # 8 byte UID
}
_TM = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2}),(\d{3})([+-])(\d{2})(\d{2}) ([UISR])"
)
_PG = re.compile(r"([TF])(0|[1-9][0-9]*)")

# OCMF SA curve names -> `cryptography` curve names, and SA hash names.
_CURVES = {
    "secp192r1": "secp192r1",
    "secp256k1": "secp256k1",
    "secp256r1": "secp256r1",
    "secp384r1": "secp384r1",
    "secp521r1": "secp521r1",
    "brainpool256r1": "brainpoolP256r1",
    "brainpoolP256r1": "brainpoolP256r1",
    "brainpool384r1": "brainpoolP384r1",
}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256,
    "SHA512": hashes.SHA512,
}


class OcmfError(ValueError):
    """Base of every OCMF error; the message says what is wrong with which record."""


class OcmfFormatError(OcmfError):
    """The text is not a well-formed OCMF record, or a value cannot be represented in one."""


class SignatureInvalid(OcmfError):
    """The signature does not match the payload under the given public key."""


class PaginationError(OcmfError):
    """Pagination (PG) of a signer's records is not gap-free and increasing."""


class TimeStatus(StrEnum):
    """Clock state noted after TM (spec table 19)."""

    UNSYNCHRONIZED = "U"
    INFORMATIVE = "I"
    SYNCHRONIZED = "S"
    RELATIVE = "R"


class Tx(StrEnum):
    """Reason of a reading (TX)."""

    BEGIN = "B"
    CHARGING = "C"
    EXCEPTION = "X"
    END = "E"
    END_LOCAL = "L"
    END_REMOTE = "R"
    END_ABORT = "A"
    END_POWER_FAILURE = "P"
    SUSPENDED = "S"
    TARIFF_CHANGE = "T"


@dataclass(frozen=True)
class Gateway:
    """The signing component: this agent on one station (GI/GS/GV, and CF)."""

    serial: str  # GS: the station id
    version: str  # GV: evedge's version
    identification: str = GATEWAY_ID  # GI
    charge_controller_firmware: str | None = None  # CF, at most 25 characters


@dataclass(frozen=True)
class MeterIdentity:
    """The meter whose register the readings come from (MV/MM/MS/MF); MS is mandatory."""

    serial: str
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None


@dataclass(frozen=True)
class UserAssignment:
    """Who charged (IS/IL/IF/IT/ID): `assigned` is IS; `id_type` is IT, `id_data` is ID."""

    assigned: bool = False
    level: str | None = "NONE"
    flags: tuple[str, ...] = ()
    id_type: str = "NONE"
    id_data: str | None = None


@dataclass(frozen=True)
class ChargePoint:
    """The charge point (CT/CI), e.g. ChargePoint("DE*ABC*E123*1")."""

    id: str
    id_type: str = "EVSEID"


@dataclass(frozen=True)
class MeterReading:
    """One energy register reading. `energy_wh` is the meter's register in integer Wh."""

    time: datetime  # timezone-aware; rendered with its own UTC offset
    tx: Tx
    energy_wh: int
    time_status: TimeStatus
    unit: str = "Wh"  # "Wh", or "kWh" rendered exactly with three decimals
    obis: str = OBIS_IMPORT_ENERGY
    current_type: str = "AC"
    error_flags: str = ""  # "E" energy, "t" time
    status: str = "G"


def format_time(when: datetime, status: TimeStatus | str) -> str:
    """TM text: `2018-07-24T13:22:04,000+0200 S` (comma, milliseconds, ±HHMM, status).

    Milliseconds are truncated, never rounded: rounding could move a reading into the next
    second (or tariff period).
    """
    status = TimeStatus(status)
    offset = when.utcoffset()
    if offset is None:
        raise OcmfFormatError("OCMF times must be timezone-aware")
    minutes, rest = divmod(int(offset.total_seconds()), 60)
    if rest or offset.microseconds:
        raise OcmfFormatError(f"UTC offset {offset} is not a whole number of minutes")
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d},{when.microsecond // 1000:03d}"
        f"{sign}{hh:02d}{mm:02d} {status.value}"
    )


def parse_time(text: str) -> tuple[datetime, TimeStatus]:
    """The aware datetime and clock status of a TM text (the exact format `format_time` makes)."""
    m = _TM.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise OcmfFormatError(f"TM {text!r} is not like '2018-07-24T13:22:04,000+0200 S'")
    y, mo, d, h, mi, s, ms, sign, oh, om, st = m.groups()
    offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
    try:
        when = datetime(
            int(y), int(mo), int(d), int(h), int(mi), int(s), int(ms) * 1000, timezone(offset)
        )
    except ValueError as e:
        raise OcmfFormatError(f"TM {text!r}: {e}") from None
    return when, TimeStatus(st)


class TransactionCounter:
    """The signer's transaction-context pagination counter (PG `T<n>`): 1, 2, 3, … no gaps.

    `persist(n)` is called with each new value before it is handed out. Call `next()` inside
    the store transaction that also commits the record it paginates: then a number is used
    exactly once. (Persist-before-use means a crash can at worst skip a number, never reuse
    one: two different signed records with the same PG would be the graver fault.)
    """

    def __init__(self, last: int = 0, persist: Callable[[int], None] | None = None) -> None:
        if type(last) is not int or last < 0:
            raise ValueError(f"last pagination must be a non-negative int, got {last!r}")
        self._last = last
        self._persist = persist

    @property
    def last(self) -> int:
        """The last number handed out (0 before the first)."""
        return self._last

    def next(self) -> int:
        """The next pagination number, persisted first."""
        n = self._last + 1
        if self._persist is not None:
            self._persist(n)
        self._last = n
        return n


# --- building and signing ------------------------------------------------------------


class _Number(str):
    """A JSON number token emitted verbatim (so 2935.600 keeps its three decimals)."""

    __slots__ = ()


def _encode(value: Any) -> str:
    # A tiny encoder instead of json.dumps for the whole payload: key order stays as given,
    # and `_Number` tokens are written exactly. ensure_ascii keeps the signed bytes ASCII.
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_encode(k)}:{_encode(v)}" for k, v in value.items()) + "}"
    raise OcmfFormatError(f"cannot put {type(value).__name__} {value!r} in an OCMF payload")


def _reading_value(reading: MeterReading) -> _Number:
    wh = reading.energy_wh
    # Energy comes from the meter register as integer Wh: a float here is a bug upstream.
    if type(wh) is not int:
        raise OcmfFormatError(f"energy must be integer Wh from the register, got {wh!r}")
    if wh < 0:
        raise OcmfFormatError(f"an energy register reading cannot be negative: {wh}")
    if reading.unit == "Wh":
        return _Number(str(wh))
    if reading.unit == "kWh":
        return _Number(f"{Decimal(wh).scaleb(-3):.3f}")
    raise OcmfFormatError(f"reading unit must be 'Wh' or 'kWh', got {reading.unit!r}")


def _reading(reading: MeterReading) -> dict[str, Any]:
    if not set(reading.error_flags) <= {"E", "t"}:
        raise OcmfFormatError(f"error flags must use only 'E' and 't': {reading.error_flags!r}")
    if reading.status not in METER_STATUSES:
        raise OcmfFormatError(f"meter status {reading.status!r} is not one of the spec's")
    if reading.current_type not in ("AC", "DC"):
        raise OcmfFormatError(f"current type must be AC or DC: {reading.current_type!r}")
    # Key order as in the spec's example: TM TX RV RI RU RT EF ST.
    return {
        "TM": format_time(reading.time, reading.time_status),
        "TX": Tx(reading.tx).value,
        "RV": _reading_value(reading),
        "RI": reading.obis,
        "RU": reading.unit,
        "RT": reading.current_type,
        "EF": reading.error_flags,
        "ST": reading.status,
    }


def _check_user(user: UserAssignment) -> None:
    if user.level is not None and user.level not in IDENTIFICATION_LEVELS:
        raise OcmfFormatError(f"identification level {user.level!r} is not one of the spec's")
    if len(user.flags) > 4 or not set(user.flags) <= IDENTIFICATION_FLAGS:
        raise OcmfFormatError(f"identification flags {user.flags!r}: at most 4 of the spec's")
    if user.id_type not in IDENTIFICATION_TYPES:
        raise OcmfFormatError(f"identification type {user.id_type!r} is not one of the spec's")
    fmt = _ID_FORMATS.get(user.id_type)
    if fmt is not None and user.id_data is not None and not fmt.fullmatch(user.id_data):
        raise OcmfFormatError(f"{user.id_type} id {user.id_data!r} is not a hex UID of its size")


def build_payload(
    *,
    pagination: int,
    gateway: Gateway,
    meter: MeterIdentity,
    user: UserAssignment,
    readings: Sequence[MeterReading],
    charge_point: ChargePoint | None = None,
    tariff_text: str | None = None,
) -> str:
    """The payload JSON text of one record, compact, keys in the spec's order.

    FV GI GS GV PG MV MM MS MF IS IL IF IT ID TT CF CT CI RD; optional fields that are None
    are left out. Raises `OcmfFormatError` for values the spec does not allow.
    """
    if type(pagination) is not int or pagination < 1:
        raise OcmfFormatError(f"pagination must be a positive int, got {pagination!r}")
    if not readings:
        raise OcmfFormatError("a record needs at least one reading")
    if not meter.serial:
        raise OcmfFormatError("the meter serial (MS) is mandatory")
    _check_user(user)
    if tariff_text is not None and len(tariff_text) > 250:
        raise OcmfFormatError("tariff text (TT) is limited to 250 characters")
    cf = gateway.charge_controller_firmware
    if cf is not None and len(cf) > 25:
        raise OcmfFormatError("charge controller firmware (CF) is limited to 25 characters")
    if charge_point is not None and charge_point.id_type not in CHARGE_POINT_TYPES:
        raise OcmfFormatError(f"charge point id type {charge_point.id_type!r} is not the spec's")
    fields: list[tuple[str, Any]] = [
        ("FV", FORMAT_VERSION),
        ("GI", gateway.identification),
        ("GS", gateway.serial),
        ("GV", gateway.version),
        ("PG", f"T{pagination}"),
        ("MV", meter.vendor),
        ("MM", meter.model),
        ("MS", meter.serial),
        ("MF", meter.firmware),
        ("IS", bool(user.assigned)),
        ("IL", user.level),
        ("IF", list(user.flags)),  # always an array, even empty (spec table 4)
        ("IT", user.id_type),
        ("ID", user.id_data),
        ("TT", tariff_text),
        ("CF", cf),
        ("CT", charge_point.id_type if charge_point else None),
        ("CI", charge_point.id if charge_point else None),
        ("RD", [_reading(r) for r in readings]),
    ]
    text = _encode({k: v for k, v in fields if v is not None})
    # The pipe separates sections and may not appear inside one (json.dumps does not escape it).
    if "|" in text:
        raise OcmfFormatError("'|' is not allowed anywhere in an OCMF payload")
    return text


def sign(payload_json: str, key: PrivateKey) -> str:
    """The full record `OCMF|{payload}|{"SA":…,"SD":…}`, signed over the exact payload bytes."""
    if "|" in payload_json:
        raise OcmfFormatError("'|' is not allowed anywhere in an OCMF payload")
    signature = key.sign(payload_json.encode("utf-8")).hex().upper()
    return f'{HEADER}|{payload_json}|{{"SA":"{SIGNATURE_ALGORITHM}","SD":"{signature}"}}'


def build_record(key: PrivateKey, **fields: Any) -> str:
    """`build_payload(**fields)` signed with `key`: the payload is serialized exactly once."""
    return sign(build_payload(**fields), key)


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedReading:
    """One RD entry with the fields it inherits from earlier readings of the same record."""

    time: str
    tx: str | None
    value: int | Decimal | None
    obis: str | None
    unit: str | None
    current_type: str | None
    error_flags: str
    status: str | None

    @property
    def timestamp(self) -> tuple[datetime, TimeStatus]:
        """TM parsed (raises `OcmfFormatError` if not in the spec's format)."""
        return parse_time(self.time)

    @property
    def energy_wh(self) -> int:
        """RV as integer Wh; raises `OcmfFormatError` if it is not an exact Wh energy value."""
        factor = {"Wh": 1, "kWh": 1000}.get(self.unit or "")
        number = isinstance(self.value, int | Decimal) and not isinstance(self.value, bool)
        if factor is None or not number:
            raise OcmfFormatError(f"reading {self.value!r} {self.unit!r} is not an energy value")
        wh = Decimal(self.value) * factor
        if wh != wh.to_integral_value():
            raise OcmfFormatError(f"reading {self.value} {self.unit} is not a whole number of Wh")
        return int(wh)


_INHERITED = ("TM", "TX", "RI", "RU", "RT", "EF", "ST")


@dataclass(frozen=True)
class OcmfRecord:
    """A parsed record. `text` and `payload_json` are the exact input; nothing is re-encoded."""

    text: str
    payload_json: str
    payload: Mapping[str, Any]
    signature: Mapping[str, Any]

    @property
    def algorithm(self) -> str:
        """SA, or the spec's default when absent."""
        return self.signature.get("SA") or SIGNATURE_ALGORITHM

    @property
    def pagination(self) -> tuple[str, int]:
        """PG split into its context letter ('T' or 'F') and number."""
        m = _PG.fullmatch(str(self.payload.get("PG")))
        if m is None:
            raise OcmfFormatError(f"PG {self.payload.get('PG')!r} is not like 'T12'")
        return m.group(1), int(m.group(2))

    @property
    def meter_serial(self) -> str | None:
        """MS."""
        return self.payload.get("MS")

    @property
    def readings(self) -> tuple[ParsedReading, ...]:
        """RD with inheritance applied: omitted fields take the previous reading's value."""
        last: dict[str, Any] = {}
        out = []
        for rd in self.payload["RD"]:
            last.update({k: rd[k] for k in _INHERITED if k in rd})
            out.append(
                ParsedReading(
                    time=last.get("TM", ""),
                    tx=last.get("TX"),
                    value=rd.get("RV"),
                    obis=last.get("RI"),
                    unit=last.get("RU"),
                    current_type=last.get("RT"),
                    error_flags=last.get("EF") or "",
                    status=last.get("ST"),
                )
            )
        return tuple(out)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; a verifier and a biller could read
    # different values from the same signed bytes. Refuse such records outright.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise OcmfFormatError(f"duplicate key {k!r} in OCMF JSON")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise OcmfFormatError(f"{name} is not a JSON number")


def _json_object(text: str, section: str) -> dict[str, Any]:
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=Decimal,  # keep RV's digits exactly
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as e:
        raise OcmfFormatError(f"{section} section is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise OcmfFormatError(f"{section} section is not a JSON object")
    return value


def parse(text: str) -> OcmfRecord:
    """Parse `OCMF|{payload}|{signature}` without changing a byte of it.

    Raises `OcmfFormatError` naming the problem: header, section count (a public key appended
    as a fourth section is refused: keys travel out of band), JSON, or missing PG/RD/SD.
    """
    if not isinstance(text, str):
        raise OcmfFormatError(f"an OCMF record is text, not {type(text).__name__}")
    if not text.startswith(HEADER + "|"):
        raise OcmfFormatError(f"not an OCMF record: it must start with '{HEADER}|'")
    parts = text.split("|")
    if len(parts) != 3:
        raise OcmfFormatError(f"an OCMF record has 3 '|'-separated sections, this one {len(parts)}")
    payload = _json_object(parts[1], "payload")
    signature = _json_object(parts[2], "signature")
    rd = payload.get("RD")
    if not isinstance(rd, list) or not rd or not all(isinstance(r, dict) for r in rd):
        raise OcmfFormatError("payload RD must be a non-empty array of reading objects")
    if not isinstance(payload.get("PG"), str):
        raise OcmfFormatError("payload has no pagination (PG)")
    if not isinstance(signature.get("SD"), str) or not signature["SD"]:
        raise OcmfFormatError("signature section has no signature data (SD)")
    return OcmfRecord(text=text, payload_json=parts[1], payload=payload, signature=signature)


def check_pagination(records: Iterable[OcmfRecord]) -> None:
    """Raise `PaginationError` unless each context's PG numbers go up by exactly 1.

    Give one signer's records in order (the agent's, or one meter's): every signer counts on
    its own. The message names the index of the first offending record.
    """
    last: dict[str, int] = {}
    for i, record in enumerate(records):
        context, n = record.pagination
        before = last.get(context)
        if before is not None and n != before + 1:
            what = "a gap" if n > before + 1 else "not increasing"
            raise PaginationError(f"record {i}: PG {context}{n} follows {context}{before} ({what})")
        last[context] = n


# --- verifying -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """A record whose signature verified. `text` is the caller's string, unchanged."""

    record: OcmfRecord
    der_normalized: bool  # the DER had superfluous leading zeros and verified only normalized

    @property
    def text(self) -> str:
        """The verified record text, byte for byte as given."""
        return self.record.text


def _signature_bytes(record: OcmfRecord) -> bytes:
    sd = record.signature["SD"]
    encoding = record.signature.get("SE") or "hex"
    mime = record.signature.get("SM") or "application/x-der"
    if mime != "application/x-der":
        raise OcmfFormatError(f"signature mime type {mime!r} is not supported (only DER)")
    try:
        if encoding == "hex":
            return bytes.fromhex(sd)
        if encoding == "base64":
            return base64.b64decode(sd, validate=True)
    except (ValueError, binascii.Error):
        raise SignatureInvalid(f"signature data is not valid {encoding}") from None
    raise OcmfFormatError(f"signature encoding {encoding!r} is not 'hex' or 'base64'")


def _hash_for(algorithm: str, key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    parts = algorithm.split("-") if isinstance(algorithm, str) else []
    if len(parts) != 3 or parts[0] != "ECDSA" or parts[1] not in _CURVES or parts[2] not in _HASHES:
        raise OcmfFormatError(f"signature algorithm {algorithm!r} is not supported")
    if _CURVES[parts[1]] != key.curve.name:
        raise SignatureInvalid(
            f"signature algorithm {algorithm} does not fit the public key's curve {key.curve.name}"
        )
    return _HASHES[parts[2]]()


def _der_tlv(buf: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    if pos + 2 > len(buf) or buf[pos] != tag:
        raise ValueError("unexpected tag")
    length, pos = buf[pos + 1], pos + 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 2 or pos + n > len(buf):
            raise ValueError("bad length")
        length, pos = int.from_bytes(buf[pos : pos + n], "big"), pos + n
    if pos + length > len(buf):
        raise ValueError("truncated")
    return buf[pos : pos + length], pos + length


def normalize_der_signature(signature: bytes) -> bytes | None:
    """Strict DER of an ECDSA signature whose INTEGERs carry superfluous leading zero bytes.

    Some Iskra meter firmware pads r/s this way, and strict DER parsers (OpenSSL, hence
    `cryptography` and pyocmf) then reject an otherwise valid signature. Returns None if the
    bytes are not SEQUENCE{INTEGER r, INTEGER s} with positive r and s.
    """
    try:
        seq, end = _der_tlv(signature, 0, 0x30)
        r_raw, pos = _der_tlv(seq, 0, 0x02)
        s_raw, pos2 = _der_tlv(seq, pos, 0x02)
    except ValueError:
        return None
    if end != len(signature) or pos2 != len(seq) or not r_raw or not s_raw:
        return None
    if r_raw[0] & 0x80 or s_raw[0] & 0x80:  # negative: corruption, not padding
        return None
    r, s = int.from_bytes(r_raw, "big"), int.from_bytes(s_raw, "big")
    if r == 0 or s == 0:
        return None
    return encode_dss_signature(r, s)


def verify(record: str | OcmfRecord, public_key: str | bytes | PublicKeyLike) -> Verification:
    """Verify a record's signature over its exact payload bytes; return it as `Verification`.

    `public_key` is hex or base64 DER SubjectPublicKeyInfo, DER bytes, or a key object. A DER
    signature with superfluous leading zeros is retried normalized, and that is reported in
    `der_normalized`. Raises `SignatureInvalid` if it does not verify, `OcmfFormatError`
    if the record cannot be read, ValueError for an unusable public key.
    """
    rec = parse(record) if isinstance(record, str) else record
    key = load_public_key(public_key)
    algorithm = ec.ECDSA(_hash_for(rec.algorithm, key))
    signature = _signature_bytes(rec)
    data = rec.payload_json.encode("utf-8")
    try:
        key.verify(signature, data, algorithm)
        return Verification(rec, der_normalized=False)
    except InvalidSignature:
        pass
    strict = normalize_der_signature(signature)
    if strict is not None and strict != signature:
        try:
            key.verify(strict, data, algorithm)
            return Verification(rec, der_normalized=True)
        except InvalidSignature:
            pass
    hint = ""
    if strict is None and len(signature) in (48, 64, 96, 132):
        hint = " (the signature is not DER; it looks like a raw r||s pair)"
    raise SignatureInvalid(f"record PG {rec.payload.get('PG')}: signature does not verify{hint}")


def passthrough_meter_record(
    text: str, meter_public_key: str | bytes | PublicKeyLike, *, meter_serial: str | None = None
) -> Verification:
    """Verify a record a signing meter produced and hand it on unchanged (`.text is text`).

    The meter's bytes are never re-serialized: re-encoding would break its signature. If
    `meter_serial` is given, MS must match it. A non-minimal DER signature (Iskra quirk) is
    accepted after normalization for verification only, logged, and flagged in
    `der_normalized`; strict verifiers such as pyocmf will still reject that record.
    """
    result = verify(text, meter_public_key)
    if meter_serial is not None and result.record.meter_serial != meter_serial:
        raise OcmfFormatError(
            f"record is from meter {result.record.meter_serial!r}, expected {meter_serial!r}"
        )
    if result.der_normalized:
        log.warning(
            "ocmf.meter_signature_not_strict_der",
            meter=result.record.meter_serial,
            pg=result.record.payload.get("PG"),
            detail="leading zeros in r/s; verified after normalizing, passed on unchanged",
        )
    return result
