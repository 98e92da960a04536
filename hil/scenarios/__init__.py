"""Diagnosis scenarios: one per rule, as data plus small steps, runnable on the simulator
(rig.py, virtual time) and, through another Driver, on real hardware."""

from hil.scenarios.base import Driver, Expect, Scenario
from hil.scenarios.catalog import BY_NAME, SCENARIOS

__all__ = ["BY_NAME", "SCENARIOS", "Driver", "Expect", "Scenario"]
