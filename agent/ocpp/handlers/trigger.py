"""OCPP 1.6 Remote Trigger profile: TriggerMessage (§5.17).

Accepted, then the requested message is sent after the conf (from the `@after` hook: the
library's receive loop must not wait on our own call). Rejected for a connector the station
does not have; NotImplemented for a requestedMessage we do not know. The schema check is
done here, not by the library, so that an unknown requestedMessage gets NotImplemented
rather than a FormationViolation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from ocpp.exceptions import (
    FormationViolationError,
    OccurenceConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.routing import after, on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, MessageTrigger, TriggerMessageStatus

from agent.ocpp.context import OcppCallError, OcppOffline
from agent.ocpp.handlers.base import OcppMixin

log = structlog.get_logger(__name__)

Send = Callable[[], Awaitable[Any]]


class TriggerMixin(OcppMixin):
    """`@on` handler of TriggerMessage; the senders are the other profiles'."""

    def _trigger_plan(
        self, requested_message: Any, connector_id: Any, extra: dict[str, Any]
    ) -> tuple[TriggerMessageStatus, list[Send]]:
        """What to answer and what to send; raises the CALLERROR for a malformed request."""
        if extra:
            raise FormationViolationError(details={"cause": f"unknown fields {sorted(extra)}"})
        if requested_message is None:
            raise OccurenceConstraintViolationError(details={"cause": "requestedMessage: missing"})
        if not isinstance(requested_message, str):
            raise TypeConstraintViolationError(details={"cause": "requestedMessage: a string"})
        if connector_id is not None and (
            isinstance(connector_id, bool) or not isinstance(connector_id, int)
        ):
            raise TypeConstraintViolationError(details={"cause": "connectorId: an integer"})
        try:
            what = MessageTrigger(requested_message)
        except ValueError:
            return TriggerMessageStatus.not_implemented, []
        connectors = sorted(c.id for c in self.ctx.cfg.connector)
        if connector_id is not None and connector_id not in [0, *connectors]:
            return TriggerMessageStatus.rejected, []
        per_connector = {
            MessageTrigger.status_notification: (
                [0, *connectors],
                lambda c: self.send_status(c, triggered=True),
            ),
            # MeterValues belong to a transaction's connector: not connector 0.
            MessageTrigger.meter_values: (connectors, self.send_meter_values),
        }
        if what in per_connector:
            allowed, sender = per_connector[what]
            if connector_id is not None and connector_id not in allowed:
                return TriggerMessageStatus.rejected, []
            targets = allowed if connector_id is None else [connector_id]
            return TriggerMessageStatus.accepted, [lambda c=c: sender(c) for c in targets]
        station_wide: dict[MessageTrigger, Callable[..., Awaitable[Any]]] = {
            MessageTrigger.boot_notification: self.send_boot_notification,
            MessageTrigger.heartbeat: self.send_heartbeat,
            MessageTrigger.diagnostics_status_notification: self.send_diagnostics_status,
            MessageTrigger.firmware_status_notification: self.send_firmware_status,
        }
        sender = station_wide.get(what)
        if sender is None:  # a trigger of a later OCPP version
            return TriggerMessageStatus.not_implemented, []
        return TriggerMessageStatus.accepted, [lambda: sender(triggered=True)]

    @on(Action.trigger_message, skip_schema_validation=True)
    async def _on_trigger_message(
        self, requested_message: Any = None, connector_id: Any = None, **extra: Any
    ) -> call_result.TriggerMessage:
        status, _ = self._trigger_plan(requested_message, connector_id, extra)
        log.info(
            "ocpp.trigger",
            message=str(requested_message)[:40],
            connector=connector_id,
            status=status.value,
        )
        return call_result.TriggerMessage(status=status)

    @after(Action.trigger_message)
    async def _after_trigger_message(
        self, requested_message: Any = None, connector_id: Any = None, **extra: Any
    ) -> None:
        try:
            _, sends = self._trigger_plan(requested_message, connector_id, extra)
        except (
            FormationViolationError,
            OccurenceConstraintViolationError,
            TypeConstraintViolationError,
        ):
            return  # answered with a CALLERROR already
        for send in sends:
            try:
                await send()
            except (OcppOffline, OcppCallError, TimeoutError) as e:
                log.warning("ocpp.trigger_send_failed", message=requested_message, error=str(e))
