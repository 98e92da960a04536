"""A meter that signs its own OCMF readings over Modbus (Iskra WM3M4C and alike).

The register layout is the profile's `[signing]` table (drivers/profiles/*.toml); the
sequence is the manual's: check the measurement state, set the meter's clock, write the OCMF
input dataset and its length, write the command (an OCMF TX letter in the high byte), poll
the signature status until OK, then read the signed dataset and its DER signature. The
result is passed on as `OCMF|{signed dataset}|{"SD":"<hex>"}` — byte for byte what the meter
signed; the meter's signature bytes are kept as they are, even when not strict DER.

    meter = OcmfSigningMeter(device)
    record = await meter.transact("B", dataset_json, datetime.now(UTC))
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import structlog

from drivers.codec import bytes_to_words, words_to_bytes
from drivers.device import Device
from drivers.profile import OcmfSigning

log = structlog.get_logger(__name__)

# DER SubjectPublicKeyInfo header of an uncompressed secp256r1 point (RFC 5480); the meter
# serves only the raw X||Y (EVerest's PUBLIC_KEY_PREFIX, Iskra manual 6.5.14).
P256_SPKI_PREFIX = bytes.fromhex("3059301306072A8648CE3D020106082A8648CE3D030107034200")
IDLE = 0


class SigningMeterError(RuntimeError):
    """The meter refused or failed a signing command; the message says which and why."""


class OcmfSigningMeter:
    """Drives the signing registers of one meter (see the module docstring)."""

    def __init__(self, device: Device, *, poll_s: float = 0.05, timeout_s: float = 5.0):
        if device.profile.signing is None:
            raise ValueError(f"profile {device.profile.name} has no [signing] registers")
        self.device = device
        self.spec: OcmfSigning = device.profile.signing
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._public_key: str | None = None

    @property
    def name(self) -> str:
        """The device name."""
        return self.device.name

    # ------------------------------------------------------------------ registers

    async def _read(self, address: int, count: int) -> list[int]:
        out: list[int] = []
        step = self.spec.max_registers
        for a in range(address, address + count, step):
            n = min(step, address + count - a)
            words = await self.device.link.read("holding", a, n, self.device.unit)
            out.extend(int(w) for w in words)
        return out

    async def _write(self, address: int, words: list[int]) -> None:
        step = self.spec.max_registers
        for k in range(0, len(words), step):
            chunk = words[k : k + step]
            await self.device.link.write("holding", address + k, chunk, self.device.unit)

    async def _bytes(self, length_address: int, data_address: int) -> bytes:
        (length,) = await self._read(length_address, 1)
        words = await self._read(data_address, (length + 1) // 2) if length else []
        return words_to_bytes(words, "big")[:length]

    # ------------------------------------------------------------------ public API

    async def state(self) -> int:
        """The measurement state: 0 idle, 1 active, 2 after power failure, 3 after reset."""
        return (await self._read(self.spec.state, 1))[0]

    async def public_key_hex(self) -> str:
        """The meter's public key as DER SubjectPublicKeyInfo hex (read once, then cached)."""
        if self._public_key is None:
            raw = words_to_bytes(
                await self._read(self.spec.public_key, self.spec.public_key_words), "big"
            )
            if len(raw) != 64 or not any(raw):
                raise SigningMeterError(
                    f"{self.name}: public key registers hold no secp256r1 key ({raw[:8].hex()}…)"
                )
            self._public_key = (P256_SPKI_PREFIX + b"\x04" + raw).hex().upper()
        return self._public_key

    async def transact(self, tx: str, dataset: str, now: datetime) -> str:
        """Send one OCMF command (`tx`: B, E, L, R, A, P, C, T, …) with the input dataset and
        return the meter's signed record. SigningMeterError if the meter refuses or fails."""
        spec = self.spec
        data = dataset.encode("ascii")
        if len(data) > spec.max_dataset_bytes:
            raise SigningMeterError(
                f"{self.name}: OCMF dataset is {len(data)} bytes, the meter takes "
                f"{spec.max_dataset_bytes}"
            )
        state = await self.state()
        if tx == spec.begin and state != IDLE:
            # A transaction left open (agent restart, power loss): close it as aborted first,
            # the meter accepts a begin only when idle.
            log.warning("meter.signing_stale_transaction", meter=self.name, state=state)
            await self._command("A", data, now)
        elif tx != spec.begin and state == IDLE:
            raise SigningMeterError(f"{self.name}: no transaction open in the meter for {tx!r}")
        return await self._command(tx, data, now)

    async def _command(self, tx: str, data: bytes, now: datetime) -> str:
        spec = self.spec
        offset = now.utcoffset()
        if offset is None:
            raise ValueError("the meter clock needs a timezone-aware time")
        epoch = int(now.timestamp())
        await self._write(spec.time, [epoch >> 16 & 0xFFFF, epoch & 0xFFFF])
        await self._write(spec.timezone, [int(offset.total_seconds() // 60) & 0xFFFF])
        await self._write(spec.time_status, [spec.time_synchronized])
        await self._write(spec.algorithm, [spec.algorithm_value])
        await self._write(spec.dataset, bytes_to_words(data + b"\0" * (len(data) % 2), "big"))
        await self._write(spec.dataset_length, [len(data)])
        await self._write(spec.command, [ord(tx) << 8])
        await self._wait_signed(tx)
        payload = (await self._bytes(spec.output_length, spec.output)).decode("ascii")
        signature = await self._bytes(spec.signature_length, spec.signature)
        log.info("meter.signed", meter=self.name, tx=tx, bytes=len(payload))
        return f'OCMF|{payload}|{{"SD":"{signature.hex().upper()}"}}'

    async def _wait_signed(self, tx: str) -> None:
        spec = self.spec
        deadline = time.monotonic() + self.timeout_s
        while True:
            (status,) = await self._read(spec.status, 1)
            if status == spec.status_ok:
                return
            if status not in spec.status_busy:
                why = spec.status_errors.get(status, "unknown status")
                raise SigningMeterError(f"{self.name}: command {tx!r}: status {status} ({why})")
            if time.monotonic() > deadline:
                raise SigningMeterError(
                    f"{self.name}: command {tx!r}: not signed within {self.timeout_s} s "
                    f"(status {status})"
                )
            await asyncio.sleep(self.poll_s)
