"""The driver message catalog is complete: every connector status and every fault rule has
a message in every shipped language, with the same placeholders; a gap is refused by name.
Also number/money formatting per language, the AFIR price lines and the [driver] config."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from agent.billing.tariff import load_tariff, tariff_from_data
from agent.config import ConfigError, parse_config
from agent.diagnosis.rules import load_rules
from agent.driver import numbers
from agent.driver.catalog import (
    MESSAGES_DIR,
    CatalogError,
    check_rules,
    default_catalog,
    load_catalog,
)
from agent.driver.config import SHIPPED_LANGUAGES
from agent.driver.pricing_text import price_parts, tariff_parts
from agent.driver.screen import render
from agent.sessions.model import Status

ROOT = Path(__file__).resolve().parents[1]


def copy_messages(tmp_path: Path) -> Path:
    d = tmp_path / "messages"
    shutil.copytree(MESSAGES_DIR, d)
    return d


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_shipped_catalog_covers_every_status_and_fault_rule_in_every_language():
    cat = default_catalog()
    assert set(cat.languages) == set(SHIPPED_LANGUAGES)
    for lang in cat.languages:
        for status in Status:  # from the session engine's own enum, not the catalog's list
            for part in ("headline", "hint"):
                assert cat.text(lang, f"state.{status.value}.{part}").strip()
    rules = load_rules()
    assert check_rules(cat, rules) == []
    for rule in rules.values():
        advice = cat.advice_for(rule.id)
        assert rule.id in cat.advice, f"{rule.id} has no advice in faults.toml"
        for lang in cat.languages:
            assert rule.driver_message.model_dump()[lang].strip()
        if rule.faulted:  # a driver at a Faulted connector is always told what to do
            assert advice.actions, f"{rule.id}: faulted but no action for the driver"


def test_a_missing_german_text_is_refused_naming_file_and_key(tmp_path):
    d = copy_messages(tmp_path)
    edit(d / "de.toml", 'Blocked = "Diese Karte ist gesperrt."\n', "")
    with pytest.raises(CatalogError) as e:
        load_catalog(d)
    assert e.value.problems == ["de.toml: rejected.Blocked: missing"]


def test_placeholders_must_match_in_every_language(tmp_path):
    d = copy_messages(tmp_path)
    edit(d / "de.toml", 'hotline = "Hilfe: {operator}, {hotline}"', 'hotline = "Hilfe: {operator}"')
    edit(d / "en.toml", 'energy = "Charged: {energy}"', 'energy = "Charged: {energy} {kwh}"')
    with pytest.raises(CatalogError) as e:
        load_catalog(d)
    assert sorted(e.value.problems) == [
        "de.toml: help.hotline: placeholder {hotline} missing (expected ['hotline', 'operator'])",
        "en.toml: session.energy: unknown placeholder {kwh} (expected ['energy'])",
    ]


def test_unknown_keys_bad_format_and_a_missing_language_file_are_refused(tmp_path):
    d = copy_messages(tmp_path)
    edit(d / "en.toml", "[fault]\n", '[fault]\nheadline = "Broken"\n')
    edit(d / "en.toml", 'money = "{amount} {currency}"', 'money = "{amount}"')
    (d / "de.toml").unlink()
    with pytest.raises(CatalogError) as e:
        load_catalog(d)
    text = "\n".join(e.value.problems)
    assert "en.toml: format.money: must use exactly {amount} and {currency}" in text
    assert "en.toml: fault.headline: unknown key (not used by the display)" in text
    assert "de.toml: missing: the station can be configured to use de" in text


def test_a_new_language_needs_every_fault_rule_translated(tmp_path):
    d = copy_messages(tmp_path)
    fr = d / "fr.toml"
    shutil.copy(d / "en.toml", fr)
    edit(fr, 'language = "en"', 'language = "fr"')
    cat = load_catalog(d)  # the texts are complete ...
    assert cat.languages == ("en", "de", "fr")
    problems = check_rules(cat, load_rules())  # ... but no rule has a French driver text
    assert len(problems) == len(load_rules())
    assert any("cp_state_e: driver_message has no 'fr' text" in p for p in problems)


def test_every_fault_rule_needs_advice_and_advice_needs_a_rule(tmp_path):
    d = copy_messages(tmp_path)
    edit(d / "faults.toml", '[rule.overcurrent]\nactions = ["replug", "other_connector"]\n', "")
    edit(d / "faults.toml", "[rule.phase_loss]", "[rule.no_such_rule]\n[rule.phase_loss]")
    problems = check_rules(load_catalog(d), load_rules())
    assert problems == [
        "faults.toml: rule.overcurrent: no advice for this fault rule (what can the driver do?)",
        "faults.toml: rule.no_such_rule: no fault rule has this id",
    ]
    edit(d / "faults.toml", '[rule.supply_outage]\nactions = ["other_connector"]',
         '[rule.supply_outage]\nactions = ["dance"]')  # fmt: skip
    with pytest.raises(CatalogError, match=r"faults.toml: rule.supply_outage.actions.0: Input"):
        load_catalog(d)


def test_numbers_and_money_per_language():
    en, de = default_catalog().style("en"), default_catalog().style("de")
    assert numbers.power(7230.5, en) == "7.2 kW" and numbers.power(7250, de) == "7,3 kW"
    assert numbers.energy(12345, en) == "12.35 kWh" and numbers.energy(12345, de) == "12,35 kWh"
    assert numbers.energy(1_234_567, de) == "1.234,57 kWh"
    assert numbers.money(Decimal("4.1"), "EUR", en) == "4.10 EUR"
    assert numbers.money(Decimal("4.1"), "EUR", de) == "4,10 €"
    assert numbers.money(Decimal("1234.5"), "EUR", de) == "1.234,50 €"
    assert numbers.money(Decimal("1500"), "JPY", en) == "1,500 JPY"  # no minor unit
    assert numbers.money(Decimal("0.476"), "EUR", de, unit_price=True) == "0,476 €"
    assert numbers.money(Decimal("0.119"), "EUR", en) == "0.12 EUR"  # a total: cents
    assert numbers.money(Decimal("-2.5"), "CHF", de) == "-2,50 CHF"


def test_afir_price_lines_before_the_start():
    cat = default_catalog()
    tariff = load_tariff(ROOT / "config" / "tariffs" / "energy-parking-flat.json")
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    parts = tariff_parts(tariff, at, "Europe/Berlin", free_vend=False)
    assert [render(p, cat, "en") for p in parts] == [
        "Prices incl. VAT:",
        "0.476 EUR per kWh",  # 0.40 + 19 %
        "0.119 EUR per minute parking",  # 6.00 EUR/h + 19 %, per minute
        "0.60 EUR per session",
        "Minimum 2.38 EUR",
        "Maximum 71.40 EUR",
    ]
    assert [render(p, cat, "de") for p in parts][:2] == ["Preise inkl. MwSt.:", "0,476 € pro kWh"]
    no_vat = tariff_from_data(
        {
            "id": "T",
            "currency": "EUR",
            "elements": [{"price_components": [{"type": "TIME", "price": 3.0}]}],
        }
    )
    from agent.billing.pricing import display_prices

    parts = price_parts(display_prices(no_vat, at, tz="UTC"))
    assert [render(p, cat, "en") for p in parts] == [
        "Prices incl. VAT:",  # OCPI 2.2.1: vat omitted = no VAT applicable
        "0.05 EUR per minute charging",
    ]
    free = tariff_parts(None, at, "UTC", free_vend=True)
    assert [render(p, cat, "de") for p in free] == ["Laden ist hier kostenlos."]


def test_driver_config_errors_are_specific():
    base = '[station]\nid = "S1"\n[driver]\noperator = "Op"\nhotline = "+49 30 1234"\n'
    cfg = parse_config(base + 'language = "de"\nreport_url = "https://ex.com/report"\n')
    assert cfg.driver is not None and cfg.driver.language == "de"
    assert parse_config('[station]\nid = "S1"\n').driver is None
    cases = {
        'language = "fr"\n': ("driver.language", "must be one of en, de, got 'fr'"),
        'report_url = "http://ex.com/r"\n': ("driver.report_url", "must be an https:// address"),
        'report_url = "https://ex.com/r?x=1"\n': ("driver.report_url", "must have no ?query"),
        "colour = 1\n": ("driver.colour", "unknown key"),
    }
    for line, (path, msg) in cases.items():
        with pytest.raises(ConfigError) as e:
            parse_config(base + line)
        ((got_path, got_msg),) = e.value.problems
        assert got_path == path and msg in got_msg, (line, e.value.problems)
    with pytest.raises(ConfigError) as e:
        parse_config('[station]\nid = "S1"\n[driver]\noperator = "Op"\nhotline = "call us"\n')
    assert e.value.problems[0][0] == "driver.hotline"
