"""Reservations and availability on the simulated station: reserve, expiry, cancel, use by
the reserved token, persistence across a restart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sessions_helpers import CARD, billed_config, running

from agent.events import utcnow
from agent.sessions.engine import CommandRefused
from agent.sessions.model import IdToken, card_token


async def test_reserve_refuses_others_and_is_used_by_its_token(tmp_path):
    async with running(billed_config(tmp_path)) as rig:
        exp = utcnow() + timedelta(minutes=5)
        assert await rig.engine.reserve(1, card_token(CARD), exp, 7) == "Reserved"
        assert rig.engine.status(1)["reservation"]["id"] == 7
        with pytest.raises(CommandRefused, match="Reserved"):
            await rig.engine.reserve(1, IdToken("OTHER"), exp, 8)
        with pytest.raises(CommandRefused, match="reserved for another token"):
            await rig.engine.remote_start(1, IdToken("OTHER"))
        rig.sim.plug_in(1)
        await rig.until(lambda: rig.conn.cp == "B", 5, "plugged in")
        assert rig.conn.status.value == "Reserved"
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await rig.status("Charging")
        assert rig.conn.reservation is None
        assert [e.kind for e in rig.events() if e.kind.startswith("reserv")] == [
            "reserved", "reservation_used"
        ]  # fmt: skip


async def test_cancel_and_expiry_release_the_connector(tmp_path):
    async with running(billed_config(tmp_path)) as rig:
        await rig.engine.reserve(1, card_token(CARD), utcnow() + timedelta(minutes=5), 1)
        assert await rig.engine.cancel_reservation(1) is True
        assert await rig.engine.cancel_reservation(1) is False
        await rig.status("Available")
        await rig.engine.reserve(1, card_token(CARD), utcnow() + timedelta(seconds=1), 2)
        await rig.status("Reserved")
        await rig.status("Available", timeout=5)  # expired
        # The event reaches the bus subscriber a moment after the status changed.
        await rig.until(
            lambda: "reservation_expired" in [e.kind for e in rig.events()], 5, "expiry event"
        )
        with pytest.raises(CommandRefused, match="not in the future"):
            await rig.engine.reserve(1, card_token(CARD), utcnow() - timedelta(seconds=1), 3)


async def test_reservation_and_unavailability_survive_a_restart(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        await rig.engine.reserve(1, card_token(CARD), utcnow() + timedelta(minutes=5), 4)
    async with running(cfg) as rig:
        await rig.status("Reserved")
        assert rig.engine.status(1)["reservation"]["id"] == 4
        assert await rig.engine.cancel_reservation(4)
        assert await rig.engine.set_available(1, False) == "Unavailable"
    async with running(cfg) as rig:
        await rig.status("Unavailable")
        with pytest.raises(CommandRefused, match="unavailable"):
            await rig.engine.remote_start(1, card_token(CARD))
