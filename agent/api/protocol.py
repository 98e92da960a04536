"""The local API's wire format: one JSON object per line, each way.

    -> {"op": "start", "args": {"connector": 1}}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": {"code": "refused", "message": "connector 1 is charging"}}

A connection may carry any number of requests, answered in order. `OPERATIONS` names every
operation, whether it only reads or controls (control needs root or the [api] group), and
the pydantic model of its arguments. Error codes are `agent.ops.OpError`'s plus
`bad_request` (not JSON, unknown op, invalid arguments, nested deeper than 64 levels),
`forbidden`, `busy` (too many open connections: the connection is closed) and `internal`
(an unexpected exception: counted in `evedge status` under `api`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agent.api.wire import MAX_LINE as MAX_LINE
from agent.diagnosis.clearing import ClearFaultInput
from agent.driver.config import SHIPPED_LANGUAGES
from agent.tickets.model import ReportInput


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(_Args):
    pass


class ConnectorArgs(_Args):
    connector: int = Field(ge=1, le=99, strict=True)


class StartArgs(ConnectorArgs):
    id_token: str | None = Field(default=None, min_length=1, max_length=36)


class LimitArgs(ConnectorArgs):
    amps: float | None = Field(ge=0, le=80, strict=True, description="None clears the local limit")


class DiagnoseArgs(_Args):
    reads: int = Field(default=3, ge=2, le=20, strict=True)
    gap_s: float = Field(default=1.0, ge=0, le=30, strict=True)


class ReportArgs(_Args):
    period: Literal["day", "week", "month"] = "day"
    by: Literal["connector", "token"] | None = None
    start: date | None = None
    end: date | None = None


class KpiArgs(_Args):
    months: int | None = Field(default=None, ge=1, le=36)


class ReadingsArgs(_Args):
    device: str | None = None


class WriteArgs(_Args):
    device: str = Field(min_length=1)
    quantity: str = Field(min_length=1)
    value: float | int | bool | str


class TariffArgs(_Args):
    document: dict[str, JsonValue]


class ScreenArgs(ConnectorArgs):
    lang: Literal[SHIPPED_LANGUAGES] | None = Field(  # type: ignore[valid-type]
        default=None, description="the driver's language; None: the station's"
    )


class LocalListArgs(_Args):
    entries: list[dict[str, JsonValue]]
    full: bool = Field(default=False, strict=True)
    version: int = Field(ge=1, strict=True)


@dataclass(frozen=True)
class Operation:
    """One API operation: the Ops method it calls, its arguments, read or control."""

    method: str
    args: type[BaseModel]
    control: bool


OPERATIONS: dict[str, Operation] = {
    "status": Operation("status", NoArgs, control=False),
    "faults": Operation("active_faults", NoArgs, control=False),
    "readings": Operation("readings", ReadingsArgs, control=False),
    "report": Operation("report", ReportArgs, control=False),
    "kpi": Operation("kpi", KpiArgs, control=False),
    "diagnose": Operation("diagnose", DiagnoseArgs, control=False),
    # Driver-facing: a display controller or kiosk process (not in the control group) shows
    # the screen in the driver's language and files the driver's report. A report changes
    # no charging state; it only adds a ticket.
    "driver_screen": Operation("driver_screen", ScreenArgs, control=False),
    "report_problem": Operation("report_problem", ReportInput, control=False),
    "start": Operation("start", StartArgs, control=True),
    "stop": Operation("stop", ConnectorArgs, control=True),
    "limit": Operation("limit", LimitArgs, control=True),
    "write": Operation("write", WriteArgs, control=True),
    "set_tariff": Operation("set_tariff", TariffArgs, control=True),
    "update_local_list": Operation("update_local_list", LocalListArgs, control=True),
    "diagnostics_bundle": Operation("diagnostics_bundle", NoArgs, control=True),
    "clear_fault": Operation("clear_fault", ClearFaultInput, control=True),
}


class Request(BaseModel):
    """One request line."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    op: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str


class Response(BaseModel):
    """One answer line: `result` when ok, else `error`."""

    ok: bool
    result: Any = None
    error: ErrorBody | None = None

    @classmethod
    def failure(cls, code: str, message: str) -> Response:
        return cls(ok=False, error=ErrorBody(code=code, message=message))


def encode(model: BaseModel) -> bytes:
    """One line of JSON."""
    return model.model_dump_json().encode() + b"\n"
