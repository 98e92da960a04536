"""Typed events carried on the agent bus. Producers don't know consumers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Literal, NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """Timezone-aware current UTC time (the only clock events use)."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every bus event: immutable, UTC-stamped."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ts: AwareDatetime = Field(default_factory=utcnow)


class Quality(StrEnum):
    """How far a reading can be trusted."""

    GOOD = "good"
    NOT_AVAILABLE = "not_available"  # the device said it has no value (ABB 0xFFFF...)


class Reading(Event):
    """One decoded value of one device, as read at `ts` (never re-stamped)."""

    device: str
    quantity: str
    value: float | int | str | bool | None
    unit: str = ""
    quality: Quality = Quality.GOOD

    def samples(self) -> tuple[Reading]:
        """The values this event carries, one per quantity (here: itself)."""
        return (self,)


Value = float | int | str | bool | None


class Sample(NamedTuple):
    """One value of a DeviceReadings: the attributes of a Reading, as a plain tuple."""

    device: str
    quantity: str
    value: Value
    unit: str
    quality: Quality
    ts: datetime

    def reading(self) -> Reading:
        """The same value as a Reading (for output that serialises events)."""
        return Reading(**self._asdict())


class DeviceReadings(Event):
    """Every value one device cycle read, stamped with the read time (never re-stamped).

    The poller publishes one per cycle rather than a Reading per value: the bus, pydantic
    and every consumer then pay per cycle, not per value (issue 16). `samples()` gives the
    values one by one with a Reading's attributes; a None value is not available.
    """

    device: str
    values: dict[str, Value]
    units: dict[str, str] = Field(default_factory=dict, description="quantity -> unit")

    @cached_property
    def _samples(self) -> tuple[Sample, ...]:
        units, ts, dev = self.units, self.ts, self.device
        good, na = Quality.GOOD, Quality.NOT_AVAILABLE
        return tuple(
            Sample(dev, q, v, units.get(q, ""), na if v is None else good, ts)
            for q, v in self.values.items()
        )

    def samples(self) -> tuple[Sample, ...]:
        """The values, one per quantity (computed once, shared by every consumer)."""
        return self._samples


# What a consumer of device values subscribes to: the poller publishes DeviceReadings;
# single Readings still come from tests, replays and tools.
READINGS: tuple[type[Event], ...] = (Reading, DeviceReadings)


class HealthState(StrEnum):
    """Device communication state. Stale is a state, not a reading."""

    UNKNOWN = "unknown"  # not polled yet
    OK = "ok"
    DEGRADED = "degraded"  # answers, but some reads fail (exceptions, bad frames)
    OFFLINE = "offline"  # consecutive failures past the threshold; its values are stale


class DeviceHealth(Event):
    """Communication health of one device, published after every poll cycle that changes it."""

    device: str
    bus: str
    state: HealthState
    last_good: AwareDatetime | None = None
    latency_ms: float | None = None
    consecutive_failures: int = 0
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: dict[int, int] = Field(default_factory=dict, description="Modbus code -> count")
    last_error: str | None = None


class SessionEvent(Event):
    """A connector's status changed, or its session started, progressed or stopped.

    `kind`: status | started | progress | stopped | rejected | resumed. Tokens never travel
    on the bus in clear: `id_tag` is masked. Money is Decimal (None: not priced / unknown).
    """

    connector: int
    status: str
    kind: str
    session_id: str | None = None
    id_tag: str | None = None
    method: str | None = None
    reason: str | None = None
    energy_wh: int | None = None
    power_w: float | None = None
    cost_excl_vat: Decimal | None = None
    cost_incl_vat: Decimal | None = None
    currency: str | None = None
    detail: str = ""


class ChargeRecordWritten(Event):
    """A session's charge record is committed (signed, chained): the outbox's trigger."""

    record_id: str
    session_id: str
    connector: int
    seq: int
    hash: str
    energy_wh: int
    total_excl_vat: Decimal | None = None
    total_incl_vat: Decimal | None = None
    currency: str | None = None
    stop_reason: str
    review: bool = False


class Evidence(BaseModel):
    """One figure a fault was raised on: a reading, a health counter, a threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # "meter1.voltage_l1", "health.meter1.state", "delta(meter1.energy_import_wh, 30s)"
    value: float | int | str | bool | None
    unit: str = ""
    device: str | None = None
    ts: AwareDatetime | None = None  # when the device measured it (None: derived or config)


class FaultCodes(BaseModel):
    """How a fault is reported upstream: OCPP 1.6 StatusNotification, MREC, OCPP 2.0.1."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    error_code: str  # OCPP 1.6 ChargePointErrorCode
    vendor_id: str = Field(max_length=255)
    vendor_error_code: str = Field(max_length=50)
    info: str = Field(max_length=50)
    mrec: str | None = None  # ChargeX CX001..CX026, also in vendor_error_code when set
    component: str  # OCPP 2.0.1 component, e.g. PowerContactor
    variable: str  # OCPP 2.0.1 variable, e.g. Problem


class Symptom(BaseModel):
    """A fault the root cause explains (suppressed: not raised on its own)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rule: str
    scope: str
    title: str


class FaultRaised(Event):
    """Diagnosis found a root cause. Texts are per language (en, de)."""

    fault_id: str
    rule: str
    scope: str  # "connector:1", "device:meter1", "bus:rs485", "station"
    title: dict[str, str]
    root_cause: dict[str, str]
    severity: str  # critical | error | warning | info
    connectors: list[int]
    devices: list[str]
    evidence: list[Evidence]
    confidence: float = Field(ge=0, le=1)
    codes: FaultCodes
    faulted: bool  # the connector(s) become Faulted; False: a warning
    driver_message: dict[str, str]
    technician_steps: dict[str, list[str]]
    explains: list[Symptom] = Field(default_factory=list)
    side: str = "unknown"  # charger | vehicle | unknown
    side_basis: str = ""
    # How it may clear (the rule's `clear`): condition | evidence | manual; with evidence,
    # the expression that must hold; latch: block | retry (None: it does not latch).
    clear: str = "condition"
    clear_evidence: str | None = None
    latch: str | None = None
    retries: int = 0


class FaultLatch(Event):
    """A raised fault that clears only on evidence or by hand changed its latch state.

    `state`: latched (its condition is over but the fault holds), retry (latch = retry: a new
    session may try now; its connectors are free until the condition comes back) or active
    (the condition is back). `faulted` and `title` as in the FaultRaised.
    """

    fault_id: str
    rule: str
    scope: str
    connectors: list[int]
    state: Literal["active", "latched", "retry"]
    faulted: bool
    title: dict[str, str]
    attempts: int = 0  # retries used
    retries: int = 0  # retries the rule allows (latch = retry)
    retry_at: AwareDatetime | None = None  # when the next retry is allowed


class FaultCleared(Event):
    """A raised fault is over: resolved (its condition ended), evidence (its clear_evidence
    held), manual (a technician cleared it: `by`, `note`), explained by another root cause,
    or retired."""

    fault_id: str
    rule: str
    scope: str
    connectors: list[int]
    devices: list[str]
    raised_ts: AwareDatetime
    reason: str  # resolved | evidence | manual | explained | retired
    explained_by: str | None = None  # fault_id of the root cause that now covers it
    detail: str = ""
    by: str | None = None  # manual: who cleared it (cli, api, mqtt, ocpp, ...)
    note: str = ""  # manual: the technician's note


class DriverMessage(Event):
    """What the driver at a connector should see now (agent/driver): every shipped language.

    `state`: the catalog state (a connector status, or Authorized); `level`: info | warning |
    error. `headline` and `lines` are keyed by language (`lang` is the station's default);
    the figures are raw for displays that draw their own. Published when it changes.
    """

    connector: int
    status: str
    state: str
    level: str
    lang: str
    headline: dict[str, str]
    lines: dict[str, list[str]]
    session_id: str | None = None
    energy_wh: int | None = None
    power_w: float | None = None
    cost: Decimal | None = None
    currency: str | None = None
    faults: list[str] = Field(default_factory=list)  # rule ids shown, driver-fixable first
    report_url: str | None = None  # the QR code's "report a problem" link


class TicketCreated(Event):
    """A driver's problem report became a ticket (agent/tickets); the body is in the store."""

    ticket_id: str
    station: str
    connector: int
    source: str  # display | qr | cli | api
    category: str
    lang: str
    session_id: str | None = None
    faults: list[str] = Field(default_factory=list)  # fault ids active when reported
