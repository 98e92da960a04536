"""Current-limit arbitration on the simulated station: every source's limit, the connector's
rating and the cable's capacity; the EVSE offers the minimum (read back from the simulated
controller), below 6 A the session is suspended, the local limit survives a restart."""

from __future__ import annotations

import math

import pytest
from sessions_helpers import CARD, billed_config, running

from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token


def offered(rig) -> float:
    """What the simulated EVSE offers now (its own state, not the agent's belief)."""
    evse = rig.sim.connectors[1].evse
    return evse.offered_current_a if evse.enabled else 0.0


async def charging(rig) -> None:
    await rig.card_charging()


async def test_effective_limit_is_the_minimum_of_every_source(tmp_path):
    async with running(billed_config(tmp_path)) as rig:
        await charging(rig)
        assert offered(rig) == 32  # the connector's rating (cable 32 A)
        assert await rig.engine.set_limit(1, "ocpp", 20) == 20
        assert offered(rig) == 20
        assert await rig.engine.set_limit(1, "local", 16) == 16
        assert offered(rig) == 16
        assert await rig.engine.set_limit(1, "ocpp", 10) == 10
        assert offered(rig) == 10
        assert await rig.engine.set_limit(1, "ocpp", None) == 16  # local still holds
        assert offered(rig) == 16
        status = rig.engine.status(1)
        assert status["limit_a"] == 16 == rig.engine.effective_limit(1)
        assert status["limits"] == {"max": 32, "cable": 32.0, "local": 16.0}
        assert await rig.engine.set_limit(1, "local", 50) == 32  # never above the rating
        assert offered(rig) == 32
        assert rig.conn.status.value == "Charging"


async def test_below_6_amps_suspends_and_resumes(tmp_path):
    async with running(billed_config(tmp_path)) as rig:
        await charging(rig)
        assert await rig.engine.set_limit(1, "derate", 4.5) == 4.5
        await rig.status("SuspendedEVSE")
        assert offered(rig) == 0  # no illegal duty cycle: the EVSE is off
        await rig.until(lambda: max(rig.sim.connectors[1].currents) == 0, 5, "no current")
        assert rig.conn.session is not None  # suspended, not stopped
        assert await rig.engine.set_limit(1, "derate", 8) == 8
        await rig.status("Charging")
        assert offered(rig) == 8


async def test_a_session_starting_under_a_low_limit_starts_suspended(tmp_path):
    async with running(billed_config(tmp_path)) as rig:
        await rig.engine.set_limit(1, "ocpp", 0)
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await rig.status("SuspendedEVSE")
        assert offered(rig) == 0
        await rig.engine.set_limit(1, "ocpp", 12)
        await rig.status("Charging")
        assert offered(rig) == 12


async def test_local_limit_survives_a_restart_others_do_not(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        await rig.engine.set_limit(1, "local", 13)
        await rig.engine.set_limit(1, "ocpp", 7)
    async with running(cfg) as rig:
        await rig.until(lambda: rig.engine.effective_limit(1) == 13, 5, "local limit reloaded")
        assert rig.engine.status(1)["limits"]["local"] == 13
        assert "ocpp" not in rig.engine.status(1)["limits"]
        await charging(rig)
        assert offered(rig) == 13
        await rig.engine.set_limit(1, "local", None)
    async with running(cfg) as rig:
        await rig.until(lambda: rig.conn.status.value == "Available", 5)
        assert rig.engine.effective_limit(1) == 32


@pytest.mark.parametrize(
    ("source", "amps", "match"),
    [
        ("ocpp", -1, "0 A or more"),
        ("ocpp", math.nan, "0 A or more"),
        ("ocpp", "16", "number of amperes"),
        ("OCPP!", 16, "limit source"),
        ("", 16, "limit source"),
    ],
)
async def test_bad_limits_are_refused(tmp_path, source, amps, match):
    async with running(billed_config(tmp_path)) as rig:
        with pytest.raises(CommandRefused, match=match):
            await rig.engine.set_limit(1, source, amps)
        assert rig.engine.effective_limit(1) == 32
