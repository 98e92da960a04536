"""The CLI's views at 80 and 160 columns against committed snapshots (tests/snapshots.py),
plus what must hold at any width: nothing wider than the terminal, the faults first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fault_helpers import rule_fault
from snapshots import WIDTHS, check

from agent.cli.live import LiveState, render
from agent.config import load_config
from agent.events import DeviceHealth, FaultLatch, HealthState, Reading, SessionEvent

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 8, 14, 30, 0, tzinfo=UTC)


def demo_state() -> LiveState:
    """The demo station mid-session with one fault active and one latched."""
    cfg = load_config(ROOT / "config" / "demo.toml")
    state = LiveState(cfg, started=NOW - timedelta(minutes=62, seconds=5))
    for device, quantity, value in (
        ("evse1", "cp_state", "C"),
        ("evse1", "offered_current_a", 32.0),
        ("evse1", "charging_enabled", True),
        ("evse1", "evse_error_code", 12),
        ("meter1", "voltage_l1", 231.2),
        ("meter1", "voltage_l2", 229.8),
        ("meter1", "voltage_l3", 230.4),
        ("meter1", "current_l1", 31.1),
        ("meter1", "current_l2", 31.0),
        ("meter1", "current_l3", 30.9),
        ("meter1", "power_w", 21400.0),
        ("meter1", "energy_import_wh", 1234567),
        ("meter1", "frequency_hz", 50.01),
    ):
        state.feed(Reading(ts=NOW, device=device, quantity=quantity, value=value, unit=""))
    for name, latency in (("meter1", 12.0), ("evse1", 8.0)):
        state.feed(
            DeviceHealth(
                ts=NOW, device=name, bus="lan", state=HealthState.OK, latency_ms=latency,
                polls=3721, last_good=NOW - timedelta(seconds=0.4),
            )
        )  # fmt: skip
    state.feed(
        SessionEvent(
            ts=NOW - timedelta(seconds=40.7), connector=1, status="Charging", kind="started",
            session_id="0f3c9a52-6b1e-4c47-9d0e-2a7b8c1d4e5f", energy_wh=2310, power_w=21400,
            cost_incl_vat=Decimal("1.42"), currency="EUR",
        )
    )  # fmt: skip
    state.feed(rule_fault("evse_contactor_fault", [1], ts=NOW, fault_id="20261208T143000Z-aa01"))
    backwards = rule_fault("energy_register_backwards", [1], ts=NOW, fault_id="F-latched")
    state.feed(backwards.model_copy(update={"clear": "manual", "latch": "block"}))
    state.feed(
        FaultLatch(
            ts=NOW, fault_id="F-latched", rule=backwards.rule, scope=backwards.scope,
            connectors=[1], state="latched", faulted=True, title=backwards.title,
        )
    )  # fmt: skip
    state.log.append("15:29:59  connector 1: vehicle plugged in")
    return state


@pytest.mark.parametrize("width", WIDTHS)
def test_live_view_puts_faults_and_health_first_and_fits(width: int) -> None:
    text = check("live", render(demo_state(), now=NOW), width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    order = [next(i for i, x in enumerate(lines) if key in x)
             for key in ("active faults: 2", "device health", "connector 1 —")]  # fmt: skip
    assert order == sorted(order), order
    assert "2026-12-08 15:30:00 CET" in lines[0] and "up 1 h 02 min" in lines[0]
    joined = " ".join(text.replace("│", " ").split())
    assert "latched; only by a technician: `evedge faults clear F-latched --note …`" in joined
    assert "Charging · 21.4 kW · 2.31 kWh · 1.42 EUR · 40.7 s" in joined


def test_live_view_without_faults_says_so() -> None:
    state = demo_state()
    state.faults.clear()
    assert "no active faults" in check("live-no-faults", render(state, now=NOW), 80)


def test_status_writes_sync_and_api_counters_as_words_not_dicts() -> None:
    from agent.cli import common
    from agent.cli.status_cmd import _print
    from agent.ops import StatusReport

    report = StatusReport(
        station="DEMO-0001",
        source="service",
        connectors=[],
        devices=[],
        faults=[],
        sync={
            "ocpp": {
                "connected": True,
                "boot_status": "Accepted",
                "url": "ws://csms/DEMO",
                "outbox": {
                    "pending": 2,
                    "by_action": {"MeterValues": 2},
                    "sent_since_start": 40,
                    "transactions_without_id": 0,
                },
            },
            "mqtt": {
                "connected": False,
                "broker": "broker:8883",
                "published": 5,
                "acked": 5,
                "backlog": 0,
                "last_error": "connection refused",
            },
        },
        backlog={"charge_records": 0, "ocpp": 2},
        api={"connections": 1, "refused_by_limits": 0},
    )
    with common.console.capture() as cap:
        _print(report, "en")
    text = cap.get()
    assert "{" not in text and "=" not in text, text
    said = " ".join(text.split())
    assert "OCPP ● connected boot Accepted ws://csms/DEMO" in said, said
    assert "outbox 2 waiting (MeterValues 2) · 40 delivered" in said
    assert "MQTT ● offline broker broker:8883" in said and "last error: connection refused" in said
    assert "backlog (not yet confirmed by the cloud): charge records 0, ocpp 2" in said
    assert "local API: connections 1, refused by limits 0" in said


def test_live_view_in_utc() -> None:
    state = demo_state()
    state.utc = True
    head = check("live-utc", render(state, now=NOW), 80).splitlines()[0]
    assert "2026-12-08 14:30:00 UTC" in head, head
