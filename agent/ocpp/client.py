"""The charge point: the `ocpp` library's v16 ChargePoint composed of one mixin per profile.

One instance lives for one WebSocket connection (agent/ocpp/service.py builds a new one on
every reconnect around the same `OcppContext`). Besides composing the mixins it closes the
library's gaps in handling bad input from the CSMS (ocpp 2.1.0):

- a frame that is not JSON, not a list, or has an unknown MessageTypeId is only logged by the
  library; we answer CALLERROR (FormationViolation / ProtocolError / PropertyConstraintViolation)
  with the frame's unique id when one can be read, else "-1";
- schema violations the library reports as `FormatViolation` (the OCPP 2.0.1 name) or
  `ProtocolError` get the code OCPP 1.6 §4.2.3 defines for the violated constraint:
  TypeConstraintViolation (type, length), OccurenceConstraintViolation (missing field),
  PropertyConstraintViolation (enum, range, pattern), FormationViolation (unknown field);
- the library logs every raw frame (id tags, configuration values) through its logger; ours
  logs events without payloads instead.

The library routes an incoming CALL inline in its receive loop: a handler that awaits a call
to the CSMS (`ctx.link.call`) would wait for an answer the blocked loop cannot read. Handlers
answer first and send afterwards, from an `@after` hook or a spawned task.
"""

from __future__ import annotations

import decimal
import json
import sys
from typing import Any

import structlog
from jsonschema.exceptions import best_match
from ocpp.exceptions import (
    FormationViolationError,
    FormatViolationError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.messages import Call, CallError, MessageType, get_validator, unpack
from ocpp.v16 import ChargePoint

from agent.ocpp.context import OcppContext
from agent.ocpp.handlers.core import CoreMixin
from agent.ocpp.handlers.diagnostics import DiagnosticsMixin
from agent.ocpp.handlers.local_list import LocalListMixin
from agent.ocpp.handlers.reservation import ReservationMixin
from agent.ocpp.handlers.smart_charging import SmartChargingMixin
from agent.ocpp.handlers.transactions import TransactionsMixin
from agent.ocpp.handlers.trigger import TriggerMixin

log = structlog.get_logger(__name__)


class _LibraryLog:
    """Stands in for the library's `logging.Logger`: keeps its messages, drops their
    arguments (raw frames may carry id tags and configuration values)."""

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        """Raw frames: not logged."""

    info = debug

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        """E.g. 'Received a CALLError' (our link raises it to the caller anyway)."""
        log.debug("ocpp.library", text=msg)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        """E.g. a response with an unknown unique id (a late answer after a timeout)."""
        log.info("ocpp.library", text=msg)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        """A handler raised: keep the traceback of a bug, not the request. A refused CALL
        (OCPPError) is logged by `EvedgeChargePoint` as ocpp.call_refused."""
        if not isinstance(sys.exc_info()[1], OCPPError):
            log.error("ocpp.handler_failed", text=msg, exc_info=True)


def _unique_id(raw: Any) -> str:
    """The unique id of a frame we could not parse as OCPP, if it has a readable one."""
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError):
        return "-1"
    if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str):
        return msg[1][:36]
    return "-1"


def _is_call(raw: Any) -> bool:
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError):
        return True  # unknown: answer, the peer may be waiting
    return not (isinstance(msg, list) and msg[:1] in ([3], [4]))


def _details(error: OCPPError) -> dict[str, Any]:
    cause = error.details.get("cause") if isinstance(error.details, dict) else None
    return {"cause": str(cause)[:500]} if cause else {}


class EvedgeChargePoint(
    CoreMixin,
    TransactionsMixin,
    SmartChargingMixin,
    LocalListMixin,
    ReservationMixin,
    TriggerMixin,
    DiagnosticsMixin,
    ChargePoint,
):
    """evedge as an OCPP 1.6J charge point on one WebSocket connection."""

    def __init__(self, ctx: OcppContext, connection: Any, *, response_timeout: float = 30):
        self.ctx = ctx
        cp_id = ctx.parts.get("charge_point_id") or ctx.cfg.station.id
        super().__init__(cp_id, connection, response_timeout=response_timeout, logger=_LibraryLog())

    async def route_message(self, raw_msg: Any) -> None:
        """Route one frame; frames the library cannot parse get a CALLERROR, not silence."""
        try:
            msg = unpack(raw_msg)
        except OCPPError as e:
            code = _code(e)
            log.warning("ocpp.bad_frame", code=code, cause=_details(e).get("cause"))
            # An unparseable CALLRESULT/CALLERROR has nobody to answer to: its call times out.
            if _is_call(raw_msg):
                await self._send(
                    CallError(_unique_id(raw_msg), code, e.description, _details(e)).to_json()
                )
            return
        if msg.message_type_id == MessageType.Call and not isinstance(msg.action, str):
            await self._send(
                CallError(
                    str(msg.unique_id)[:36], "ProtocolError", "Action must be a string", {}
                ).to_json()
            )
            return
        await super().route_message(raw_msg)

    async def _handle_call(self, msg: Call) -> Any:
        try:
            return await super()._handle_call(msg)
        except OCPPError as e:
            error = _classify(msg, e)
            log.warning(
                "ocpp.call_refused",
                action=str(msg.action)[:50],
                unique_id=str(msg.unique_id)[:36],
                code=error.code,
                cause=_details(error).get("cause"),
            )
            raise error from None


# OCPP 1.6 §4.2.3 error codes by the JSON-schema keyword a payload violated.
_SCHEMA_ERRORS: dict[str, type[OCPPError]] = {
    "type": TypeConstraintViolationError,
    "maxLength": TypeConstraintViolationError,
    "minLength": TypeConstraintViolationError,
    "required": OccurenceConstraintViolationError,
    "enum": PropertyConstraintViolationError,
    "minimum": PropertyConstraintViolationError,
    "maximum": PropertyConstraintViolationError,
    "pattern": PropertyConstraintViolationError,
    "format": PropertyConstraintViolationError,
    "multipleOf": PropertyConstraintViolationError,
}
# The library validates these with floats parsed as Decimal (and caches the validator).
_DECIMAL_ACTIONS = {"SetChargingProfile", "RemoteStartTransaction"}


def _classify(msg: Call, error: OCPPError) -> OCPPError:
    """The precise 1.6 error for a refused CALL.

    The library reports most schema violations as FormatViolation or ProtocolError; the
    payload is validated again (only on this error path) to name the violated constraint.
    """
    details = _details(error)
    if isinstance(error, (FormatViolationError, ProtocolError)) and isinstance(msg.action, str):
        decimal_floats = msg.action in _DECIMAL_ACTIONS
        try:
            validator = get_validator(
                MessageType.Call,
                msg.action,
                "1.6",
                parse_float=decimal.Decimal if decimal_floats else float,
            )
        except (OSError, ValueError):
            validator = None
        if validator is not None:
            payload = msg.payload
            if decimal_floats:
                payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
            problem = best_match(validator.iter_errors(payload))
            if problem is not None:
                kind = _SCHEMA_ERRORS.get(str(problem.validator), FormationViolationError)
                return kind(details={"cause": problem.message[:500]})
    if isinstance(error, FormatViolationError):
        return FormationViolationError(details=details)
    error.details = details
    return error


def _code(error: OCPPError) -> str:
    """The OCPP 1.6 error code (the library uses 2.0.1's FormatViolation in places)."""
    return "FormationViolation" if isinstance(error, FormatViolationError) else error.code
