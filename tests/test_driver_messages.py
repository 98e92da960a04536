"""Driver messages through real session flows on the simulated station: what the display
says at each step, that its figures are the session's, faults explained with what to do and
the hotline, the console display, and the composition rules on their own."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fault_helpers import rule_fault
from sessions_helpers import CARD, billed_config, body, running

from agent.diagnosis.rules import load_rules
from agent.driver import numbers
from agent.driver.catalog import default_catalog
from agent.driver.config import DriverConfig
from agent.driver.select import ConnectorView, compose, to_message
from agent.events import DriverMessage, SessionEvent
from agent.sessions.model import card_token
from hil.display import ConsoleDisplay

DRIVER = DriverConfig(
    language="en",
    operator="Example Charging GmbH",
    hotline="+49 30 1234 5678",
    contact="support@example.com",
    report_url="https://charge.example.com/report",
)
EN = default_catalog().style("en")
DE = default_catalog().style("de")


def with_driver(cfg, driver: DriverConfig = DRIVER):
    return cfg.model_copy(update={"driver": driver})


class Recorder:
    """SessionEvents and DriverMessages in the order the bus delivered them."""

    def __init__(self, tmp_path: Path):
        self.subs = []
        self.display = ConsoleDisplay(lang="de", path=tmp_path / "display.txt")

    def setup(self, agent) -> None:
        self.subs.append(agent.bus.subscribe(SessionEvent, DriverMessage))
        agent.driver.add_display(self.display)

    def drain(self) -> list:
        out = []
        while (ev := self.subs[0].get_nowait()) is not None:
            out.append(ev)
        return out


async def until_state(rig, state: str, timeout: float = 15) -> DriverMessage:
    driver = rig.agent.driver
    await rig.until(lambda: driver.current(1).state == state, timeout, f"display {state}")
    return driver.current(1)


async def test_display_follows_a_session_with_the_sessions_own_figures(tmp_path):
    cfg = with_driver(billed_config(tmp_path))
    rec = Recorder(tmp_path)
    async with running(cfg, setup=rec.setup) as rig:
        idle = await until_state(rig, "Available")
        assert idle.headline == {"en": "Plug in your vehicle", "de": "Fahrzeug anschließen"}
        # AFIR: the price before the start, incl. VAT (0.39 EUR/kWh + 19 %).
        assert "0.4641 EUR per kWh" in idle.lines["en"]
        assert "0,4641 € pro kWh" in idle.lines["de"]
        assert idle.report_url == "https://charge.example.com/report?station=TEST&connector=1"

        rig.sim.plug_in(1)
        plugged = await until_state(rig, "Preparing")
        assert plugged.headline["en"] == "Present your card or scan the QR code"
        assert "0.4641 EUR per kWh" in plugged.lines["en"]
        screen = (tmp_path / "display.txt").read_text()
        assert "Karte vorhalten oder QR-Code scannen" in screen and "connector 1" in screen

        await rig.engine.authorize(1, card_token(CARD))
        await until_state(rig, "Charging")
        await rig.until(lambda: (rig.agent.driver.current(1).energy_wh or 0) > 0, 15, "energy")
        assert "Lädt ·" in (tmp_path / "display.txt").read_text()
        await rig.engine.authorize(1, card_token(CARD))  # the card again: stop
        done = await until_state(rig, "Finishing")
        record = body(await rig.record())

    # Every Charging message shows exactly the figures of a session event before it.
    seen: list[SessionEvent] = []
    charging = 0
    for ev in rec.drain():
        if isinstance(ev, SessionEvent):
            seen.append(ev)
            continue
        if ev.state != "Charging" or ev.energy_wh is None:
            continue
        charging += 1
        src = next(
            s
            for s in reversed(seen)
            if s.kind in ("started", "progress")
            and (s.energy_wh, s.cost_incl_vat, s.power_w) == (ev.energy_wh, ev.cost, ev.power_w)
        )
        parts = ["Charging"]
        if src.power_w is not None:
            parts.append(numbers.power(src.power_w, EN))
        parts.append(numbers.energy(src.energy_wh, EN))
        if src.cost_incl_vat is not None:
            parts.append(numbers.money(src.cost_incl_vat, "EUR", EN))
        assert ev.headline["en"] == " · ".join(parts)
        assert ev.headline["de"].startswith("Lädt · ") and " kWh" in ev.headline["de"]
    assert charging >= 1

    # After the stop: the charge record's energy and total, in both languages.
    total = record["cost"]["total_incl_vat"]
    assert done.headline["en"] == "Unplug to finish"
    assert f"Charged: {numbers.energy(record['energy_wh'], EN)}" in done.lines["en"]
    assert f"Cost: {numbers.money(Decimal(total), 'EUR', EN)}" in done.lines["en"]
    assert f"Kosten: {numbers.money(Decimal(total), 'EUR', DE)}" in done.lines["de"]
    assert "€" in numbers.money(Decimal(total), "EUR", DE)


async def test_refused_card_says_why_and_who_to_call(tmp_path):
    cfg = with_driver(billed_config(tmp_path))
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await until_state(rig, "Preparing")
        with pytest.raises(Exception, match="Blocked"):
            await rig.engine.authorize(1, card_token("BLOCKED-1"))
        await rig.until(lambda: rig.agent.driver.current(1).level == "warning", 5, "refusal")
        msg = rig.agent.driver.current(1)
        assert msg.lines["en"][0] == "This card is blocked."
        assert "Help: Example Charging GmbH, +49 30 1234 5678" in msg.lines["en"]
        assert msg.lines["de"][0] == "Diese Karte ist gesperrt."
        # Per request, another language; an unknown one is refused by name.
        assert rig.agent.driver.screen(1, "de")["headline"] == (
            "Karte vorhalten oder QR-Code scannen"
        )
        with pytest.raises(ValueError, match="unknown language 'fr'"):
            rig.agent.driver.screen(1, "fr")


async def test_pilot_fault_is_explained_with_driver_actions_first_and_the_hotline(tmp_path):
    cfg = with_driver(billed_config(tmp_path))
    rule = load_rules()["cp_state_e"]
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await until_state(rig, "Charging")
        fid = rig.sim.inject({"kind": "cp_state_e", "connector": 1})
        msg = await until_state(rig, "Faulted")
        await rig.until(lambda: "cp_state_e" in rig.agent.driver.current(1).faults, 15, "rule")
        msg = rig.agent.driver.current(1)
        en = msg.lines["en"]
        assert msg.level == "error" and msg.headline["en"] == "Out of order"
        assert en[0] == rule.driver_message.en  # the diagnosis rule's own explanation
        i = en.index("What you can do:")
        # Driver-fixable first; one connector only, so another station, not "connector N".
        assert en[i + 1 : i + 4] == [
            "Unplug the cable and plug it in again.",
            "Push the plug in fully, or try another cable.",
            "Please use another charging station.",
        ]
        assert en[-3:] == [
            "Help: Example Charging GmbH, +49 30 1234 5678",
            "Contact: support@example.com",
            "Problem? Scan the QR code to report it.",
        ]
        de = msg.lines["de"]
        assert de[0] == rule.driver_message.de
        assert "Kabel abziehen und erneut einstecken." in de
        assert "Hilfe: Example Charging GmbH, +49 30 1234 5678" in de
        rig.sim.clear(fid)
        await rig.until(lambda: rig.agent.driver.current(1).state != "Faulted", 30, "clear")


# ---------------------------------------------------------------- composition on its own


def render(view: ConnectorView, others: list[int]) -> DriverMessage:
    cat = default_catalog()
    return to_message(compose(view, cat, DRIVER, others=others, prices=[]), view, cat, DRIVER)


def test_other_connector_is_offered_only_while_it_works():
    view = ConnectorView(1, status="Faulted")
    view.on_fault_raised(rule_fault("supply_outage", [1]))
    msg = render(view, others=[2])
    assert "Use connector 2 instead." in msg.lines["en"]
    assert "Bitte Ladepunkt 2 benutzen." in msg.lines["de"]
    msg = render(view, others=[])
    assert "Please use another charging station." in msg.lines["en"]
    assert not any("connector 2" in line for line in msg.lines["en"])


def test_driver_fixable_faults_come_first_whatever_their_order():
    view = ConnectorView(1, status="Faulted")
    early = datetime(2026, 1, 1, tzinfo=UTC)
    view.on_fault_raised(rule_fault("welded_contactor", [1], ts=early))  # not driver-fixable
    view.on_fault_raised(rule_fault("connector_lock_failure", [1]))  # driver-fixable, later
    msg = render(view, others=[])
    assert msg.faults == ["connector_lock_failure", "welded_contactor"]
    rules = load_rules()
    en = msg.lines["en"]
    assert en[:2] == [
        rules["connector_lock_failure"].driver_message.en,
        rules["welded_contactor"].driver_message.en,
    ]
    i = en.index("What you can do:")
    assert en[i + 1] == "Push the plug in fully, or try another cable."


def test_a_warning_keeps_the_state_message_and_hidden_faults_stay_hidden():
    view = ConnectorView(1, status="Available")
    view.on_fault_raised(rule_fault("clock_not_synchronized", [1]))
    msg = render(view, others=[])
    assert msg.level == "info" and msg.faults == [] and msg.state == "Available"
    view.on_fault_raised(rule_fault("undervoltage", [1]))
    msg = render(view, others=[])
    assert msg.state == "Available" and msg.level == "warning"
    assert msg.headline["en"] == "Plug in your vehicle"
    assert load_rules()["undervoltage"].driver_message.en in msg.lines["en"]
    assert "Help: Example Charging GmbH, +49 30 1234 5678" in msg.lines["en"]


def test_console_display_draws_a_box_per_connector(tmp_path):
    view = ConnectorView(1)
    display = ConsoleDisplay(lang="de", path=tmp_path / "d.txt", width=40)
    display.show(1, render(view, others=[]))
    display.show(2, render(ConnectorView(2, status="Unavailable"), others=[]))
    lines = (tmp_path / "d.txt").read_text().splitlines()
    assert lines[0].startswith("┌─ connector 1 · Available ")
    assert all(len(line) == 40 for line in lines)
    text = "\n".join(lines)
    assert "│ Fahrzeug anschließen" in text and "Nicht verfügbar" in text
    assert text.index("connector 1") < text.index("connector 2")
    assert "[QR]" not in text  # composed without a report link


async def test_agent_without_driver_section_runs_no_driver_service(tmp_path):
    from agent.runtime import Agent

    agent = Agent(billed_config(tmp_path))
    try:
        assert agent.driver is None
    finally:
        agent.sessions.close()
        agent.store.close()
