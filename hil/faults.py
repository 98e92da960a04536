"""Fault injection: what can go wrong, as validated requests, and the bookkeeping of active faults.

A fault request names one kind and one target (a device by name, or a connector by id) and
the kind's parameters. The station resolves the target and applies the fault; this module
only defines the requests, their families, the canonical EVSE fault each maps to, and the
byte-level frame mangling used by the servers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pymodbus.constants import ExcCodes
from pymodbus.framer.rtu import FramerRTU

from drivers.profile import Profile


class FaultError(ValueError):
    """A fault request is invalid or cannot apply to its target; the message says why."""


COMM_FAULTS = frozenset({"no_response", "exception", "garbage", "truncated", "crc_error", "slow"})
SUPPLY_FAULTS = frozenset(
    {"voltage_loss", "voltage_sag", "voltage_swell", "supply_outage", "frequency_deviation"}
)
ENERGY_FAULTS = frozenset({"energy_frozen", "energy_backwards", "energy_jump"})

# EVSE faults and the canonical fault (quantities.EVSE_FAULTS) whose vendor code they raise.
EVSE_FAULT_CODES: dict[str, str] = {
    "cp_state_e": "pilot_short",
    "cp_state_f": "evse_unavailable",
    "welded_contactor": "contactor_fault",
    "contactor_stuck_open": "contactor_fault",
    "over_temperature": "overtemperature",
    "rcd_trip": "rcd_dc",
    "lock_failure": "lock_failure",
    "diode_fault": "diode_missing",
    "ev_overcurrent": "overcurrent",
}
# evse_error_code forces the controller's raw vendor code (any code, mapped or not).
EVSE_FAULT_KINDS = frozenset(EVSE_FAULT_CODES) | {"evse_error_code"}
VALUE_FAULTS = frozenset({"not_available"})

_EXC_CODES = sorted(int(c) for c in ExcCodes)


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = Field(default=None, description="target device name")
    connector: int | None = Field(default=None, description="target connector id")

    @model_validator(mode="after")
    def _one_target(self) -> _Fault:
        if (self.device is None) == (self.connector is None):
            raise ValueError("give exactly one target: device (name) or connector (id)")
        return self

    @property
    def target(self) -> str:
        """Human-readable target, e.g. 'device meter1' or 'connector 1'."""
        return f"device {self.device}" if self.device is not None else f"connector {self.connector}"


class NoResponse(_Fault):
    """Device is silent: requests time out."""

    kind: Literal["no_response"]


class ExceptionFault(_Fault):
    """Device answers with exception `code` (every request, or an address range)."""

    kind: Literal["exception"]
    code: int = Field(description="Modbus exception code")
    function: Literal["coil", "discrete", "holding", "input"] | None = Field(
        default=None, description="only requests to this table (default: all)"
    )
    first: int | None = Field(default=None, ge=0, le=0xFFFF, description="range start")
    last: int | None = Field(default=None, ge=0, le=0xFFFF, description="range end, inclusive")

    @model_validator(mode="after")
    def _check(self) -> ExceptionFault:
        if self.code not in _EXC_CODES:
            raise ValueError(f"code must be a Modbus exception code {_EXC_CODES}, got {self.code}")
        if (self.first is None) != (self.last is None):
            raise ValueError("an address range needs both first and last")
        if self.first is not None and self.last is not None and self.last < self.first:
            raise ValueError(f"last ({self.last}) is before first ({self.first})")
        return self

    def hits(self, table: str, start: int, count: int) -> bool:
        """True if a request to `table` for [start, start+count) falls under this fault."""
        if self.function is not None and table != self.function:
            return False
        if self.first is None or self.last is None:
            return True
        return start <= self.last and start + count - 1 >= self.first


class Garbage(_Fault):
    """Random bytes instead of the response."""

    kind: Literal["garbage"]


class Truncated(_Fault):
    """Response cut short: the poller times out waiting for the rest."""

    kind: Literal["truncated"]


class CrcError(_Fault):
    """RTU only: last byte of the response flipped, the CRC check fails."""

    kind: Literal["crc_error"]


class Slow(_Fault):
    """Response delayed by `delay_s` seconds."""

    kind: Literal["slow"]
    delay_s: float = Field(gt=0, le=60)


class VoltageLoss(_Fault):
    """Phase `phase` reads 0 V and carries no current."""

    kind: Literal["voltage_loss"]
    phase: Literal[1, 2, 3]


class VoltageSag(_Fault):
    """Voltage of `phase` (all if omitted) lowered by `volts`."""

    kind: Literal["voltage_sag"]
    phase: Literal[1, 2, 3] | None = Field(default=None, description="default: all phases")
    volts: float = Field(gt=0, le=400, description="how far the voltage drops")


class VoltageSwell(_Fault):
    """Voltage of `phase` (all if omitted) raised by `volts`."""

    kind: Literal["voltage_swell"]
    phase: Literal[1, 2, 3] | None = Field(default=None, description="default: all phases")
    volts: float = Field(gt=0, le=400, description="how far the voltage rises")


class SupplyOutage(_Fault):
    """All phases 0 V, no current; the meter still answers."""

    kind: Literal["supply_outage"]


class FrequencyDeviation(_Fault):
    """Supply frequency off nominal by `hz` (island grid, generator)."""

    kind: Literal["frequency_deviation"]
    hz: float = Field(ge=-10, le=10, description="offset from nominal, Hz")

    @model_validator(mode="after")
    def _nonzero(self) -> FrequencyDeviation:
        if self.hz == 0:
            raise ValueError("hz must not be 0")
        return self


class NotAvailable(_Fault):
    """The device serves its "not available" marker for `quantity` (ABB 0xFFFF...)."""

    kind: Literal["not_available"]
    quantity: str


class EnergyFrozen(_Fault):
    """Energy registers stop counting (the true counter goes on)."""

    kind: Literal["energy_frozen"]


class EnergyBackwards(_Fault):
    """Energy registers read `wh` lower than the true counter."""

    kind: Literal["energy_backwards"]
    wh: int = Field(gt=0, le=10**9)


class EnergyJump(_Fault):
    """Energy registers read `wh` higher than the true counter."""

    kind: Literal["energy_jump"]
    wh: int = Field(gt=0, le=10**9)


class CpStateE(_Fault):
    """Control pilot shorted (IEC 61851 state E), charging stops."""

    kind: Literal["cp_state_e"]


class CpStateF(_Fault):
    """EVSE unavailable (IEC 61851 state F), charging stops."""

    kind: Literal["cp_state_f"]


class WeldedContactor(_Fault):
    """Contactor stays closed when commanded open: current keeps flowing."""

    kind: Literal["welded_contactor"]
    ev_keeps_drawing: bool = Field(
        default=True,
        description="the car keeps the pilot in C and draws on after the PWM goes off "
        "(its supply never went away); false: it obeys, goes to B and stops drawing",
    )


class ContactorStuckOpen(_Fault):
    """Contactor will not close: state C, no current."""

    kind: Literal["contactor_stuck_open"]


class OverTemperature(_Fault):
    """EVSE temperature at `temperature_c`; from 80 °C the controller stops charging."""

    kind: Literal["over_temperature"]
    temperature_c: float = Field(default=85.0, ge=-40, le=200)


class RcdTrip(_Fault):
    """Residual current device tripped: state F, no current."""

    kind: Literal["rcd_trip"]


class LockFailure(_Fault):
    """Connector lock failed: the EVSE will not start charging."""

    kind: Literal["lock_failure"]


class DiodeFault(_Fault):
    """EV's CP diode missing: the EVSE will not start charging."""

    kind: Literal["diode_fault"]


class EvseErrorCode(_Fault):
    """The EVSE controller reports raw vendor error `code` (whatever its profile says)."""

    kind: Literal["evse_error_code"]
    code: int = Field(ge=0, le=0xFFFFFFFF)


class EvOvercurrent(_Fault):
    """EV draws `current_a` per phase whatever is offered; EVSE trips after 5 s."""

    kind: Literal["ev_overcurrent"]
    current_a: float = Field(gt=0, le=100, description="what the EV draws per phase")


FaultRequest = Annotated[
    NoResponse
    | ExceptionFault
    | Garbage
    | Truncated
    | CrcError
    | Slow
    | VoltageLoss
    | VoltageSag
    | VoltageSwell
    | SupplyOutage
    | FrequencyDeviation
    | NotAvailable
    | EnergyFrozen
    | EnergyBackwards
    | EnergyJump
    | CpStateE
    | CpStateF
    | WeldedContactor
    | ContactorStuckOpen
    | OverTemperature
    | RcdTrip
    | LockFailure
    | DiodeFault
    | EvOvercurrent
    | EvseErrorCode,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(FaultRequest)

# What each kind does, for `list_faults` and error messages: the request classes' docstrings.
FAULT_DOCS: dict[str, str] = {
    cls.model_fields["kind"].annotation.__args__[0]: (cls.__doc__ or "").strip()
    for cls in get_args(get_args(FaultRequest)[0])
}


def format_validation_error(err: ValidationError, where: str = "") -> str:
    """One line per problem: `field: message`, with pydantic's jargon trimmed."""
    lines = []
    for e in err.errors():
        # Drop the union tag pydantic puts first (`exception.code` -> `code`).
        loc = [str(p) for p in e["loc"]]
        if loc and loc[0] in FAULT_DOCS:
            loc = loc[1:]
        path = ".".join([where, *loc] if where else loc) or "(fault)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg = f"unknown fault kind {e['input'].get('kind')!r}; known: {', '.join(FAULT_DOCS)}"
        elif e["type"] == "union_tag_not_found":
            msg = f"'kind' is required; one of: {', '.join(FAULT_DOCS)}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown parameter for this fault kind"
        elif e["type"] == "missing":
            msg = "required"
        lines.append(f"{path}: {msg}")
    return "\n".join(lines)


def parse_fault(data: dict[str, Any] | str) -> FaultRequest:
    """Validate a fault request (dict or JSON text); FaultError lists every problem."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise FaultError(f"fault request is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise FaultError("a fault request is an object with 'kind' and a target")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise FaultError(format_validation_error(e)) from None


def vendor_error_code(profile: Profile, canonical: str) -> int | None:
    """The profile's lowest vendor error code meaning `canonical`, or None if it has none."""
    codes = [c for c, meaning in profile.error_codes.items() if meaning.fault == canonical]
    return min(codes) if codes else None


@dataclass
class ActiveFault:
    """An injected fault: its id, the request, the devices it was resolved to, and any
    state captured when it was injected (e.g. the energy values a freeze holds)."""

    id: str
    request: Any  # one of the FaultRequest models
    devices: tuple[str, ...]
    connector: int | None
    since_s: float
    captured: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The fault kind, e.g. 'no_response'."""
        return self.request.kind

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for snapshots and the control interface."""
        return {
            "id": self.id,
            **self.request.model_dump(exclude_none=True),
            "devices": list(self.devices),
            "since_s": round(self.since_s, 3),
        }


class FaultSet:
    """The active faults of a station, in injection order."""

    def __init__(self) -> None:
        self._faults: dict[str, ActiveFault] = {}
        self._next = 1

    def new_id(self) -> str:
        """A fresh fault id ('f1', 'f2', ...); ids are never reused within a run."""
        fid = f"f{self._next}"
        self._next += 1
        return fid

    def add(self, fault: ActiveFault) -> None:
        """Make `fault` active."""
        self._faults[fault.id] = fault

    def remove(self, fault_id: str) -> ActiveFault:
        """Remove one fault; FaultError naming the active ids if there is no such fault."""
        try:
            return self._faults.pop(fault_id)
        except KeyError:
            active = ", ".join(self._faults) or "none"
            raise FaultError(f"no active fault {fault_id!r}; active: {active}") from None

    def clear(self) -> list[ActiveFault]:
        """Remove every fault; returns them."""
        gone = list(self._faults.values())
        self._faults.clear()
        return gone

    def active(self) -> list[ActiveFault]:
        """The active faults, oldest first."""
        return list(self._faults.values())

    def on_device(self, name: str, kinds: frozenset[str] | None = None) -> list[ActiveFault]:
        """Active faults resolved to device `name` (optionally of the given kinds)."""
        return [
            f
            for f in self._faults.values()
            if name in f.devices and (kinds is None or f.kind in kinds)
        ]

    def on_connector(self, cid: int, kinds: frozenset[str] | None = None) -> list[ActiveFault]:
        """Active faults resolved to connector `cid` (optionally of the given kinds)."""
        return [
            f
            for f in self._faults.values()
            if f.connector == cid and (kinds is None or f.kind in kinds)
        ]


# ------------------------------------------------------------- frame mangling (servers)


def garbage_frame(frame: bytes, rng: random.Random, rtu: bool) -> bytes:
    """Random bytes of the frame's length; on RTU never a frame that happens to check out."""
    out = rng.randbytes(len(frame))
    if rtu and len(out) >= 4:
        crc = FramerRTU.compute_CRC(out[:-2]).to_bytes(2, "big")
        if out[-2:] == crc:
            out = out[:-1] + bytes([out[-1] ^ 0xFF])
    return out


def truncate_frame(frame: bytes) -> bytes:
    """The first half of the frame: the poller waits for the rest until it times out."""
    return frame[: max(1, len(frame) // 2)]


def corrupt_crc(frame: bytes) -> bytes:
    """The frame with its last byte (CRC high byte on RTU) flipped."""
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])
