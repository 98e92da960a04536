"""Derating on over-temperature: a warning fault whose rule has `derate_a` caps the
connector's offered current (limit source "derate") while it is raised, on the simulated
station with the reference EVSE (it reports its temperature), also across an agent restart,
and lifts the cap when it clears; the rule model refuses derate_a where it cannot apply."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sessions_helpers import billed_config, running

from agent.diagnosis.rules import Rule, load_rules
from hil import REFERENCE_EVSE
from hil.station import SimStation

RULE = "over_temperature_derate"
# The shipped rule raises after 5 s and clears after 30 s; the tests tune it (the site
# override a station may use too): what they check is the cap while raised, not the times.
FAST = f"[diagnosis.rule.{RULE}]\nraise_after_s = 0.5\nclear_after_s = 1\n"
HOT = {"kind": "over_temperature", "connector": 1, "temperature_c": 75}


def offered(rig) -> float:
    """What the simulated EVSE offers now (its own state, not the agent's belief)."""
    evse = rig.sim.connectors[1].evse
    return evse.offered_current_a if evse.enabled else 0.0


def test_the_shipped_derate_rule_and_what_the_model_refuses():
    rules = load_rules()
    rule = rules[RULE]
    assert rule.derate_a == 16 and not rule.faulted and rule.severity == "warning"
    assert [r for r in rules.values() if r.derate_a] == [rule]
    data = rule.model_dump()
    for change, match in (
        ({"faulted": True}, "derate_a: only for connector rules with faulted = false"),
        ({"derate_a": 3}, "greater than or equal to 6"),
        ({"derate_a": "lots"}, "valid number"),
    ):
        with pytest.raises(ValidationError, match=match):
            Rule.model_validate({**data, **change})


async def test_over_temperature_derates_the_offered_current_until_cleared(tmp_path):
    cfg = billed_config(tmp_path, evse_profile=REFERENCE_EVSE, diagnosis=FAST)
    async with running(cfg) as rig:
        assert rig.engine.derate_limits == {RULE: 16}
        await rig.card_charging()
        full = offered(rig)
        assert full > 16
        fault = rig.sim.inject(HOT)
        await rig.until(lambda: offered(rig) == 16, 30, "derated to 16 A")
        assert rig.engine.status(1)["limits"]["derate"] == 16
        assert rig.conn.status.value == "Charging"  # a warning: the session goes on
        rig.sim.clear(fault)
        # The rule clears once below the threshold for clear_after_s; then the full current
        # is back.
        await rig.until(lambda: offered(rig) == full, 30, "derating lifted")
        assert "derate" not in rig.engine.status(1)["limits"]
        assert rig.conn.session is not None


async def test_derating_survives_a_restart_until_the_fault_clears(tmp_path):
    """The fault stays active over a restart (restored, not raised again): the restarted
    engine derates the resumed session again instead of offering the full current."""
    cfg = billed_config(tmp_path, evse_profile=REFERENCE_EVSE, diagnosis=FAST)
    async with SimStation(cfg, tick_s=0.1) as sim:
        async with running(cfg, sim=sim) as rig:
            await rig.card_charging()
            full = offered(rig)
            assert full > 16
            fault = sim.inject(HOT)
            await rig.until(lambda: offered(rig) == 16, 30, "derated to 16 A")
            (raised,) = [f for f in rig.agent.diagnosis.engine.active() if f.rule == RULE]
            session = rig.conn.session.id

        async with running(cfg, sim=sim) as rig:
            # Resumed, and told the EVSE what to offer: the derated current, not the full.
            await rig.until(
                lambda: rig.conn.session is not None and rig.conn.applied_a is not None,
                15, "session resumed with its current applied",
            )  # fmt: skip
            assert rig.conn.session.id == session
            assert rig.engine.status(1)["limits"].get("derate") == 16
            assert rig.conn.applied_a == 16 and offered(rig) == 16
            assert [f.fault_id for f in rig.agent.diagnosis.engine.active() if f.rule == RULE] == [
                raised.fault_id
            ]
            sim.clear(fault)
            await rig.until(lambda: offered(rig) == full, 30, "derating lifted")
            assert "derate" not in rig.engine.status(1)["limits"]
            assert rig.conn.session is not None and rig.conn.session.id == session
