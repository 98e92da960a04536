"""The physics checks on a second controller profile: the catalog runs them on the Phoenix
EV Charge Control (no contactor feedback), these on the reference controller (auxiliary
contact, a code for every EVSE fault). The verdict must not depend on the feedback: with
it, the controller's own code is a symptom the physics explains; without it, the current
is all there is to see.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hil.scenarios.base import Scenario
from hil.scenarios.catalog import BY_NAME


def on_reference(name: str, **expect: Any) -> Scenario:
    """The catalog's scenario `name` run on the reference controller; `expect` says what
    must be reported there beyond the catalog's expectation."""
    s = BY_NAME[name]
    return replace(
        s, name=f"{name}@reference", station="reference", expect=replace(s.expect, **expect)
    )


# With the auxiliary contact and the controller's own contactor code, that code is a symptom
# the physics explains.
PROFILE_SCENARIOS: tuple[Scenario, ...] = (
    on_reference("welded_contactor", explains=frozenset({"evse_contactor_fault"})),
    on_reference("contactor_fails_to_close", explains=frozenset({"evse_contactor_fault"})),
    on_reference("overcurrent"),
)
