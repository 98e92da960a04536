"""Session engine parts without a station: metering rules, status derivation, config checks,
meter-signed (passthrough) records."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.billing import keys, ocmf
from agent.config import ConfigError, parse_config
from agent.sessions.metering import EnergyTracker
from agent.sessions.model import Status, card_token, mask
from agent.sessions.signing import MeterSigner, SignRequest
from agent.sessions.states import derive_status

US = 1_000_000
T0 = 1_700_000_000 * US
KW22 = 24_000.0


def tracker(**kw) -> EnergyTracker:
    return EnergyTracker(start_wh=1000, start_us=T0, serial="S1", max_power_w=KW22, **kw)


def at(seconds: float) -> int:
    return T0 + int(seconds * US)


def test_plain_register_differences_are_billed_exactly():
    t = tracker()
    for i, wh in enumerate([1006, 1012, 1012, 1019], start=1):
        assert t.feed(wh, at(i)).accepted
    assert t.billed_wh == 19 and not t.reviews and not t.gaps


def test_stale_or_out_of_order_readings_are_ignored():
    t = tracker()
    t.feed(1006, at(1))
    out = t.feed(1900, at(0.5))  # older than what we have: never billed
    assert not out.accepted and t.billed_wh == 6 and t.ignored_stale == 1


def test_small_backwards_step_bills_nothing_until_the_high_water_mark():
    t = tracker()
    t.feed(1010, at(1))
    out = t.feed(1004, at(2))  # 6 Wh back: a glitch
    assert out.review and "went back 6 Wh" in out.review
    t.feed(1008, at(3))  # still below 1010: nothing
    t.feed(1015, at(4))  # above again: only the 5 Wh past 1010
    assert t.billed_wh == 15


def test_large_backwards_step_is_a_reset_counted_from_the_new_value():
    t = tracker(backwards_glitch_wh=100)
    t.feed(1010, at(1))
    out = t.feed(3, at(2))  # meter reset to ~0
    assert "reset or swap" in out.review
    t.feed(9, at(3))
    assert t.billed_wh == 10 + 6


def test_implausible_jump_is_not_billed_and_rebaselined():
    t = tracker()
    out = t.feed(1000 + 50_000, at(1))  # 50 kWh in a second
    assert out.accepted and "jumped" in out.review and t.billed_wh == 0
    t.feed(51_006, at(2))
    assert t.billed_wh == 6


def test_unsigned_register_rollover_is_counted_across_the_wrap():
    m = 2**32
    t = EnergyTracker(start_wh=m - 4, start_us=T0, serial="S", max_power_w=KW22, modulus=m)
    t.feed(m - 1, at(1))
    out = t.feed(2, at(2))
    assert out.accepted and not out.review and t.billed_wh == 6
    assert "rolled over" in t.notes[0]


def test_gap_is_recorded_and_the_energy_across_it_billed_after_the_check():
    t = tracker(gap_after_s=5)
    t.feed(1006, at(1))
    t.comm_lost(at(2))
    out = t.feed(1066, at(31))  # 60 Wh in 30 s at ≤24 kW: plausible
    assert out.gap is not None and out.gap.wh == 60 and t.billed_wh == 66
    assert t.gaps[0].to_json()["duration_s"] == 30 and not t.reviews


def test_meter_replacement_is_flagged_and_rebaselined():
    t = tracker()
    t.feed(1006, at(1), serial="S1")
    out = t.feed(20, at(2), serial="S2")
    assert "meter replaced" in out.review
    t.feed(25, at(3), serial="S2")
    assert t.billed_wh == 11


def test_state_round_trips():
    t = tracker(gap_after_s=1)
    t.feed(1006, at(1))
    t.comm_lost(at(2))
    t.feed(1004, at(3))
    u = EnergyTracker.from_state(t.to_state())
    assert u == t


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 120), st.integers(-2_000, 2_000_000)), min_size=1, max_size=40
    )
)
def test_any_register_sequence_never_bills_negative_or_beyond_possible(steps):
    # Whatever the meter says (backwards, jumps, rubbish), the bill stays within what the
    # connector could physically deliver over the session's time.
    t = tracker()
    now, wh = 0.0, 1000
    for dt, delta in steps:
        now += dt
        wh = max(0, wh + delta)
        t.feed(wh, at(now))
        assert t.billed_wh >= 0
    assert t.billed_wh <= t.plausible_wh(at(now) - T0) + len(steps) * t.jump_slack_wh


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=60))
def test_a_monotonic_plausible_register_is_billed_exactly(deltas):
    t = tracker()
    wh = 1000
    for i, d in enumerate(deltas, start=1):
        wh += d
        t.feed(wh, at(i))
    assert t.billed_wh == wh - 1000 and not t.reviews


def _derive(cp, **kw):
    base = dict(
        session=False, offering=False, faulted=False, available=True, reserved=False,
        finishing=False,
    )  # fmt: skip
    return derive_status(cp, **(base | kw))


@pytest.mark.parametrize(
    ("cp", "kw", "want"),
    [
        ("A", {}, Status.AVAILABLE),
        (None, {}, Status.AVAILABLE),
        ("B", {}, Status.PREPARING),
        ("B", {"session": True}, Status.SUSPENDED_EVSE),
        ("B", {"session": True, "offering": True}, Status.SUSPENDED_EV),
        ("C", {"session": True, "offering": True}, Status.CHARGING),
        ("D", {"session": True, "offering": True}, Status.CHARGING),
        ("B", {"finishing": True}, Status.FINISHING),
        ("E", {"session": True}, Status.FAULTED),
        ("F", {}, Status.FAULTED),
        ("A", {"faulted": True}, Status.FAULTED),
        ("A", {"available": False}, Status.UNAVAILABLE),
        ("C", {"available": False, "session": True, "offering": True}, Status.CHARGING),
        ("A", {"reserved": True}, Status.RESERVED),
    ],
)
def test_status_derivation(cp, kw, want):
    assert _derive(cp, **kw) == want


def test_tokens_are_masked_and_typed():
    assert mask("DEMO-0042") == "DE*****42" and mask("ABC") == "***"
    assert card_token("04a1b2c3").kind == "ISO14443" and card_token("04a1b2c3").id == "04A1B2C3"
    assert card_token("DEMO-0042").kind == "LOCAL"


BASE = '[station]\nid = "T"\n'


def test_billing_config_errors_name_the_field(tmp_path):
    restricted = tmp_path / "night.json"
    restricted.write_text(
        '{"id": "N", "currency": "EUR", "elements": [{"restrictions": {"start_time": "22:00",'
        ' "end_time": "06:00"}, "price_components": [{"type": "ENERGY", "price": 0.2}]}]}'
    )
    cases = {
        f'[billing]\ntariff = "{restricted}"': ("billing.tariff", "no unrestricted fallback"),
        '[billing]\ntariff = "/nonexistent.json"': ("billing.tariff", "cannot read"),
        "[billing]\nfree_vend = false": ("billing", "tariff: required unless free_vend"),
        '[billing]\nfree_vend = true\ntimezone = "Mars/Base"': ("billing.timezone", "unknown"),
        '[billing]\nfree_vend = true\n[billing.sampling]\nmeasurands = ["watts"]': (
            "billing.sampling.measurands",
            "unknown quantity",
        ),
        '[billing]\ntariff = "config/tariffs/simple-energy.json"\ncurrency = "CHF"': (
            "billing",
            "tariff EVEDGE-SIMPLE-039 is in EUR",
        ),
        "[billing]\nfree_vend = true\nwhatever = 1": ("billing.whatever", "unknown key"),
    }
    for text, (path, msg) in cases.items():
        with pytest.raises(ConfigError) as e:
            parse_config(BASE + text)
        assert any(p == path and msg in m for p, m in e.value.problems), (text, e.value.problems)


class FakeIskra:
    """A signing meter (Iskra WM3M4C style): it signs its own records with its own key."""

    def __init__(self, key: keys.PrivateKey):
        self.key = key
        self.public_key_hex = keys.public_key_hex(key)
        self.serial = "79001234"  # what the agent expects
        self.ms = "79001234"  # what the meter writes into its records
        self.pg = 0

    def _record(self, req: SignRequest) -> str:
        self.pg += 1
        return ocmf.build_record(
            self.key,
            pagination=self.pg,
            gateway=ocmf.Gateway(serial="meter", version="1.14"),
            meter=ocmf.MeterIdentity(serial=self.ms, vendor="Iskra", model="WM3M4C"),
            user=req.user,
            readings=req.readings,
        )

    async def begin(self, req: SignRequest) -> str:
        return self._record(req)

    async def end(self, req: SignRequest) -> str:
        return self._record(req)


async def test_meter_signed_records_pass_through_byte_for_byte(tmp_path):
    meter = FakeIskra(keys.load_or_create_key(tmp_path / "iskra"))
    signer = MeterSigner(meter)
    now = datetime(2025, 3, 1, 10, tzinfo=UTC)
    req = SignRequest(
        meter=ocmf.MeterIdentity(serial="79001234"),
        user=ocmf.UserAssignment(),
        charge_point=ocmf.ChargePoint("T*1"),
        tariff_text=None,
        readings=[ocmf.MeterReading(now, ocmf.Tx.BEGIN, 5000, ocmf.TimeStatus.SYNCHRONIZED)],
    )
    text = await signer.begin(req)
    assert text.startswith("OCMF|") and '"MV":"Iskra"' in text
    assert signer.public_key_hex == meter.public_key_hex
    # A record the meter did not sign (or someone changed) is refused, not passed on.
    forged = text.replace('"RV":5000', '"RV":5001')

    async def forge(_req):
        return forged

    meter.begin = forge
    with pytest.raises(ocmf.SignatureInvalid):
        await signer.begin(req)
    # A record of another meter is refused too.
    meter.serial = "OTHER"
    meter.begin = FakeIskra.begin.__get__(meter)
    with pytest.raises(ocmf.OcmfFormatError, match="expected 'OTHER'"):
        await signer.begin(req)
