"""The session engine on the simulated station: the real Modbus servers on loopback, the real
agent (pollers, bus, store), the EV driven through the simulator."""

from __future__ import annotations

import asyncio
import warnings
from decimal import Decimal

import pytest
from pyocmf import OCMF
from pyocmf.exceptions import SpecWarning
from sessions_helpers import CARD, TARIFFS, billed_config, body, running

from agent.events import SessionEvent
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from agent.sessions.records import verify_records


def pyocmf_ok(b: dict) -> None:
    """Both OCMF records verify with pyocmf, and pass its begin/end (Eichrecht) checks."""
    key = b["ocmf"]["public_key"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        begin = OCMF.from_string(b["ocmf"]["begin"])
        end = OCMF.from_string(b["ocmf"]["end"])
    assert begin.verify_signature(key) is True
    assert end.verify_signature(key) is True
    assert begin.check_eichrecht(end, errors_only=True) == []


async def test_card_session_bills_exactly_the_register_delta(tmp_path):
    # The simulator's clock is ours: the register moves only when the test steps it.
    cfg = billed_config(tmp_path)
    async with running(cfg, tick_s=None) as rig:
        await rig.card_charging()
        start = rig.conn.session.row.start_wh
        assert start == rig.register()  # nothing flowed before the EVSE was enabled
        for _ in range(60):
            # Simulated time keeps pace with the clock: faster would be an implausible
            # register jump, which the engine refuses to bill (see the jump test).
            await asyncio.sleep(0.05)
            rig.sim.step(0.05)
        end = rig.register()
        rig.sim.unplug(1)
        rec = await rig.record()
    b = body(rec)
    assert end - start > 10
    assert rec.energy_wh == b["energy_wh"] == end - start  # exactly the register delta
    assert (b["meter"]["start_wh"], b["meter"]["end_wh"]) == (start, end)
    assert b["stop"] == {"reason": "EVDisconnected", "by": "ev", "detail": ""}
    assert b["auth"] == {"method": "LocalList", "token": CARD, "token_type": "LOCAL"}
    assert b["review"] == {"required": False, "reasons": [], "faults": []}
    # The power x time evidence agrees with the register (it is never billed).
    assert abs(b["energy_estimate"]["wh"] - b["energy_wh"]) <= max(5, b["energy_wh"] // 10)
    # 0.39 EUR/kWh per Wh, 19 % VAT: the bill is the energy times the price, in Decimal.
    excl = (Decimal(end - start) * Decimal("0.39") / 1000).quantize(Decimal("0.01"))
    assert Decimal(b["cost"]["total_excl_vat"]) == excl
    assert b["cost"]["currency"] == "EUR" and b["tariff_id"] == "EVEDGE-SIMPLE-039"
    pyocmf_ok(b)


async def test_status_follows_plug_authorize_suspend_resume_unplug(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        assert rig.conn.status.value == "Available"
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        rig.sim.ev_suspend(1, True)
        await rig.status("SuspendedEV")
        rig.sim.ev_suspend(1, False)
        await rig.status("Charging")
        await asyncio.sleep(0.5)
        rig.sim.unplug(1)
        rec = await rig.record()
        await rig.status("Available")
        with rig.store() as st:
            statuses = [s for _, s, _, _ in st.events(rec.session_id)]
    assert statuses == [
        "SuspendedEVSE", "SuspendedEV", "Charging", "SuspendedEV", "Charging", "Available",
    ]  # fmt: skip
    seen = [e.status for e in rig.events()]
    assert seen[:1] == ["Preparing"] and seen[-1] == "Available"
    # The EVSE was switched on for the session and off after it (read back each time).
    snap = rig.sim.snapshot()["connectors"][1]["evse"]
    assert snap["enabled"] is False


async def test_same_card_stops_and_connector_finishes_until_unplugged(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        await asyncio.sleep(0.5)
        with pytest.raises(CommandRefused, match="another session"):
            await rig.engine.authorize(1, card_token("SOMEONE-ELSE"))
        assert await rig.engine.authorize(1, card_token(CARD)) == "stopped"
        rec = await rig.record()
        await rig.status("Finishing")
        assert rig.sim.snapshot()["connectors"][1]["cp_state"] == "B"  # EVSE off, car there
        rig.sim.unplug(1)
        await rig.status("Available")
    b = body(rec)
    assert b["stop"]["reason"] == "Local" and b["stop"]["by"] == "card"
    assert '"TX":"L"' in b["ocmf"]["end"]


@pytest.mark.parametrize(("by", "reason", "tx"), [("remote", "Remote", "R"), ("cli", "Local", "L")])
async def test_remote_and_cli_stop(tmp_path, by, reason, tx):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.remote_start(1, card_token("CSMS-TOKEN-7"))
        await rig.status("Charging")
        assert await rig.engine.stop(1, by=by) == "stopped"
        rec = await rig.record()
        with pytest.raises(CommandRefused, match="no session"):
            await rig.engine.stop(1, by=by)
    b = body(rec)
    assert b["stop"]["reason"] == reason
    assert b["auth"]["method"] == "Remote"
    assert f'"TX":"{tx}"' in b["ocmf"]["end"]
    assert '"IT":"CENTRAL"' in b["ocmf"]["begin"]


async def test_authorization_refusals_leave_no_session(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        with pytest.raises(CommandRefused, match="Blocked"):
            await rig.engine.authorize(1, card_token("BLOCKED-1"))
        with pytest.raises(CommandRefused, match="Unknown"):
            await rig.engine.authorize(1, card_token("NOBODY"))
        await asyncio.sleep(0.3)
        assert rig.conn.session is None and rig.conn.status.value == "Preparing"
        assert [e.reason for e in rig.events("rejected")] == ["Blocked", "Unknown"]
        assert rig.sim.snapshot()["connectors"][1]["evse"]["enabled"] is False
        # The masked token is all that travels on the bus.
        assert all("NOBODY" not in (e.id_tag or "") for e in rig.events())


async def test_card_before_plug_starts_on_plug_in(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        assert await rig.engine.authorize(1, card_token(CARD)) == "waiting for the plug"
        rig.sim.plug_in(1)
        await rig.status("Charging")
        rig.sim.unplug(1)
        rec = await rig.record()
    assert body(rec)["auth"]["method"] == "LocalList"


async def test_online_authorizer_answer_is_cached_for_offline_use(tmp_path):
    from agent.sessions.auth import OnlineUnavailable
    from agent.sessions.model import AuthStatus

    class Csms:
        def __init__(self):
            self.online = True
            self.asked: list[str] = []

        def reachable(self):
            return self.online

        async def authorize(self, token):
            self.asked.append(token.id)
            if not self.online:
                raise OnlineUnavailable("websocket down")
            return AuthStatus.ACCEPTED, "FLEET-1", None

    csms = Csms()
    cfg = billed_config(tmp_path)

    def setup(agent):
        agent.sessions.authorizer.online = csms

    async with running(cfg, setup=setup) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        await rig.engine.authorize(1, card_token("04A1B2C3"))  # ISO14443 UID
        await rig.status("Charging")
        rig.sim.unplug(1)
        first = await rig.record(1)
        csms.online = False
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        await rig.engine.authorize(1, card_token("04A1B2C3"))
        await rig.status("Charging")
        rig.sim.unplug(1)
        second = await rig.record(2)
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        with pytest.raises(CommandRefused, match="Unknown"):  # never seen, CSMS offline
            await rig.engine.authorize(1, card_token("04FFFFFF"))
    assert body(first)["auth"]["method"] == "Online"
    assert body(second)["auth"]["method"] == "Cache"
    assert body(first)["auth"]["token_type"] == "ISO14443"
    assert csms.asked == ["04A1B2C3"]  # offline nobody is asked; the cache decided
    pyocmf_ok(body(second))


async def test_free_vend_starts_on_plug_in_and_records_no_user(tmp_path):
    cfg = billed_config(tmp_path, billing="free_vend = true")
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Charging")
        await asyncio.sleep(0.5)
        rig.sim.unplug(1)
        rec = await rig.record()
    b = body(rec)
    assert b["auth"]["method"] == "FreeVend"
    assert '"IS":false' in b["ocmf"]["begin"]
    pyocmf_ok(b)


async def test_pilot_fault_stops_the_session_and_faults_the_connector(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        fid = rig.sim.inject({"kind": "cp_state_f", "connector": 1})
        rec = await rig.record()
        await rig.status("Faulted")
        with pytest.raises(CommandRefused, match="faulted"):
            await rig.engine.authorize(1, card_token(CARD))
        rig.sim.clear(fid)
        await rig.status("Finishing")  # the car is still plugged in
    b = body(rec)
    assert b["stop"]["reason"] == "EmergencyStop" and "state F" in b["stop"]["detail"]
    assert '"TX":"A"' in b["ocmf"]["end"]


async def test_diagnosis_fault_event_stops_the_session(tmp_path):
    from agent import events

    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        fault = _fault_raised(events, faulted=True)
        rig.agent.bus.publish(fault)
        rec = await rig.record()
        await rig.status("Faulted")
        rig.agent.bus.publish(_fault_cleared(events, fault))
        await rig.status("Finishing")
    b = body(rec)
    assert b["stop"]["reason"] == "EmergencyStop" and b["stop"]["by"] == "fault"
    assert "welded" in b["stop"]["detail"]


def _fault_raised(events, faulted: bool):
    codes = events.FaultCodes(
        error_code="PowerSwitchFailure", vendor_id="x", vendor_error_code="CX017",
        info="welded", component="PowerContactor", variable="Problem",
    )  # fmt: skip
    return events.FaultRaised(
        fault_id="F-1", rule="welded_contactor", scope="connector:1",
        title={"en": "contactor welded"}, root_cause={"en": "contactor welded"},
        severity="critical", connectors=[1], devices=["evse1"], evidence=[], confidence=0.9,
        codes=codes, faulted=faulted, driver_message={"en": "out of order"},
        technician_steps={"en": []},
    )  # fmt: skip


def _fault_cleared(events, raised):
    return events.FaultCleared(
        fault_id=raised.fault_id, rule=raised.rule, scope=raised.scope, connectors=[1],
        devices=["evse1"], raised_ts=raised.ts, reason="resolved",
    )  # fmt: skip


async def test_deauthorized_token_stops_its_session(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        assert await rig.engine.deauthorize("SOMEONE-ELSE") == 0
        assert await rig.engine.deauthorize(CARD) == 1
        rec = await rig.record()
    assert body(rec)["stop"]["reason"] == "DeAuthorized"


@pytest.mark.parametrize(
    ("limit", "reason"),
    [
        ("max_energy_wh = 20", "EnergyLimitReached"),
        ("max_duration_s = 2", "TimeLimitReached"),
        ("max_cost = 0.01", "LocalOutOfCredit"),
    ],
)
async def test_session_limits_stop_the_session(tmp_path, limit, reason):
    cfg = billed_config(tmp_path, billing=f"[billing.limits]\n{limit}")
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        rec = await rig.record(timeout=20)
        await rig.status("Finishing")
    b = body(rec)
    assert b["stop"]["reason"] == reason and b["stop"]["by"] == "limit"
    if reason == "EnergyLimitReached":
        assert 20 <= b["energy_wh"] < 60  # stopped at the first reading past the limit


async def test_tariff_change_mid_session_gives_charging_periods(tmp_path):
    # An introductory price for the first 2 s of each session, then the normal price: the
    # active element changes mid-session, which is a new charging period and a TX=T reading.
    tariff = tmp_path / "intro.json"
    tariff.write_text(
        '{"id": "INTRO", "currency": "EUR", "elements": ['
        '{"restrictions": {"max_duration": 2}, "price_components": '
        '[{"type": "ENERGY", "price": 0.10, "vat": 19, "step_size": 1}]},'
        '{"price_components": [{"type": "ENERGY", "price": 0.50, "vat": 19, "step_size": 1}]}'
        "]}"
    )
    cfg = billed_config(tmp_path, tariff=tariff)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        await asyncio.sleep(4)
        rig.sim.unplug(1)
        rec = await rig.record()
        with rig.store() as st:
            kinds = [s.kind for s in st.samples(rec.session_id)]
    b = body(rec)
    periods = [p for p in b["charging_periods"] if p["charging"]]
    assert len(periods) == 2
    assert [p["lines"][0]["unit_price"] for p in periods] == ["0.10", "0.50"]
    assert sum(p["energy_wh"] for p in b["charging_periods"]) == b["energy_wh"]
    assert "tariff" in kinds and '"TX":"T"' in b["ocmf"]["end"]
    pyocmf_ok(b)


async def test_meter_comm_loss_is_a_gap_without_substitute_values(tmp_path):
    cfg = billed_config(tmp_path, sessions="gap_after_s = 1")
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        await asyncio.sleep(0.5)
        fid = rig.sim.inject({"kind": "no_response", "device": "meter1"})
        await asyncio.sleep(2.5)
        rig.sim.clear(fid)
        await asyncio.sleep(1.0)
        start = rig.conn.session.row.start_wh
        rig.sim.unplug(1)
        rec = await rig.record()
        end = body(rec)["meter"]["end_wh"]
        with rig.store() as st:
            samples = st.samples(rec.session_id)
    b = body(rec)
    assert len(b["gaps"]) == 1
    gap = b["gaps"][0]
    assert gap["duration_s"] >= 2 and gap["wh"] > 0  # the register kept counting: billed
    assert b["energy_wh"] == end - start and not b["review"]["required"]
    # No sample inside the gap: nothing was made up.
    from datetime import datetime

    g0, g1 = (datetime.fromisoformat(gap[k]) for k in ("start", "end"))
    from agent.sessions.times import from_us

    assert not [s for s in samples if g0 < from_us(s.ts) < g1]


@pytest.mark.parametrize("kind", ["energy_backwards", "energy_jump"])
async def test_register_backwards_or_jump_is_flagged_never_overbilled(tmp_path, kind):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        start = rig.register()
        await asyncio.sleep(0.5)
        fid = rig.sim.inject({"kind": kind, "device": "meter1", "wh": 500})
        await asyncio.sleep(1.0)
        rig.sim.clear(fid)
        await asyncio.sleep(0.5)
        rig.sim.unplug(1)
        rec = await rig.record()
        true_wh = rig.register() - start
    b = body(rec)
    assert b["review"]["required"] is True
    assert any(w in " ".join(b["review"]["reasons"]) for w in ("went back", "jumped"))
    assert 0 <= b["energy_wh"] <= true_wh  # never negative, never more than delivered
    assert Decimal(b["cost"]["total_excl_vat"]) >= 0
    with rig.store() as st:
        assert verify_records(st, None).ok  # flagged records still verify


async def test_payment_terminal_approve_captures_the_final_cost(tmp_path):
    from hil.payment import SimPaymentTerminal

    terminal = SimPaymentTerminal("approve")
    cfg = billed_config(
        tmp_path,
        tariff=TARIFFS / "energy-parking-flat.json",
        billing="[billing.payment]\nenabled = true\npreauth_cap = 25",
    )

    def setup(agent):
        agent.sessions.terminal = terminal

    async with running(cfg, setup=setup) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await rig.engine.pay(1) == "started"
        await rig.status("Charging")
        await asyncio.sleep(1)
        rig.sim.unplug(1)
        rec = await rig.record()
        await asyncio.sleep(0.2)
    b = body(rec)
    ref = b["auth"]["token"]
    # 30 kWh at 0.40 EUR + 0.50 EUR flat, +19 % VAT per dimension: 14.28 + 0.60 = 14.88 EUR
    # (under the 25 EUR cap). The short session costs the tariff's minimum, 2.38 EUR.
    assert terminal.calls[0] == ("preauthorize", ref, Decimal("14.88"))
    assert b["cost"]["total_incl_vat"] == "2.38"
    assert terminal.captured == {ref: Decimal("2.38")}
    assert b["auth"]["method"] == "PaymentTerminal" and b["payment"]["amount"] == "14.88"
    assert '"IT":"CARD_TXN_NR"' in b["ocmf"]["begin"]


@pytest.mark.parametrize("mode", ["decline", "timeout"])
async def test_payment_terminal_decline_or_timeout_starts_nothing(tmp_path, mode):
    from hil.payment import SimPaymentTerminal

    terminal = SimPaymentTerminal(mode)
    cfg = billed_config(tmp_path, billing="[billing.payment]\nenabled = true\ntimeout_s = 0.5")

    def setup(agent):
        agent.sessions.terminal = terminal

    async with running(cfg, setup=setup) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        with pytest.raises(CommandRefused, match="payment not authorized"):
            await rig.engine.pay(1)
        await asyncio.sleep(0.3)
        assert rig.conn.session is None
        with rig.store() as st, st.reading() as c:
            payments = c.execute("SELECT status FROM payments").fetchall()
    ref = terminal.calls[0][1]
    if mode == "timeout":
        assert ("void", ref, None) in terminal.calls  # the hold granted late is released
        assert payments == [("voided",)]
    else:
        assert payments == [("declined",)]
    assert not terminal.captured


async def test_events_carry_running_cost(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        await asyncio.sleep(2.5)
        progress = [e for e in rig.events("progress") if e.energy_wh]
        rig.sim.unplug(1)
        await rig.record()
    assert progress
    last: SessionEvent = progress[-1]
    assert last.currency == "EUR" and last.cost_incl_vat is not None
    assert isinstance(last.cost_incl_vat, Decimal) and last.power_w > 15000


async def test_bender_disables_by_writing_zero_amps(tmp_path):
    cfg = billed_config(tmp_path, evse_profile="bender-cc612")
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        assert rig.sim.snapshot()["connectors"][1]["evse"]["offered_current_a"] == 32
        await asyncio.sleep(1)
        rig.sim.unplug(1)
        rec = await rig.record()
        assert rig.sim.snapshot()["connectors"][1]["evse"]["offered_current_a"] == 0
    assert body(rec)["energy_wh"] > 0


async def test_tariff_files_are_data(tmp_path):
    # The TOML time-of-use tariff prices a session too (whichever element is active now).
    cfg = billed_config(tmp_path, tariff=TARIFFS / "time-of-use.toml")
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        await asyncio.sleep(0.5)
        rig.sim.unplug(1)
        rec = await rig.record()
    assert body(rec)["cost"]["tariff_id"] == "EVEDGE-TOU-2024"
