"""Device profiles: the register map of a meter or EVSE controller, as validated data.

A profile is a TOML file under drivers/profiles/. Adding a device model is adding a file;
nothing in the code names a vendor.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers import quantities, tomlfile

PROFILE_DIR = Path(__file__).parent / "profiles"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")  # a shipped profile's file stem

Function = Literal["input", "holding", "coil", "discrete"]
RegType = Literal["u16", "s16", "u32", "s32", "u64", "s64", "float32", "ascii", "bool", "t5", "t6"]
WordOrder = Literal["big", "little"]

# Registers each type occupies; ascii takes `count` from the register itself.
TYPE_WORDS: dict[str, int] = {
    "u16": 1, "s16": 1, "bool": 1, "u32": 2, "s32": 2, "float32": 2, "t5": 2, "t6": 2,
    "u64": 4, "s64": 4,
}  # fmt: skip


class ProfileError(ValueError):
    """A profile file is missing or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Register(_Strict):
    """One value in the device's register map, feeding one canonical quantity."""

    quantity: str
    function: Function
    address: int = Field(ge=0, le=0xFFFF, description="0-based protocol (PDU) address")
    type: RegType = "u16"
    count: int | None = Field(default=None, ge=1, le=125, description="registers, ascii only")
    word_order: WordOrder | None = None
    byte: Literal["low", "high"] | None = Field(
        default=None, description="use only one byte of a 16-bit register"
    )
    scale: float = 1.0
    unit: str = ""
    map: dict[int, str] | None = Field(default=None, description="raw value -> canonical word")
    not_available: list[int] = Field(default_factory=list, description="raw 'no value' markers")
    exponent_address: int | None = Field(
        default=None, description="s16 register holding a power-of-ten exponent for this value"
    )
    access: Literal["r", "w", "rw"] = "r"
    once: bool = Field(default=False, description="identity: read at connect, not every cycle")
    readback: str | None = Field(
        default=None, description="quantity to read back after a write (default: this one)"
    )
    note: str = ""

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, v: str) -> str:
        try:
            quantities.get(v)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Register:
        if self.quantity not in quantities.QUANTITIES:
            return self  # already reported by the field validator
        if self.type == "ascii" and self.count is None:
            raise ValueError("type ascii needs count (registers)")
        if self.type != "ascii" and self.count is not None:
            raise ValueError("count is only for type ascii")
        if self.function in ("coil", "discrete") and self.type != "bool":
            raise ValueError(f"function {self.function} carries bits: type must be bool")
        if self.byte is not None and self.type not in ("u16", "s16"):
            raise ValueError("byte selection needs a 16-bit type")
        q = quantities.get(self.quantity)
        if self.map is None and q.kind != "str" and self.unit != q.unit:
            raise ValueError(
                f"unit for {self.quantity} must be {q.unit!r} after scaling, got {self.unit!r}"
            )
        if q.kind == "bool" and self.map is not None and set(self.map.values()) - {"true", "false"}:
            raise ValueError(f'{self.quantity} is a flag: map raw values to "true" or "false"')
        if q.kind == "str" and self.type in ("float32", "t5", "t6", "bool") and self.map is None:
            raise ValueError(f"{self.quantity} is text: use ascii, an integer type, or a map")
        if "w" in self.access and self.function in ("input", "discrete"):
            raise ValueError(f"a {self.function} register cannot be written")
        return self

    @property
    def words(self) -> int:
        """Number of 16-bit registers (or bits) this value occupies."""
        return self.count if self.count is not None else TYPE_WORDS[self.type]

    @property
    def readable(self) -> bool:
        return "r" in self.access

    @property
    def writable(self) -> bool:
        return "w" in self.access


class ErrorCode(_Strict):
    """Meaning of one vendor error code of an EVSE controller."""

    text: str = Field(min_length=1, description="the vendor's wording")
    fault: str = Field(description="canonical fault, a key of quantities.EVSE_FAULTS")

    @field_validator("fault")
    @classmethod
    def _known_fault(cls, v: str) -> str:
        if v not in quantities.EVSE_FAULTS:
            raise ValueError(f"unknown fault {v!r}; known: {', '.join(quantities.EVSE_FAULTS)}")
        return v


class Limits(_Strict):
    """Device quirks that constrain how it may be read; the planner obeys them."""

    max_registers: int = Field(default=125, ge=1, le=125, description="per read request")
    max_bits: int = Field(default=2000, ge=1, le=2000, description="per coil/discrete read")
    max_gap: int = Field(default=8, ge=0, description="unused registers a block may span")
    single_value_reads: bool = Field(
        default=False, description="never read across value boundaries (Keba)"
    )
    delay_ms: int = Field(default=0, ge=0, description="pause before each request (Heidelberg)")


class OcmfSigning(_Strict):
    """A meter's OCMF signing registers (holding, FC03/06/16): a transaction protocol the
    agent drives (drivers/signing.py), not values it polls. Addresses are 0-based."""

    state: int = Field(ge=0, le=0xFFFF, description="0 idle, 1 active, 2/3 after power loss/reset")
    command: int = Field(ge=0, le=0xFFFF, description="command letter in the high byte")
    status: int = Field(ge=0, le=0xFFFF, description="signature status after a command")
    timezone: int = Field(ge=0, le=0xFFFF, description="s16 UTC offset in minutes")
    time: int = Field(ge=0, le=0xFFFE, description="u32 epoch seconds, high word first")
    time_status: int = Field(ge=0, le=0xFFFF, description="write time_synchronized after time")
    time_synchronized: int = 2
    algorithm: int = Field(ge=0, le=0xFFFF)
    algorithm_value: int = 0
    dataset_length: int = Field(ge=0, le=0xFFFF, description="bytes of the input dataset")
    dataset: int = Field(ge=0, le=0xFFFF, description="input dataset, ASCII JSON")
    max_dataset_bytes: int = Field(default=1024, ge=2)
    output_length: int = Field(ge=0, le=0xFFFF, description="bytes of the signed dataset")
    output: int = Field(ge=0, le=0xFFFF, description="signed dataset, ASCII JSON")
    signature_length: int = Field(ge=0, le=0xFFFF, description="bytes of the DER signature")
    signature: int = Field(ge=0, le=0xFFFF, description="DER signature, 2 bytes a register")
    public_key: int = Field(ge=0, le=0xFFFF, description="raw X||Y of the secp256r1 key")
    public_key_words: int = Field(default=32, ge=1, le=125)
    max_registers: int = Field(default=120, ge=1, le=123, description="per read or write")
    begin: str = Field(default="B", pattern="^[A-Za-z]$", description="OCMF TX of a begin")
    ends: str = Field(default="ELRAP", pattern="^[A-Za-z]+$", description="TX letters ending")
    status_ok: int = 15
    status_busy: list[int] = Field(default_factory=lambda: [0, 1, 2])
    status_errors: dict[int, str] = Field(default_factory=dict)


class Failsafe(_Strict):
    """A communication watchdog: unless `heartbeat` is written again within the timeout, the
    controller falls back to the current written to `current` (the agent may have died)."""

    heartbeat: str = Field(description="writable quantity rewritten periodically (the timeout)")
    current: str = Field(description="writable quantity holding the fallback current")
    every: float = Field(
        default=0.5, gt=0, lt=1, description="rewrite after this fraction of the timeout"
    )


class Profile(_Strict):
    """A device model: identity, read limits and register map."""

    name: str
    kind: Literal["meter", "evse"]
    manufacturer: str
    model: str
    sources: list[str] = Field(min_length=1, description="where the map comes from")
    default_unit: int = Field(default=1, ge=0, le=255)
    word_order: WordOrder = "big"
    limits: Limits = Limits()
    registers: list[Register] = Field(min_length=1)
    error_codes: dict[int, ErrorCode] = Field(
        default_factory=dict, description="evse_error_code value -> meaning"
    )
    signing: OcmfSigning | None = Field(default=None, description="OCMF signing registers")
    failsafe: Failsafe | None = Field(default=None, description="communication watchdog")

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: set[str] = set()
        for r in self.registers:
            if r.readable and r.quantity in seen:
                raise ValueError(f"quantity {r.quantity} is read from two registers")
            if r.readable:
                seen.add(r.quantity)
        for r in self.registers:
            if r.readback and r.readback not in seen:
                raise ValueError(
                    f"readback {r.readback} of {r.quantity} is not a readable quantity"
                )
        if self.failsafe is not None:
            writable = {r.quantity for r in self.registers if r.writable}
            for q in (self.failsafe.heartbeat, self.failsafe.current):
                if q not in writable:
                    raise ValueError(f"failsafe: {q} is not a writable quantity of this profile")
        return self

    def readable(self) -> list[Register]:
        """Registers polled every cycle."""
        return [r for r in self.registers if r.readable]

    def writable(self, quantity: str) -> Register:
        """The register to write `quantity` to, or ProfileError if this device has none."""
        for r in self.registers:
            if r.quantity == quantity and r.writable:
                return r
        raise ProfileError(f"profile {self.name} cannot write {quantity}")

    def order(self, reg: Register) -> WordOrder:
        """Effective word order of a register."""
        return reg.word_order or self.word_order


def _format_errors(where: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top)"
        lines.append(f"{where}: {path}: {e['msg']}")
    return "\n".join(lines)


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile file; ProfileError names the file and field on failure."""
    try:
        data = tomlfile.load(path)
    except tomlfile.TomlFileError as e:
        raise ProfileError(f"profile {e}") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(_format_errors(path.name, e)) from None


@cache
def load_profile(name: str) -> Profile:
    """Load a shipped profile by name (file stem), e.g. 'eastron-sdm630', or a profile
    file by path (a name ending in .toml: site-specific or simulator-only devices)."""
    if name.endswith(".toml"):
        return load_profile_file(Path(name))
    if not _NAME.fullmatch(name):
        raise ProfileError(
            f"profile {name[:80]!r}: not a shipped profile name (letters, digits, . _ -) "
            "nor a path ending in .toml"
        )
    path = PROFILE_DIR / f"{name}.toml"
    if not path.exists():
        raise ProfileError(f"unknown profile {name!r}; shipped: {', '.join(profile_names())}")
    profile = load_profile_file(path)
    if profile.name != name:
        raise ProfileError(f"{path.name}: name: must match the file name, got {profile.name!r}")
    return profile


def profile_names() -> list[str]:
    """Names of all shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
