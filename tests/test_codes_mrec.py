"""Every rule's OCPP 1.6 errorCode and ChargeX MREC code agree with the ChargeX list."""

from __future__ import annotations

import pytest

from agent.diagnosis.codes import MREC_CODES
from agent.diagnosis.rules import RuleError, load_rule_file, load_rules

# The ChargeX MREC list (REFERENCE.md "Fault codes"), written out here independently of
# agent/diagnosis/codes.py so a wrong table there fails this test.
CHARGEX = {
    "CX001": "ConnectorLockFailure",
    "CX002": "GroundFailure",
    "CX003": "HighTemperature",
    "CX004": "OverCurrentFailure",
    "CX005": "OverVoltage",
    "CX006": "UnderVoltage",
    "CX007": "WeakSignal",
    "CX008": "EmergencyStop",
    "CX009": "AuthorizationTimeout",
    "CX010": "InvalidVehicleMode",
    "CX011": "CableCheck",
    "CX012": "PreCharge",
    "CX013": "NoInternet",
    "CX014": "PilotFault",
    "CX015": "PowerLoss",
    "CX016": "EVContactorFault",
    "CX017": "EVSEContactorFault",
    "CX018": "CableOverTempDerate",
    "CX019": "CableOverTempStop",
    "CX020": "PartialInsertion",
    "CX021": "CapacitanceFault",
    "CX022": "ResistanceFault",
    "CX023": "ProximityFault",
    "CX024": "ConnectorVoltageHigh",
    "CX025": "BrokenLatch",
    "CX026": "CutCable",
}
# OCPP 1.6 errorCodes ChargeX has a code of its own for (the contactor one includes welded).
OCPP16_TO_MREC = {
    "ConnectorLockFailure": "CX001",
    "GroundFailure": "CX002",
    "HighTemperature": "CX003",
    "OverCurrentFailure": "CX004",
    "OverVoltage": "CX005",
    "UnderVoltage": "CX006",
    "WeakSignal": "CX007",
    "PowerSwitchFailure": "CX017",
}


def test_the_code_table_is_the_chargex_list():
    assert MREC_CODES == CHARGEX


@pytest.mark.parametrize("rule", sorted(load_rules().values(), key=lambda r: r.id), ids=str)
def test_every_rule_codes_agree_with_the_chargex_list(rule):
    for codes in (rule.codes, *rule.codes_by_kind.values()):
        want = OCPP16_TO_MREC.get(codes.ocpp16)
        if want is not None:
            assert codes.mrec == want, f"{rule.id}: {codes.ocpp16} is {want}"
        if codes.mrec is not None:
            assert codes.mrec in CHARGEX
            back = next((o for o, m in OCPP16_TO_MREC.items() if m == codes.mrec), None)
            assert back in (None, codes.ocpp16), f"{rule.id}: {codes.mrec} goes with {back}"


def test_a_lost_phase_is_chargex_undervoltage():
    codes = load_rules()["phase_loss"].codes
    assert (codes.ocpp16, codes.mrec) == ("UnderVoltage", "CX006")


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        ('ocpp16 = "UnderVoltage"', "errorCode UnderVoltage is ChargeX MREC CX006"),
        (
            'ocpp16 = "OtherError", mrec = "CX004"',
            r"MREC CX004 \(OverCurrentFailure\) goes with errorCode OverCurrentFailure",
        ),
    ],
)
def test_a_rule_file_with_codes_that_disagree_is_refused(tmp_path, codes, message):
    path = tmp_path / "site.toml"
    path.write_text(
        f"""
[[rule]]
id = "site_rule"
scope = "connector"
condition = "meter.voltage_l1 < 100"
severity = "warning"
faulted = false
confidence = 0.5
codes = {{ {codes}, component = "ElectricalFeed", variable = "ACVoltage" }}
title = {{ en = "t", de = "t" }}
root_cause = {{ en = "r", de = "r" }}
driver_message = {{ en = "d", de = "d" }}
technician_steps = {{ en = ["a", "b"], de = ["a", "b"] }}
"""
    )
    with pytest.raises(RuleError, match=message):
        load_rule_file(path)
