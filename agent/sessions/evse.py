"""Switching an EVSE controller through its profile, whatever the vendor's way of doing it.

Phoenix: a setpoint register and an enable coil. Bender: only the setpoint; 0 A disables.
Keba: a write-only setpoint (read back elsewhere) and a write-only enable. Every write goes
through drivers.device.Device.write, which reads the value back where the device can.

The control pilot state is read as `cp_state` where the profile has it; controllers that
report a vendor charging state instead (Keba) are mapped to the IEC 61851 letter here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from agent.events import utcnow
from drivers.device import Device

log = structlog.get_logger(__name__)

# Vendor charging / cable words -> the IEC 61851 state they imply (when no cp_state exists).
_CHARGER_CP = {
    "charging": "C",
    "error": "F",
    "fault": "F",
    "faulted": "F",
}
_UNPLUGGED = {"unplugged", "no_cable", "none", "disconnected", "not_connected", "plugged_station"}


def cp_from_vendor(charger_state: str | None, cable_state: str | None) -> str | None:
    """The IEC 61851 state implied by a vendor's charging and cable state words, if any."""
    if charger_state is None and cable_state is None:
        return None
    if charger_state in _CHARGER_CP:
        return _CHARGER_CP[charger_state]
    if cable_state is not None:
        return "A" if cable_state in _UNPLUGGED else "B"
    return None


class EvseControl:
    """Enable/disable and current setpoint of one EVSE controller.

    It also knows since when charging is off for sure (`disabled_since`): the disable was
    written and read back equal. From then on no current may flow through the contactor,
    whatever the pilot shows; diagnosis needs that fact to see a welded contactor on a
    controller that has no contactor feedback.
    """

    def __init__(self, device: Device, clock: Callable[[], datetime] = utcnow):
        self.device = device
        self.clock = clock
        writable = {r.quantity for r in device.profile.registers if r.writable}
        readable = {r.quantity for r in device.profile.readable()}
        self.has_setpoint = "offered_current_a" in writable
        self.has_enable = "charging_enabled" in writable
        self.reads_cp = "cp_state" in readable
        # Device.write compares the read-back only when the written register itself is
        # readable: a write-only switch (Keba) is never "confirmed off".
        switch = "charging_enabled" if self.has_enable else "offered_current_a"
        self.confirms_disable = switch in writable and switch in readable
        self.disabled_since: datetime | None = None

    @property
    def name(self) -> str:
        """The device name."""
        return self.device.name

    async def enable(self, current_a: float) -> None:
        """Offer `current_a` and allow charging (setpoint first: the car sees it at once)."""
        self.disabled_since = None  # from the first write on, current may flow
        if self.has_setpoint:
            await self.device.write("offered_current_a", float(current_a))
        if self.has_enable:
            await self.device.write("charging_enabled", True)

    async def disable(self) -> None:
        """Stop offering current (the enable flag where there is one, else setpoint 0 A)."""
        if self.has_enable:
            await self.device.write("charging_enabled", False)
        elif self.has_setpoint:
            await self.device.write("offered_current_a", 0.0)
        # Device.write raised if the read-back differed; a repeated disable keeps the
        # first confirmation time.
        if self.confirms_disable and self.disabled_since is None:
            self.disabled_since = self.clock()

    async def set_current(self, current_a: float) -> None:
        """Change the offered current during a session (6 A or more; 0 A suspends)."""
        if self.has_setpoint:
            await self.device.write("offered_current_a", float(current_a))
