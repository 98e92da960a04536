"""OCPP 1.6 Smart Charging profile: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule.

The handlers only translate: the profiles, their checks and the limit live in
`ctx.parts["smart_charging"]` (agent/ocpp/smart_charging_service.py), which outlives the
connection and keeps applying the limit while the CSMS is away.
"""

from __future__ import annotations

from typing import Any

import structlog
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import (
    Action,
    ChargingProfileStatus,
    ClearChargingProfileStatus,
    GetCompositeScheduleStatus,
)

from agent.ocpp.context import OcppContext
from agent.ocpp.handlers.base import OcppMixin
from agent.ocpp.smart_charging import RateUnit
from agent.ocpp.smart_charging_service import SmartChargingService

log = structlog.get_logger(__name__)


class SmartChargingMixin(OcppMixin):
    """`@on` handlers of the Smart Charging profile."""

    @classmethod
    def setup(cls, ctx: OcppContext) -> None:
        """Create the long-lived SmartChargingService (`ctx.parts["smart_charging"]`)."""
        super().setup(ctx)
        SmartChargingService(ctx)

    def _smart(self) -> SmartChargingService | None:
        return self.ctx.parts.get("smart_charging")

    @on(Action.set_charging_profile)
    async def _on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any]
    ) -> call_result.SetChargingProfile:
        smart = self._smart()
        if smart is None:
            return call_result.SetChargingProfile(status=ChargingProfileStatus.not_supported)
        reason = await smart.set_profile(connector_id, cs_charging_profiles)
        if reason is not None:
            log.warning(
                "ocpp.profile_rejected",
                connector=connector_id,
                profile_id=cs_charging_profiles.get("charging_profile_id"),
                reason=reason,
            )
            return call_result.SetChargingProfile(status=ChargingProfileStatus.rejected)
        return call_result.SetChargingProfile(status=ChargingProfileStatus.accepted)

    @on(Action.clear_charging_profile)
    async def _on_clear_charging_profile(
        self,
        id: int | None = None,  # the payload names it so
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
    ) -> call_result.ClearChargingProfile:
        smart = self._smart()
        n = 0
        if smart is not None:
            n = await smart.clear(id, connector_id, charging_profile_purpose, stack_level)
        status = ClearChargingProfileStatus.accepted if n else ClearChargingProfileStatus.unknown
        return call_result.ClearChargingProfile(status=status)

    @on(Action.get_composite_schedule)
    async def _on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None
    ) -> call_result.GetCompositeSchedule:
        smart = self._smart()
        unit = RateUnit(charging_rate_unit) if charging_rate_unit else None
        fields = None if smart is None else smart.composite(connector_id, duration, unit)
        if fields is None:
            return call_result.GetCompositeSchedule(status=GetCompositeScheduleStatus.rejected)
        return call_result.GetCompositeSchedule(
            status=GetCompositeScheduleStatus.accepted, **fields
        )
