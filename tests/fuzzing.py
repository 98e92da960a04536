"""Shared settings of the fuzz suites (one per parser: OCPP frames, MQTT commands, API lines,
config files).

`make test` runs a small slice of every fuzz test; `make fuzz` runs >= 10,000 inputs per parser
(EVEDGE_FUZZ_N). Inputs come from a fixed seed (derandomize) so a CI failure reproduces.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Inputs per fuzz test: a slice in `make test`, 10,000 in `make fuzz`.
FUZZ_N = int(os.environ.get("EVEDGE_FUZZ_N", "200"))

#: Hypothesis settings for every fuzz test: fixed seed, no deadline (the machine may be busy),
#: no database (runs are reproducible from the seed alone).
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_N,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def assert_alive(health: dict, session: str, wall: dict, errors_before: int) -> None:
    """The agent after one fuzz input: no task ended, the same session charging, and its
    wall (`internal_errors`, `last_internal_error`) caught nothing for this input."""
    assert health["ended"] == [], health
    assert health["session"] == session, health
    assert wall["internal_errors"] - errors_before == 0, wall["last_internal_error"]
