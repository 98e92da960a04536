"""Failsafe heartbeat: keep an EVSE controller's communication watchdog fed.

Controllers with a failsafe (the profile's [failsafe] table: Keba, Bender) fall back to a
safe current when the agent stops writing: if the agent dies mid-session, the car charges on
at the failsafe current (or stops, at 0 A) instead of at whatever was last offered. The
heartbeat writes the failsafe current once, then rewrites the timeout every
`timeout × every` seconds (evcc: every timeout/2). Data-driven: no vendor is named here.
"""

from __future__ import annotations

import asyncio

import structlog

from drivers.device import Device
from drivers.transport import ModbusFailure

log = structlog.get_logger(__name__)

RETRY_S = 1.0


async def run_heartbeat(device: Device, timeout_s: float, current_a: float) -> None:
    """Feed the device's failsafe watchdog until cancelled (returns at once without one)."""
    spec = device.profile.failsafe
    if spec is None:
        return
    period = max(0.2, timeout_s * spec.every)
    current_set = False
    failing = False
    log.info(
        "evse.failsafe", evse=device.name, timeout_s=timeout_s, current_a=current_a, every=period
    )
    while True:
        try:
            if not current_set:
                await device.write(spec.current, current_a)
                current_set = True
            await device.write(spec.heartbeat, timeout_s)
        except (ModbusFailure, RuntimeError) as e:
            if not failing:
                log.warning(
                    "evse.failsafe_write_failed",
                    evse=device.name,
                    error=str(e),
                    hint=f"without a write within {timeout_s:g} s the EVSE drops to "
                    f"{current_a:g} A",
                )
            failing = True
            await asyncio.sleep(RETRY_S)
            continue
        if failing:
            log.info("evse.failsafe_restored", evse=device.name)
            failing = False
        await asyncio.sleep(period)
