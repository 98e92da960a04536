"""The physics checks on a second controller profile: the catalog runs them on the Phoenix
EV Charge Control (no contactor feedback), these on the reference controller (auxiliary
contact, a code for every EVSE fault). The verdict must not depend on the feedback: with
it, the controller's own code is a symptom the physics explains; without it, the current
is all there is to see.
"""

from __future__ import annotations

from hil.scenarios.base import (
    Expect,
    Scenario,
    charging,
    inject,
    plug_and_charge,
    stop_charging,
    then,
)

C1 = "connector:1"
CONTACTOR = ("PowerSwitchFailure", "PowerContactor.Problem")

PROFILE_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="welded_contactor@reference",
        station="reference",
        setup=charging(),
        # The stop is the agent's switch-off, read back; the car keeps the pilot in C.
        fault=then(inject({"kind": "welded_contactor", "connector": 1}), stop_charging()),
        expect=Expect(
            "welded_contactor",
            C1,
            *CONTACTOR,
            True,
            mrec="CX017",
            explains=frozenset({"evse_contactor_fault"}),
            not_raised=frozenset({"overcurrent", "contactor_fails_to_close"}),
        ),
        raise_within_s=12,
    ),
    Scenario(
        name="contactor_fails_to_close@reference",
        station="reference",
        fault=then(inject({"kind": "contactor_stuck_open", "connector": 1}), plug_and_charge()),
        expect=Expect(
            "contactor_fails_to_close",
            C1,
            *CONTACTOR,
            True,
            mrec="CX017",
            explains=frozenset({"evse_contactor_fault"}),
        ),
    ),
    Scenario(
        name="overcurrent@reference",
        station="reference",
        setup=charging(16.0),
        fault=inject({"kind": "ev_overcurrent", "connector": 1, "current_a": 21}),
        expect=Expect(
            "overcurrent",
            C1,
            "OverCurrentFailure",
            "OverCurrentProtection.Active",
            True,
            mrec="CX004",
        ),
    ),
)
