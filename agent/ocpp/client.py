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

The wall (issue 17): no frame from the CSMS ends the connection or the process.

- Before the library parses a frame: nesting deeper than MAX_FRAME_DEPTH (the deepest 1.6
  payload nests 6 inside the frame; Python's json and the library recurse), NaN/Infinity (not
  JSON, RFC 8259), numbers that overflow a double and integers with more digits than Python
  converts are FormationViolation; integers beyond 32 bits (OCPP 1.6's integer type) are
  TypeConstraintViolation. Numbers reach the handlers finite and ids fit SQLite.
- A schema constraint the validator cannot evaluate (1e308 against `multipleOf 0.1` overflows
  the Decimal context) is PropertyConstraintViolation.
- Any other unexpected exception (a handler, an `@after` hook, the library) is counted and
  logged rate-limited by the service's `Wall` (`evedge status`: ocpp internal_errors) and,
  when the CALL got no answer yet, answered InternalError.

The library routes an incoming CALL inline in its receive loop: a handler that awaits a call
to the CSMS (`ctx.link.call`) would wait for an answer the blocked loop cannot read. Handlers
answer first and send afterwards, from an `@after` hook or a spawned task.
"""

from __future__ import annotations

import decimal
import functools
import inspect
import json
import math
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from jsonschema.exceptions import best_match
from ocpp.exceptions import (
    FormationViolationError,
    FormatViolationError,
    InternalError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.messages import Call, CallError, MessageType, get_validator, unpack
from ocpp.v16 import ChargePoint
from websockets.exceptions import ConnectionClosed

from agent.ocpp.context import OcppContext
from agent.ocpp.handlers.core import CoreMixin
from agent.ocpp.handlers.local_list import LocalListMixin
from agent.ocpp.handlers.logs import LogsMixin
from agent.ocpp.handlers.reservation import ReservationMixin
from agent.ocpp.handlers.smart_charging import SmartChargingMixin
from agent.ocpp.handlers.transactions import TransactionsMixin
from agent.ocpp.handlers.trigger import TriggerMixin
from agent.walls import RateLimited, Wall, json_too_deep

log = structlog.get_logger(__name__)

#: Arrays/objects inside each other in one frame. The deepest OCPP 1.6 CSMS->CP frame
#: (SetChargingProfile: frame, payload, profile, schedule, periods, period) has 6.
MAX_FRAME_DEPTH = 16
# The unique id of a frame we will not parse: `[2, "<id>"` at its start.
_RESULT_OR_ERROR = re.compile(r"\s*\[\s*[34](?:\.0*)?\s*[,\]]")
_LEADING_ID = re.compile(r'\s*\[\s*\d+\s*,\s*"([^"\\]{0,36})"')


class _LibraryLog:
    """Stands in for the library's `logging.Logger`: keeps its messages, drops their
    arguments (raw frames may carry id tags and configuration values)."""

    def __init__(self, wall: Wall):
        self.wall = wall

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
        """A handler raised and the library answered InternalError: count it, keep the
        traceback (rate-limited), not the request. A refused CALL (OCPPError) is logged by
        `EvedgeChargePoint` as ocpp.call_refused."""
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, OCPPError):
            self.wall.caught(exc, stage="handler")


def _unique_id(raw: Any) -> str:
    """The unique id of a frame we could not parse as OCPP, if it has a readable one."""
    match = _LEADING_ID.match(raw) if isinstance(raw, str) else None
    if match is not None:
        return match.group(1)
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        return "-1"
    if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str):
        return msg[1]  # as sent, like the library's answers (the spec allows 36 characters)
    return "-1"


def _is_call(raw: Any) -> bool:
    """Does the frame (maybe unparseable) expect an answer? CALLRESULT/CALLERROR do not."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return not (isinstance(text, str) and _RESULT_OR_ERROR.match(text))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} overflows a double")
    return value


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


class _OutOfRange(ValueError):
    """An integer beyond OCPP 1.6's 32-bit integer type."""


def _int32(text: str) -> int:
    value = int(text)  # ValueError beyond Python's 4300 digits
    if not -(2**31) <= value < 2**31:
        raise _OutOfRange(f"integer {text[:24]} is beyond OCPP's 32-bit integer type")
    return value


def frame_problem(raw: Any) -> OCPPError | None:
    """Why the library must not parse this frame (None: let it). See the module docstring."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if isinstance(data, bytes) and json_too_deep(data, MAX_FRAME_DEPTH):
        return FormationViolationError(
            details={"cause": f"the frame nests more than {MAX_FRAME_DEPTH} arrays/objects"}
        )
    try:
        json.loads(raw, parse_float=_finite, parse_constant=_not_json, parse_int=_int32)
    except json.JSONDecodeError:
        return None  # the library answers it (not JSON)
    except _OutOfRange as e:
        return TypeConstraintViolationError(details={"cause": str(e)})
    except (ValueError, RecursionError) as e:
        return FormationViolationError(details={"cause": str(e)[:200]})
    return None


def _details(error: OCPPError) -> dict[str, Any]:
    cause = error.details.get("cause") if isinstance(error.details, dict) else None
    return {"cause": str(cause)[:500]} if cause else {}


def _unexpected(error: BaseException) -> OCPPError:
    """The CALLERROR for an exception no handler expected."""
    if isinstance(error, RecursionError):
        return FormationViolationError(details={"cause": "the payload nests too deep"})
    if isinstance(error, ArithmeticError):
        cause = f"a number is out of range ({type(error).__name__})"
        return PropertyConstraintViolationError(details={"cause": cause})
    return InternalError(details={})


class EvedgeChargePoint(
    CoreMixin,
    TransactionsMixin,
    SmartChargingMixin,
    LocalListMixin,
    ReservationMixin,
    TriggerMixin,
    LogsMixin,
    ChargePoint,
):
    """evedge as an OCPP 1.6J charge point on one WebSocket connection."""

    def __init__(self, ctx: OcppContext, connection: Any, *, response_timeout: float = 30):
        self.ctx = ctx
        # One wall per service (ctx), so its count survives reconnects.
        self.wall: Wall = ctx.parts.setdefault("wall", Wall("ocpp"))
        # A CSMS repeating a bad frame is logged once a minute per action and error code.
        self._refusals: RateLimited = ctx.parts.setdefault("refusals", RateLimited(log.warning))
        self._replied = False  # the CALL being routed got its CALLRESULT/CALLERROR
        cp_id = ctx.parts.get("charge_point_id") or ctx.cfg.station.id
        super().__init__(
            cp_id, connection, response_timeout=response_timeout, logger=_LibraryLog(self.wall)
        )
        for action, handlers in self.route_map.items():
            if "_after_action" in handlers:
                handlers["_after_action"] = self._walled_after(action, handlers["_after_action"])

    async def route_message(self, raw_msg: Any) -> None:
        """Route one frame; whatever happens, a CALL gets one answer and the loop goes on."""
        self._replied = False
        try:
            await self._route(raw_msg)
        except ConnectionClosed:
            raise
        except Exception as e:
            self.wall.caught(e, stage="route")
            if not self._replied and _is_call(raw_msg):
                err = _unexpected(e)
                answer = CallError(_unique_id(raw_msg), err.code, err.description, err.details)
                await self._send(answer.to_json())

    async def _route(self, raw_msg: Any) -> None:
        """Frames the library cannot parse, or must not, get a CALLERROR, not silence."""
        problem = frame_problem(raw_msg)
        try:
            if problem is not None:
                raise problem
            msg = unpack(raw_msg)
        except OCPPError as e:
            code = _code(e)
            cause = _details(e).get("cause")
            self._refusals(code, "ocpp.bad_frame", code=code, cause=cause)
            self._invalid(f"bad frame from the CSMS: {code}: {cause}")
            # An unparseable CALLRESULT/CALLERROR has nobody to answer to: its call times out.
            if _is_call(raw_msg):
                await self._send(
                    CallError(_unique_id(raw_msg), code, e.description, _details(e)).to_json()
                )
            return
        if msg.message_type_id == MessageType.Call and not isinstance(msg.action, str):
            error = CallError(msg.unique_id, "ProtocolError", "Action must be a string", {})
            await self._send(error.to_json())
            return
        await super().route_message(raw_msg)

    def _invalid(self, tech_info: str) -> None:
        """The security event InvalidMessages (rate-limited by the service's Throttled)."""
        throttled = self.ctx.parts.get("invalid_messages")  # None: a bare context (tests)
        if throttled is not None:
            throttled.record("InvalidMessages", tech_info)

    async def _send(self, message: str) -> None:
        if message.startswith(("[3,", "[4,")):
            self._replied = True
        await super()._send(message)

    async def _handle_call(self, msg: Call) -> Any:
        try:
            if not isinstance(msg.payload, dict):  # a handler without schema check gets **it
                raise TypeConstraintViolationError(details={"cause": "payload: not an object"})
            return await super()._handle_call(msg)
        except OCPPError as e:
            error = _classify(msg, e)
        except (ArithmeticError, RecursionError) as e:
            if self._replied:
                raise  # after the answer: the wall counts it
            # Validation could not evaluate a constraint (e.g. 1e308 vs multipleOf 0.1).
            error = _unexpected(e)
        action = str(msg.action)[:50]
        if error.code not in ("NotImplemented", "NotSupported"):  # unknown is not invalid
            self._invalid(f"{action} refused: {error.code}: {_details(error).get('cause')}")
        self._refusals(
            f"{action} {error.code}",
            "ocpp.call_refused",
            action=action,
            unique_id=str(msg.unique_id)[:36],
            code=error.code,
            cause=_details(error).get("cause"),
        )
        raise error from None

    def _walled_after(self, action: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        """`hook` (an `@after` handler) with its exceptions counted instead of lost: the
        library calls it after the answer and leaves a returned coroutine unawaited."""

        @functools.wraps(hook)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                result = hook(*args, **kw)
            except Exception as e:
                self.wall.caught(e, stage="after", action=action)
                return None
            return self._guarded(action, result) if inspect.isawaitable(result) else result

        return run

    async def _guarded(self, action: str, work: Awaitable[Any]) -> None:
        try:
            await work
        except Exception as e:
            self.wall.caught(e, stage="after", action=action)


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
            payload = _decimals(msg.payload) if decimal_floats else msg.payload
            try:
                problem = best_match(validator.iter_errors(payload))
            except ArithmeticError as e:  # a constraint the Decimal context cannot evaluate
                return PropertyConstraintViolationError(details={"cause": f"out of range: {e!r}"})
            if problem is not None:
                kind = _SCHEMA_ERRORS.get(str(problem.validator), FormationViolationError)
                return kind(details={"cause": problem.message[:500]})
    if isinstance(error, FormatViolationError):
        return FormationViolationError(details=details)
    error.details = details
    return error


def _decimals(value: Any) -> Any:
    """`value` with every float as a Decimal (the library may have converted it already)."""
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


def _code(error: OCPPError) -> str:
    """The OCPP 1.6 error code (the library uses 2.0.1's FormatViolation in places)."""
    return "FormationViolation" if isinstance(error, FormatViolationError) else error.code
