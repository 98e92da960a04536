"""A FaultRaised as the diagnosis engine raises it for a rule, for tests that feed faults to a
consumer (the driver display, the fault log, the diagnostics bundle) without the engine."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.diagnosis.rules import load_rules
from agent.events import FaultCodes, FaultRaised


def rule_fault(
    rule_id: str,
    connectors: list[int],
    *,
    ts: datetime | None = None,
    fault_id: str | None = None,
    scope: str | None = None,
) -> FaultRaised:
    """The fault of rule `rule_id` on `connectors` with the rule's texts (labels of the first
    connector); id `<rule>-<connector>` and scope `connector:<first>` unless given."""
    rule = load_rules()[rule_id]
    labels = {"connector": str(connectors[0])}
    return FaultRaised(
        ts=ts or datetime.now(UTC),
        fault_id=fault_id or f"{rule_id}-{connectors[0]}",
        rule=rule_id,
        scope=scope or f"connector:{connectors[0]}",
        title=rule.texts("title", labels),
        root_cause=rule.texts("root_cause", labels),
        severity=rule.severity,
        connectors=connectors,
        devices=[],
        evidence=[],
        confidence=rule.confidence,
        codes=FaultCodes(
            error_code=rule.codes.ocpp16,
            vendor_id="evedge",
            vendor_error_code="x",
            info="",
            component=rule.codes.component,
            variable=rule.codes.variable,
        ),
        faulted=rule.faulted,
        driver_message=rule.texts("driver_message", labels),
        technician_steps=rule.steps(labels),
    )
