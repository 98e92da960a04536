"""Pilot E/F and a diagnosis FaultRaised for the same incident: whichever reaches the session
engine first stops the session, and the record's stop cause is the same either way (decided
at the close from both). A cause arriving after the record was written is kept as an event
of the connector, never as a second stop or an edit of the record."""

from __future__ import annotations

import pytest
from sessions_helpers import CARD, billed_config, body, running
from test_sessions import _fault_raised

from agent import events
from agent.sessions.model import card_token

EXPECTED = {
    "reason": "EmergencyStop",
    "by": "fault",
    "detail": "F-1: contactor welded; control pilot state E",
}


def _config(tmp_path):
    # The test plays the diagnosis engine (its FaultRaised), so the real one stays off.
    return billed_config(tmp_path, sessions="[diagnosis]\nenabled = false")


async def _charging(rig) -> None:
    rig.sim.plug_in(1)
    await rig.engine.authorize(1, card_token(CARD))
    await rig.status("Charging")


@pytest.mark.parametrize("first", ["pilot", "fault"])
async def test_stop_cause_is_the_same_whichever_comes_first(tmp_path, first):
    cfg = _config(tmp_path)
    async with running(cfg) as rig:
        await _charging(rig)
        # A silent meter makes the close wait for its end reading (end_reading_timeout_s):
        # the second cause surely arrives while the first one's stop is under way.
        rig.sim.inject({"kind": "no_response", "device": "meter1"})
        if first == "pilot":
            rig.sim.inject({"kind": "cp_state_e", "connector": 1})
            await rig.until(lambda: rig.conn.session is None or rig.conn.cp == "E", 5)
            rig.agent.bus.publish(_fault_raised(events, faulted=True))
        else:
            rig.agent.bus.publish(_fault_raised(events, faulted=True))
            await rig.until(lambda: "F-1" in rig.conn.known_faults, 5)
            rig.sim.inject({"kind": "cp_state_e", "connector": 1})
        rec = await rig.record()
        await rig.status("Faulted")
        records = len(rig.events("stopped"))
    b = body(rec)
    assert b["stop"] == EXPECTED
    assert records == 1


async def test_a_cause_after_the_record_only_annotates(tmp_path):
    cfg = _config(tmp_path)
    async with running(cfg) as rig:
        await _charging(rig)
        rig.sim.inject({"kind": "cp_state_e", "connector": 1})
        rec = await rig.record()
        rig.agent.bus.publish(_fault_raised(events, faulted=True))
        await rig.until(lambda: "F-1" in rig.conn.faults, 5)
        with rig.store() as st, st.reading() as c:
            notes = c.execute(
                "SELECT detail FROM session_events WHERE kind = 'stop_cause'"
            ).fetchall()
        stops = len(rig.events("stopped"))
    b = body(rec)
    assert b["stop"] == {
        "reason": "EmergencyStop", "by": "evse", "detail": "control pilot state E"
    }  # fmt: skip
    assert notes == [(f"session {b['session_id']}: also F-1: contactor welded",)]
    assert stops == 1
