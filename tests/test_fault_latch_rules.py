"""The rule schema for clearing and latching: what is accepted, what is refused and how."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config
from agent.diagnosis.rules import RuleError, load_rule_file, load_rules

BASE = """
[[rule]]
id = "site_latch"
scope = "connector"
condition = "evse.cp_state == 'C' and meter.current_l1 < 0.5"
raise_after_s = 2
clear_after_s = 5
severity = "error"
faulted = {faulted}
confidence = 0.8
codes = {{ ocpp16 = "OtherError", component = "ElectricalFeed", variable = "Problem" }}
title = {{ en = "Test", de = "Test" }}
root_cause = {{ en = "connector {{connector}}", de = "Ursache" }}
driver_message = {{ en = "x", de = "x" }}
technician_steps = {{ en = ["a", "b"], de = ["a", "b"] }}
{fields}
"""


def load(tmp_path: Path, fields: str, faulted: str = "true"):
    p = tmp_path / "site.toml"
    p.write_text(BASE.format(fields=fields, faulted=faulted))
    return load_rule_file(p)


def test_a_latching_rule_loads_with_its_compiled_evidence(tmp_path):
    (rule,) = load(
        tmp_path,
        'clear = "evidence"\nclear_evidence = "delta(meter.energy_import_wh, 20) > 0"\n'
        'latch = "retry"\nretries = 3\nretry_backoff_s = 45',
    )
    assert rule.latches and (rule.latch, rule.retries, rule.retry_backoff_s) == ("retry", 3, 45)
    assert [r.parts for r in rule.evidence_expr.windows] == [("meter", "energy_import_wh")]
    (manual,) = load(tmp_path, 'clear = "manual"')
    assert manual.latches and manual.latch == "block" and manual.evidence_expr is None
    (plain,) = load(tmp_path, "")
    assert not plain.latches and plain.clear == "condition"


@pytest.mark.parametrize(
    ("fields", "faulted", "match"),
    [
        ('clear = "evidence"', "true", 'clear_evidence: required with clear = "evidence"'),
        ("clear_evidence = \"evse.cp_state == 'C'\"", "true", "clear_evidence: only with"),
        ('clear = "manual"\nclear_evidence = "1 > 0"', "true", "clear_evidence: only with"),
        ('latch = "block"', "true", "latch: only for a rule that latches"),
        ('clear = "manual"\nlatch = "retry"', "true", "retries: required with latch"),
        ('clear = "manual"\nretries = 2', "true", 'retries: only with latch = "retry"'),
        ('clear = "manual"\nlatch = "block"', "false", "latch: only for faulted rules"),
        ('clear = "sometimes"', "true", "clear: Input should be"),
        ('clear = "manual"\nlatch = "retry"\nretries = 0', "true", "retries: Input should be"),
    ],
)
def test_a_bad_clear_or_latch_is_refused_naming_file_rule_and_field(
    tmp_path, fields, faulted, match
):
    with pytest.raises(RuleError) as e:
        load(tmp_path, fields, faulted)
    assert "site.toml: rule 'site_latch'" in str(e.value) and match in str(e.value)


def test_a_bad_evidence_expression_is_refused_like_a_condition(tmp_path):
    with pytest.raises(RuleError, match=r"site_latch'?: clear_evidence: .*unknown quantity"):
        load(tmp_path, 'clear = "evidence"\nclear_evidence = "meter.bogus > 1"')


def test_hardware_rules_latch_and_supply_and_comm_rules_do_not():
    rules = load_rules()
    hardware = {
        "welded_contactor": "manual",
        "contactor_fails_to_close": "evidence",
        "overcurrent": "evidence",
        "energy_register_frozen": "evidence",
        "energy_register_jump": "evidence",
        "energy_register_backwards": "manual",
        "connector_lock_failure": "evidence",
        "residual_current": "evidence",
        "ground_failure": "manual",
        "over_temperature_stop": "evidence",
        "evse_contactor_fault": "evidence",
    }
    assert {rid: rules[rid].clear for rid in hardware} == hardware
    for rid in ("supply_outage", "undervoltage", "device_not_answering", "modbus_exception",
                "bus_silent", "frame_errors", "cloud_unreachable", "evse_meter_comm"):  # fmt: skip
        assert rules[rid].clear == "condition", rid


def test_site_tuning_of_retries_only_for_retry_rules():
    base = '[station]\nid = "X"\n'
    cfg = parse_config(
        base + "[diagnosis.rule.contactor_fails_to_close]\nretries = 5\nretry_backoff_s = 10\n",
        "x.toml",
    )
    assert cfg.diagnosis.rule["contactor_fails_to_close"].retries == 5
    with pytest.raises(ConfigError, match="welded_contactor: retries: only for a rule with latch"):
        parse_config(base + "[diagnosis.rule.welded_contactor]\nretries = 5\n", "x.toml")
