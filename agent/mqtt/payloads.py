"""Every MQTT payload as a pydantic model: the wire contract with the cloud backend.

Outgoing messages share an envelope: `msg_id` (idempotency key: a message delivered twice
carries the same id), `stream` and `seq` (per stream, +1 per message, never reused: a gap
means a message was thinned or lost, a repeat is a duplicate), `station`, `ts` (UTC, when
the message was committed to the outbox). Incoming commands carry `id` (replay key) and
`expires`. JSON Schemas of all of them are generated into agent/mqtt/schemas/ (schema.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agent.diagnosis.clearing import ClearFaultInput
from agent.events import (
    DeviceHealth,
    DriverMessage,
    FaultCleared,
    FaultRaised,
    Quality,
    SessionEvent,
    TicketCreated,
)
from agent.kpi.model import KpiReport
from agent.ops import (
    CommandResult,
    DiagnoseReport,
    DiagnosticsBundle,
    FaultList,
    LimitResult,
    LocalListEntry,
    LocalListResult,
    ReportResult,
    StatusReport,
    TariffResult,
)
from agent.security.log import SecurityEvent
from agent.tickets.model import ReportInput, Source, Ticket

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(_Model):
    """Fields every outgoing message carries."""

    v: Literal[1] = Field(default=SCHEMA_VERSION, description="payload schema version")
    msg_id: str = Field(min_length=1, max_length=64, description="idempotency key")
    seq: int = Field(ge=1, description="per-stream sequence number")
    station: str
    ts: AwareDatetime = Field(description="committed to the outbox (UTC)")


# ---------------------------------------------------------------------- outgoing streams


class StatusMessage(Envelope):
    """`status` (retained): `online` on every connect; `offline` as Last Will or on a clean
    stop. Connection n publishes online with seq 2n-1 and offline with seq 2n."""

    stream: Literal["status"] = "status"
    state: Literal["online", "offline"]
    agent_version: str
    clean: bool = Field(default=True, description="offline: false when sent as Last Will")


class TelemetryReading(_Model):
    """The newest value of one quantity of one device within the interval."""

    device: str
    quantity: str
    value: float | int | str | bool | None
    unit: str = ""
    quality: Quality = Quality.GOOD
    ts: AwareDatetime = Field(description="when the device measured it")


class TelemetryMessage(Envelope):
    """`telemetry`: one batch per telemetry_interval_s with the newest reading of every
    (device, quantity) seen in the interval. May be thinned (see retention policy)."""

    stream: Literal["telemetry"] = "telemetry"
    interval_start: AwareDatetime
    interval_end: AwareDatetime
    samples: int = Field(ge=0, description="readings seen in the interval")
    readings: list[TelemetryReading]


class HealthMessage(Envelope):
    """`health`: a device's communication health, whenever it changes."""

    stream: Literal["health"] = "health"
    health: DeviceHealth


class FaultEventMessage(Envelope):
    """`faults/events`: every fault raised and cleared, in order."""

    stream: Literal["faults/events"] = "faults/events"
    kind: Literal["raised", "cleared"]
    raised: FaultRaised | None = None
    cleared: FaultCleared | None = None


class ActiveFaultsMessage(Envelope):
    """`faults/active` (retained): the faults active right after `seq`'s fault event."""

    stream: Literal["faults/active"] = "faults/active"
    faults: list[FaultRaised]


class SessionEventMessage(Envelope):
    """`sessions/events`: a connector status change or a session start/progress/stop."""

    stream: Literal["sessions/events"] = "sessions/events"
    event: SessionEvent


class ChargeRecordMessage(Envelope):
    """`billing/records`: a signed, hash-chained charge record, in chain order (record_seq
    1, 2, 3, ... without gaps). Verify: hash == SHA-256 of the compact, sorted-key, ASCII
    JSON of {"seq": record_seq, "prev": prev_hash, "body": body}; prev_hash == the previous
    record's hash; OCMF strings in body.ocmf verify with body.ocmf.public_key."""

    stream: Literal["billing/records"] = "billing/records"
    record_seq: int = Field(ge=1)
    record_id: str
    session_id: str
    connector: int
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    body: dict[str, Any] = Field(description="the chained record: energy, cost, OCMF, ...")


class DisplayMessage(Envelope):
    """`display/<connector>` (retained): what the connector's driver display should show;
    the stream's seq counts over all connectors."""

    stream: Literal["display"] = "display"
    connector: int
    message: DriverMessage


class TicketMessage(Envelope):
    """`tickets`: a driver's problem report with the station's snapshot, oldest first."""

    stream: Literal["tickets"] = "tickets"
    ticket: Ticket


class SecurityEventMessage(Envelope):
    """`security/events`: every security event the station recorded (agent/security/), in
    order; the same events go to the CSMS as SecurityEventNotification."""

    stream: Literal["security/events"] = "security/events"
    event: SecurityEvent


class KpiMessage(Envelope):
    """`kpi` (retained): the availability KPIs (NEVI uptime per connector and month,
    attempts, faults that ended sessions), daily ([kpi] publish_interval_s); command
    `get_kpi` answers the same report on request."""

    stream: Literal["kpi"] = "kpi"
    report: KpiReport


# ---------------------------------------------------------------------- commands


class CommandRequest(_Model):
    """What the backend publishes on `cmd/<name>`. On MQTT 5 set the Response Topic (and
    Correlation Data) properties; on 3.1.1 the reply goes to `cmd/<name>/reply`."""

    id: str = Field(
        min_length=8, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description="replay key"
    )
    expires: AwareDatetime = Field(description="not executed at or after this instant")
    station: str | None = Field(default=None, description="if given, must be this station")
    args: dict[str, Any] = Field(default_factory=dict)


class NoArgs(_Model):
    """A command without arguments."""


class DiagnoseArgs(_Model):
    reads: int = Field(default=3, ge=2, le=20, strict=True)
    gap_s: float = Field(default=1.0, ge=0, le=30, strict=True)


class SetTariffArgs(_Model):
    tariff: dict[str, Any] = Field(description="an OCPI 2.2.1 Tariff object")


class LocalListArgs(_Model):
    version: int = Field(ge=1, strict=True)
    full: bool = Field(
        strict=True, description="true: replace the list; false: add/change/remove entries"
    )
    entries: list[LocalListEntry] = Field(max_length=10_000)


class ReportProblemArgs(ReportInput):
    """A driver's problem report from a display controller speaking MQTT (or the QR page's
    backend: source "qr"); text or a category other than "other" is required."""

    source: Source = "display"


class StartArgs(_Model):
    connector: int = Field(ge=1, le=99, strict=True)
    id_token: str = Field(min_length=1, max_length=36)


class ConnectorArgs(_Model):
    connector: int = Field(ge=1, le=99, strict=True)


class LimitArgs(_Model):
    connector: int = Field(ge=1, le=99, strict=True)
    amps: float | None = Field(ge=0, le=80, strict=True, description="null clears the limit")


class ReportArgs(_Model):
    period: Literal["day", "week", "month"] = "day"
    by: Literal["connector", "token"] | None = None
    start: date | None = None
    end: date | None = Field(default=None, description="inclusive")


class KpiArgs(_Model):
    months: int | None = Field(default=None, ge=1, le=36, description="null: [kpi] months")


class CommandError(_Model):
    """Why a command was not executed (or failed)."""

    code: Literal[
        "bad_json",
        "invalid",
        "forbidden",
        "busy",
        "unknown_command",
        "wrong_station",
        "expired",
        "replayed",
        "bad_request",
        "not_found",
        "refused",
        "unsupported",
        "device_error",
        "internal",
    ]
    message: str


class CommandReply(Envelope):
    """The answer to a command (stream `replies`): `ok` with `result`, or `error`."""

    stream: Literal["replies"] = "replies"
    command: str
    command_id: str | None = Field(description="null when the request had no readable id")
    ok: bool
    result: dict[str, Any] | None = None
    error: CommandError | None = None


# Command name -> (argument model, result model). The reply's `result` is the result model.
COMMANDS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "get_status": (NoArgs, StatusReport),
    "get_active_faults": (NoArgs, FaultList),
    "diagnose": (DiagnoseArgs, DiagnoseReport),
    "set_tariff": (SetTariffArgs, TariffResult),
    "update_local_list": (LocalListArgs, LocalListResult),
    "start_session": (StartArgs, CommandResult),
    "stop_session": (ConnectorArgs, CommandResult),
    "set_current_limit": (LimitArgs, LimitResult),
    "usage_report": (ReportArgs, ReportResult),
    "diagnostics_bundle": (NoArgs, DiagnosticsBundle),
    "report_problem": (ReportProblemArgs, TicketCreated),
    "get_kpi": (KpiArgs, KpiReport),
    "clear_fault": (ClearFaultInput, FaultCleared),
}

# Stream name -> its message model.
MESSAGES: dict[str, type[Envelope]] = {
    m.model_fields["stream"].default: m
    for m in (
        StatusMessage,
        TelemetryMessage,
        HealthMessage,
        FaultEventMessage,
        ActiveFaultsMessage,
        SessionEventMessage,
        ChargeRecordMessage,
        DisplayMessage,
        TicketMessage,
        SecurityEventMessage,
        KpiMessage,
        CommandReply,
    )
}
