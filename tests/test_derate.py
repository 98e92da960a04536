"""Derating on over-temperature: a warning fault whose rule has `derate_a` caps the
connector's offered current (limit source "derate") while it is raised, on the simulated
station with the reference EVSE (it reports its temperature), and lifts the cap when it
clears; the rule model refuses derate_a where it cannot apply."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sessions_helpers import CARD, billed_config, running

from agent.diagnosis.rules import Rule, load_rules
from agent.sessions.model import card_token
from hil import REFERENCE_EVSE

RULE = "over_temperature_derate"


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
    cfg = billed_config(tmp_path, evse_profile=REFERENCE_EVSE)
    async with running(cfg) as rig:
        assert rig.engine.derate_limits == {RULE: 16}
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await rig.status("Charging")
        full = offered(rig)
        assert full > 16
        fault = rig.sim.inject({"kind": "over_temperature", "connector": 1, "temperature_c": 75})
        await rig.until(lambda: offered(rig) == 16, 30, "derated to 16 A")
        assert rig.engine.status(1)["limits"]["derate"] == 16
        assert rig.conn.status.value == "Charging"  # a warning: the session goes on
        rig.sim.clear(fault)
        # The rule clears after 30 s below the threshold; then the full current is back.
        await rig.until(lambda: offered(rig) == full, 90, "derating lifted")
        assert "derate" not in rig.engine.status(1)["limits"]
        assert rig.conn.session is not None
