"""Rule files and the condition language: what is accepted, what is refused and how."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import ClassVar

import pytest

from agent.config import ConfigError, parse_config
from agent.diagnosis import codes as C
from agent.diagnosis.expr import ExprError, Ref, compile_expr
from agent.diagnosis.rules import RULES_DIR, RuleError, load_rule_file, load_rules
from drivers import quantities

GOOD = """
[[rule]]
id = "{id}"
scope = "{scope}"
condition = "{condition}"
raise_after_s = 2
clear_after_s = 5
severity = "warning"
faulted = {faulted}
confidence = 0.8
explains = {explains}
codes.ocpp16 = "{ocpp16}"
codes.mrec = "{mrec}"
codes.component = "{component}"
codes.variable = "{variable}"
title = {{ en = "Test", de = "Test" }}
root_cause = {{ en = "{root}", de = "Ursache" }}
driver_message = {{ en = "x", de = "x" }}
technician_steps = {{ en = ["a", "b"], de = ["a", "b"] }}
"""
DEFAULTS = dict(
    id="site_rule",
    scope="connector",
    condition="meter.voltage_l1 < 100",
    faulted="false",
    explains="[]",
    ocpp16="OtherError",
    mrec="CX015",
    component="ElectricalFeed",
    variable="Problem",
    root="connector {connector}",
)


def rule_file(tmp_path: Path, name: str = "site.toml", *rules: dict) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    text = "".join(GOOD.format(**{**DEFAULTS, **r}) for r in (rules or ({},)))
    (d / name).write_text(text)
    return d


def refused(tmp_path: Path, match: str, *rules: dict) -> str:
    d = rule_file(tmp_path, "site.toml", *rules)
    load_rules.cache_clear()
    with pytest.raises(RuleError, match=match) as e:
        load_rules(d)
    return str(e.value)


# -------------------------------------------------------------------- shipped rules


def test_shipped_rules_load_and_cover_every_evse_fault():
    rules = load_rules()
    assert len(rules) >= 30
    claimed = {f for r in rules.values() for f in r.evse_faults}
    assert claimed == (set(quantities.EVSE_FAULTS) - C.EVSE_NOT_A_FAULT) | {C.UNMAPPED}
    for r in rules.values():
        assert r.file.endswith(".toml") and (RULES_DIR / r.file).exists()
        for lang in ("en", "de"):  # texts in both languages, steps in the same order
            assert len(r.technician_steps.en) == len(getattr(r.technician_steps, lang))


def test_mrec_codes_match_their_ocpp16_meaning():
    # Where a rule sends a ChargeX code whose name is an OCPP 1.6 errorCode, they agree.
    for r in load_rules().values():
        mrec = r.codes.mrec
        if mrec and C.MREC_CODES[mrec] in C.OCPP16_ERROR_CODES:
            assert C.MREC_CODES[mrec] == r.codes.ocpp16, r.id


def test_a_good_site_rule_loads_next_to_the_shipped_ones(tmp_path):
    d = rule_file(tmp_path)
    rules = load_rules(d)
    assert "site_rule" in rules and "supply_outage" in rules
    assert rules["site_rule"].file == "site.toml"
    cfg = parse_config(f'[station]\nid = "S"\n[diagnosis]\nrules_dir = "{d}"\n')
    assert cfg.diagnosis.rules_dir == d


# ----------------------------------------------------------------- bad rule files


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(condition="meter.voltage_l4 < 100"), "unknown quantity 'voltage_l4'"),
        (dict(condition="meter.voltage_l1 < 'high'"), "threshold of the wrong type"),
        (dict(condition="evse.cp_state == 3"), "threshold of the wrong type"),
        (dict(condition="meter.voltage_l1 < cfg.nominal_voltage"), "unknown threshold"),
        (dict(scope="galaxy"), "scope: Input should be"),
        (dict(scope="station", root="x"), "unknown name 'meter' in a station rule"),
        (dict(ocpp16="MeltDown"), "unknown OCPP 1.6 errorCode 'MeltDown'"),
        (dict(mrec="CX027"), "unknown ChargeX MREC code 'CX027'"),
        (dict(component="Toaster"), "unknown OCPP 2.0.1 component 'Toaster'"),
        (dict(variable="Melted"), "component ElectricalFeed has no variable 'Melted'"),
        (dict(ocpp16="EVCommunicationError", faulted="true"), "is a warning only"),
        (dict(explains='["no_such_rule"]'), "explains: no rule 'no_such_rule'"),
        (dict(explains='["site_rule"]'), "cannot explain itself"),
        (dict(root="on {charger}"), r"unknown placeholder \{charger\}"),
        (dict(condition="__import__('os').system('x')"), "not a name|only plain function"),
        (dict(condition="meter.voltage_l1 if True else 0"), "not allowed in a condition"),
        (dict(condition="delta(meter.energy_import_wh, cfg.nominal_v) > 0"), "literal number"),
        (dict(condition="delta(meter.cp_state, 10) > 0"), "non-numeric reading"),
        (dict(condition="meter.voltage_l1 <"), "not a valid expression"),
    ],
)
def test_a_bad_rule_is_refused_naming_file_and_rule(tmp_path, change, match):
    msg = refused(tmp_path, match, change)
    assert msg.startswith("site.toml: rule 'site_rule': ")


def test_a_cycle_in_explains_is_refused(tmp_path):
    msg = refused(
        tmp_path,
        "cycle",
        dict(id="cause_a", explains='["cause_b"]'),
        dict(id="cause_b", explains='["cause_a"]'),
    )
    assert "cause_a -> cause_b -> cause_a" in msg or "cause_b -> cause_a -> cause_b" in msg
    assert msg.startswith("site.toml: rule 'cause_")


def test_a_site_rule_may_explain_shipped_rules_transitively(tmp_path):
    from agent.diagnosis.rules import explained_closure

    d = rule_file(tmp_path, "site.toml", dict(explains='["undervoltage"]'))
    rules = load_rules(d)
    # undervoltage (shipped) explains evse_undervoltage: the site rule explains both.
    assert explained_closure(rules)["site_rule"] == {"undervoltage", "evse_undervoltage"}


def test_other_cross_file_problems(tmp_path):
    refused(tmp_path, "id already used in supply.toml", dict(id="supply_outage"))
    d = tmp_path / "claims"
    d.mkdir()
    (d / "x.toml").write_text(
        GOOD.format(**DEFAULTS).replace(
            'condition = "meter.voltage_l1 < 100"', 'evse_faults = ["rcd_dc"]'
        )
    )
    load_rules.cache_clear()
    with pytest.raises(RuleError, match="'rcd_dc' is already handled by rule 'residual_current'"):
        load_rules(d)


def test_not_toml_unknown_key_and_missing_german(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[[rule]\n")
    with pytest.raises(RuleError, match=r"bad\.toml: not valid TOML"):
        load_rule_file(p)
    p.write_text(GOOD.format(**DEFAULTS) + 'colour = "red"\n')
    with pytest.raises(RuleError, match="rule 'site_rule': colour: unknown key"):
        load_rule_file(p)
    p.write_text(GOOD.format(**DEFAULTS).replace('de = "Ursache"', 'fr = "cause"'))
    with pytest.raises(RuleError, match=r"root_cause\.de: Field required"):
        load_rule_file(p)
    p.write_text('title = "x"\n')
    with pytest.raises(RuleError, match=r"holds \[\[rule\]\] tables and nothing else"):
        load_rule_file(p)


def test_bad_site_rules_are_a_config_error_naming_the_field(tmp_path):
    d = rule_file(tmp_path, "site.toml", dict(condition="meter.voltage_l4 < 1"))
    load_rules.cache_clear()
    with pytest.raises(ConfigError) as e:
        parse_config(f'[station]\nid = "S"\n[diagnosis]\nrules_dir = "{d}"\n', "station.toml")
    (path, msg), *_ = e.value.problems
    assert path == "diagnosis"
    assert "site.toml: rule 'site_rule': condition:" in msg and "voltage_l4" in msg


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ("[diagnosis.rule.no_such_rule]\nenabled = false", "no rule 'no_such_rule'"),
        ("[diagnosis]\nnominal_frequency_hz = 55", "must be 50 or 60"),
        ("[diagnosis]\ntemperature_stop_c = 60", "must be above temperature_derate_c"),
        ("[diagnosis]\ncloud_endpoints = ['csms']", "endpoint must be host:port"),
        ("[diagnosis]\nundervoltage_pct = -1", "greater than 0"),
        ("[diagnosis]\ncolour = 1", "unknown key"),
    ],
)
def test_bad_diagnosis_config_is_refused(section, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(f'[station]\nid = "S"\n{section}\n', "station.toml")
    assert str(e.value).startswith("station.toml: diagnosis")


def test_thresholds_default_to_en50160():
    cfg = parse_config('[station]\nid = "S"\n').diagnosis
    t = cfg.thresholds()
    assert (t["undervoltage_v"], t["overvoltage_v"]) == pytest.approx((207.0, 253.0))
    assert (t["freq_min_hz"], t["freq_max_hz"]) == (49.5, 50.5)
    tuned = parse_config('[station]\nid = "S"\n[diagnosis]\nnominal_voltage_v = 120\n')
    assert tuned.diagnosis.thresholds()["undervoltage_v"] == pytest.approx(108.0)


# --------------------------------------------------------------- the expression language


class Names:
    """A resolver that knows a few names, and an env that serves their values."""

    kinds: ClassVar[dict[str, str]] = {"a.x": "num", "a.y": "num", "a.s": "str", "a.b": "bool"}

    def __init__(self, **values):
        self.values = {k.replace("_", "."): v for k, v in values.items()}
        self.calls: list[tuple] = []
        self.wakes: list[float] = []

    def kind(self, ref: Ref, reading: bool):
        if str(ref) not in self.kinds:
            raise ExprError(f"{ref}: unknown")
        return self.kinds[str(ref)]

    def lookup(self, ref: Ref):
        return self.values.get(str(ref))

    def reading_fn(self, fn, ref, seconds):
        self.calls.append((fn, str(ref), seconds))
        return self.values.get(f"{fn}.{ref}")

    def wake_in(self, seconds):
        self.wakes.append(seconds)


def ev(text: str, **values):
    env = Names(**values)
    return compile_expr(text, env)(env)


def test_three_valued_logic():
    assert ev("a.x > 1 and a.y > 1", a_x=2, a_y=2) is True
    assert ev("a.x > 1 and a.y > 1", a_x=2) is None  # unknown: neither raise nor clear
    assert ev("a.x > 1 and a.y > 1", a_x=0) is False  # False wins over unknown
    assert ev("a.x > 1 or a.y > 1", a_y=2) is True
    assert ev("a.x > 1 or a.y > 1", a_x=0) is False  # known evidence says no
    assert ev("a.x > 1 or a.y > 1") is None
    assert ev("not a.b") is None and ev("not a.b", a_b=False) is True
    assert ev("1 < a.x < 3", a_x=2) is True and ev("1 < a.x < 3", a_x=3) is False


def test_arithmetic_functions_and_membership():
    assert ev("min(a.x, a.y) + 1", a_x=3, a_y=5) == 4
    assert ev("max(a.x, a.y)", a_y=5) == 5  # min/max skip unknown values
    assert ev("max(a.x, a.y)") is None
    assert ev("abs(a.x - 10) / 2", a_x=4) == 3
    assert ev("a.x / 0", a_x=1) is None  # never an exception at run time
    assert ev("default(a.x, 7)") == 7 and ev("default(a.x, 7)", a_x=1) == 1
    assert ev("a.s in ('C', 'D')", a_s="C") is True
    assert ev("a.s not in ('C', 'D')", a_s="C") is False
    assert ev("a.s in ('C', 'D')") is None


def test_window_functions_take_a_literal_window_and_are_recorded():
    env = Names(**{"delta.a.x": -5})
    expr = compile_expr("delta(a.x, 10) < 0 and rate(a.y, 30) > 1", env)
    assert expr.windows == {Ref(("a", "x")): 10.0, Ref(("a", "y")): 30.0}
    assert expr(env) is None  # rate unknown
    assert env.calls[0] == ("delta", "a.x", 10.0)


@pytest.mark.parametrize(
    "text",
    [
        "open('/etc/passwd')",
        "a.x.__class__",
        "[c for c in a.s]",
        "lambda: 1",
        "a.s[0]",
        "a.x ** 2",
        "f'{a.x}'",
        "(a.x := 3)",
        "a.x > None",
        "age(3)",
        "delta(a.x, 0)",
        "delta(a.x, 7200)",
        "min(a.s, a.x)",
        "a.s + 1",
        "x" * 3000,
    ],
)
def test_unsafe_or_meaningless_expressions_are_refused(text):
    with pytest.raises(ExprError):
        compile_expr(text, Names())


def test_rules_file_example_in_the_docs_is_valid(tmp_path):
    # The format shown in agent/diagnosis/rules.py's docstring loads as written.
    from agent.diagnosis import rules as R

    doc = R.__doc__ or ""
    block = doc[doc.index("    [[rule]]\n") : doc.index("Everything is checked")]
    text = textwrap.dedent(block).replace("...", "x").replace('id = "undervoltage"', 'id = "uv2"')
    p = tmp_path / "doc.toml"
    p.write_text(text)
    (rule,) = load_rule_file(p)
    assert rule.id == "uv2" and rule.codes.mrec == "CX006"


@pytest.mark.parametrize(
    ("text", "values", "result", "wakes"),
    [
        ("unavailable(a.x) > 30", {"unavailable_a_x": 12.0}, False, [18.0]),
        ("unavailable(a.x) > 30", {"unavailable_a_x": 0.0}, False, []),  # available: stays 0
        ("unavailable(a.x) > 30", {"unavailable_a_x": 31.0}, True, []),
        ("age(a.x) >= a.y", {"age_a_x": 0.0, "a_y": 10.0}, False, [10.0]),
        ("age(a.x) > 5", {}, None, []),  # unknown: nothing to wait for
        ("delta(a.x, 30) > 5", {"delta_a_x": 1.0}, False, []),  # not growing with time
    ],
)
def test_a_growing_comparison_says_when_it_turns(text, values, result, wakes):
    env = Names(**values)
    assert compile_expr(text, env)(env) is result
    assert env.wakes == wakes
