"""The OCMF signing registers of a simulated meter (Iskra WM3M4C), laid out by the profile's
`[signing]` table and behaving like the manual describes (drivers/profiles/iskra-wm3m4c.toml).

The agent writes the clock, the input dataset and a command (OCMF TX letter in the high
byte); the meter fills in vendor, model, serial, firmware, pagination and its own reading of
the import register, signs the dataset with its secp256r1 key (ECDSA, SHA-256) and serves the
signed JSON, its DER signature and its public key. Signing takes `sign_delay_s` of wall time
(status 2 meanwhile, then 15). Refusals use the manual's status codes: 128 clock not set,
130 unknown command, 131 command not valid in this state, 252/253 bad dataset.

`der`: "device" encodes r and s like the firmware does — always at least 32 bytes, so a
value below 2^248 keeps a superfluous leading zero (not strict DER, ~1 signature in 128);
"strict" encodes canonical DER; "padded" re-signs until the quirk shows (for tests).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pymodbus.constants import ExcCodes

from agent.billing.ocmf import OBIS_IMPORT_ENERGY, format_time
from drivers.codec import bytes_to_words, words_to_bytes
from drivers.profile import OcmfSigning

IDLE, ACTIVE = 0, 1
BUSY = 2
BAD_TIME, BAD_COMMAND, BAD_STATE, BAD_FORMAT, BAD_SIZE = 128, 130, 131, 252, 253
OUTPUT_BYTES = 1024  # 7612..8123: the public key follows at 8124
SIGNATURE_BYTES = 74  # DER of two 33-byte integers
DerStyle = Literal["device", "strict", "padded"]
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def meter_key(seed: object, name: str) -> ec.EllipticCurvePrivateKey:
    """A reproducible secp256r1 key per simulated meter (the real one is made in its chip)."""
    digest = hashlib.sha256(f"{seed}:{name}:ocmf-key".encode()).digest()
    return ec.derive_private_key(
        int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1()
    )


def _integer(v: int, minimal: bool) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 7) // 8) if minimal else 32, "big")
    if body[0] & 0x80:
        body = b"\x00" + body
    return b"\x02" + bytes([len(body)]) + body


def der_signature(signature: bytes, minimal: bool) -> bytes:
    """Re-encode a DER ECDSA signature: canonical, or with r and s at least 32 bytes long."""
    r, s = decode_dss_signature(signature)
    seq = _integer(r, minimal) + _integer(s, minimal)
    return b"\x30" + bytes([len(seq)]) + seq


class SimSigningMeter:
    """Holding registers of the signing protocol; DeviceImage routes their addresses here."""

    def __init__(
        self,
        spec: OcmfSigning,
        *,
        key: ec.EllipticCurvePrivateKey,
        identity: Callable[[], dict[str, str]],
        energy_wh: Callable[[], int],
        sign_delay_s: float = 0.15,
        der: DerStyle = "device",
    ):
        self.spec = spec
        self.key = key
        self.identity = identity  # MV, MM, MS, MF as the meter knows itself
        self.energy_wh = energy_wh
        self.sign_delay_s = sign_delay_s
        self.der = der
        self.pagination = 0
        self.signed: list[str] = []  # every payload signed, in order (tests look at them)
        self._begin: dict | None = None
        self._ready_at = 0.0
        self._clock: tuple[int, float] | None = None  # (epoch written, wall time then)
        self._words: dict[int, int] = {}
        self._writable: set[int] = set()
        s = spec
        for a in (s.state, s.command, s.status, s.timezone, s.time_status, s.algorithm):
            self._words[a] = 0
        for a in (s.time, s.time + 1, s.dataset_length, s.output_length, s.signature_length):
            self._words[a] = 0
        for base, n in (
            (s.dataset, (s.max_dataset_bytes + 1) // 2),
            (s.output, OUTPUT_BYTES // 2),
            (s.signature, SIGNATURE_BYTES // 2),
        ):
            self._words.update(dict.fromkeys(range(base, base + n), 0))
        raw = key.public_key().public_numbers()
        xy = raw.x.to_bytes(32, "big") + raw.y.to_bytes(32, "big")
        self._words.update(
            zip(range(s.public_key, s.public_key + 32), bytes_to_words(xy, "big"), strict=True)
        )
        self._writable = {s.command, s.timezone, s.time, s.time + 1, s.time_status, s.algorithm}
        self._writable |= {
            s.dataset_length,
            *range(s.dataset, s.dataset + (s.max_dataset_bytes + 1) // 2),
        }
        self._words[s.status] = 1  # idle, nothing signed yet

    # ------------------------------------------------------------------ Modbus side

    def claims(self, fn: str, address: int, count: int) -> bool:
        """True if the request addresses the signing registers (holding table)."""
        return fn == "holding" and address in self._words

    def read(self, address: int, count: int) -> list[int] | ExcCodes:
        """Serve FC03: at most max_registers, only addresses the meter has."""
        if count > self.spec.max_registers:
            return ExcCodes.ILLEGAL_VALUE
        if any(a not in self._words for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return self.peek(address, count)

    def peek(self, address: int, count: int) -> list[int]:
        """The words as they are now (status turns OK once signing is done)."""
        if self._words[self.spec.status] == BUSY and time.monotonic() >= self._ready_at:
            self._words[self.spec.status] = self.spec.status_ok
        return [self._words.get(a, 0) for a in range(address, address + count)]

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        """Serve FC06/FC16: clock, dataset and its length, algorithm, command."""
        if len(values) > self.spec.max_registers:
            return ExcCodes.ILLEGAL_VALUE
        span = range(address, address + len(values))
        if any(a not in self._writable for a in span):
            return ExcCodes.ILLEGAL_ADDRESS
        self._words.update(zip(span, (int(v) & 0xFFFF for v in values), strict=True))
        s = self.spec
        if s.time in span or s.time + 1 in span:
            epoch = self._words[s.time] << 16 | self._words[s.time + 1]
            self._clock = (epoch, time.time())
        if s.command in span:
            self._command(chr(self._words[s.command] >> 8))
        return None

    # ------------------------------------------------------------------ the meter

    def _now(self) -> datetime:
        epoch, at = self._clock or (0, time.time())
        minutes = self._words[self.spec.timezone]
        minutes = minutes - 0x10000 if minutes & 0x8000 else minutes
        t = datetime.fromtimestamp(epoch + (time.time() - at), UTC)
        return t.astimezone(timezone(timedelta(minutes=minutes)))

    def _command(self, letter: str) -> None:
        s = self.spec
        state = self._words[s.state]
        ends = set(s.ends) | {"r"}
        if letter not in {s.begin, *ends, "C", "X", "T", "S"}:
            self._words[s.status] = BAD_COMMAND
            return
        if (letter == s.begin) != (state == IDLE):
            self._words[s.status] = BAD_STATE
            return
        if self._clock is None or self._words[s.time_status] != s.time_synchronized:
            self._words[s.status] = BAD_TIME
            return
        length = self._words[s.dataset_length]
        if not 0 < length <= s.max_dataset_bytes:
            self._words[s.status] = BAD_SIZE
            return
        words = [self._words[a] for a in range(s.dataset, s.dataset + (length + 1) // 2)]
        try:
            dataset = json.loads(words_to_bytes(words, "big")[:length].decode("ascii"))
            if not isinstance(dataset, dict):
                raise ValueError("not an object")
        except ValueError:
            self._words[s.status] = BAD_FORMAT
            return
        reading = {
            "TM": format_time(self._now(), "S"),
            "TX": "E" if letter == "r" else letter,
            "RV": self.energy_wh() / 1000,
            "RI": OBIS_IMPORT_ENERGY,
            "RU": "kWh",
            "RT": "AC",
            "EF": "",
            "ST": "G",
        }
        if letter == s.begin:
            self._begin = reading
        readings = [self._begin, reading] if letter == "r" and self._begin else [reading]
        self.pagination += 1
        dataset.update(self.identity())
        dataset["PG"] = f"T{self.pagination}"
        dataset["RD"] = readings
        payload = json.dumps(dataset, separators=(",", ":"))
        if len(payload) > OUTPUT_BYTES:
            self._words[s.status] = BAD_SIZE
            return
        self._serve(s.output_length, s.output, payload.encode("ascii"))
        self._serve(s.signature_length, s.signature, self._sign(payload.encode("ascii")))
        self.signed.append(payload)
        self._words[s.state] = ACTIVE if letter == s.begin else IDLE if letter in ends else state
        self._words[s.status] = BUSY
        self._ready_at = time.monotonic() + self.sign_delay_s

    def _sign(self, payload: bytes) -> bytes:
        while True:
            der = self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
            out = der_signature(der, minimal=self.der == "strict")
            if self.der != "padded" or out != der_signature(der, minimal=True):
                return out

    def _serve(self, length_address: int, address: int, data: bytes) -> None:
        self._words[length_address] = len(data)
        words = bytes_to_words(data + b"\0" * (len(data) % 2), "big")
        self._words.update(zip(range(address, address + len(words)), words, strict=True))
