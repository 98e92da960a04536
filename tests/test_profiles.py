"""Shipped device profiles: they load, their units are canonical, and their registers decode.

Every expected word list below is computed by hand from the vendor's encoding (scale, word
order, sign), not by the codec under test, so a wrong address type, scale or word order in a
profile makes these tests fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers import codec, quantities
from drivers.codec import DecodeError, NotAvailable
from drivers.profile import (
    Profile,
    ProfileError,
    Register,
    load_profile,
    load_profile_file,
    profile_names,
)

SHIPPED = profile_names()
EXPECTED = {
    "abb-b23",
    "bender-cc612",
    "carlo-gavazzi-em340",
    "eastron-sdm630",
    "eastron-sdm72dm-v2",
    "iskra-wm3m4c",
    "keba-p30x",
    "phoenix-ev-charge-control",
}


def _reg(profile: Profile, quantity: str, write: bool = False) -> Register:
    """The register a profile reads `quantity` from (or, with write=True, writes it to)."""
    if write:
        return profile.writable(quantity)
    for r in profile.readable():
        if r.quantity == quantity:
            return r
    raise AssertionError(f"{profile.name} has no readable {quantity}")


def _truthy(word: str) -> bool:
    return word.lower() in ("true", "1", "on", "closed", "yes")


# --- every shipped profile -------------------------------------------------------------


def test_all_expected_profiles_are_shipped() -> None:
    assert EXPECTED.issubset(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.sources
    assert profile.readable()


@pytest.mark.parametrize("name", SHIPPED)
def test_units_are_canonical(name: str) -> None:
    for r in load_profile(name).registers:
        q = quantities.get(r.quantity)
        if r.map is None and q.kind != "str":
            assert r.unit == q.unit, f"{name}: {r.quantity} unit {r.unit!r}"


@pytest.mark.parametrize("name", SHIPPED)
def test_energy_registers_are_integer_wh(name: str) -> None:
    profile = load_profile(name)
    energy = [r for r in profile.registers if r.quantity.startswith("energy_")]
    for r in energy:
        assert r.unit == "Wh", f"{name}: {r.quantity} in {r.unit!r}"
        assert quantities.get(r.quantity).kind == "int"
        order = profile.order(r)
        # 1 kWh is representable at every meter's resolution.
        value = codec.decode(r, codec.encode(r, 1000, order, exponent=0), order, exponent=0)
        assert type(value) is int, f"{name}: {r.quantity} decoded as {type(value).__name__}"
        assert value == 1000


@pytest.mark.parametrize("name", SHIPPED)
def test_every_register_round_trips(name: str) -> None:
    """encode -> decode is the identity for a representable value of every register."""
    profile = load_profile(name)
    for r in profile.registers:
        order = profile.order(r)
        kind = quantities.get(r.quantity).kind
        if r.type == "ascii":
            samples: list[codec.Value] = ["AB"]
        elif r.map is not None and kind == "bool":
            samples = sorted({_truthy(w) for w in r.map.values()})
        elif r.map is not None:
            samples = list(r.map.values())
        elif kind == "str":
            samples = ["12345"]
        elif kind == "bool":
            samples = [True, False]
        elif kind == "int":
            samples = [0, 1000]
        else:
            samples = [0.0, 12.0]
        for v in samples:
            words = codec.encode(r, v, order)
            assert len(words) == r.words
            assert codec.decode(r, words, order) == v, f"{name}: {r.quantity}={v!r}"


@pytest.mark.parametrize("name", SHIPPED)
def test_identity_registers_are_read_once(name: str) -> None:
    for r in load_profile(name).registers:
        if r.quantity in ("serial_number", "model", "firmware_version"):
            assert r.once, f"{name}: {r.quantity} should be once = true"
        else:
            assert not r.once, f"{name}: {r.quantity} is a live value"


@pytest.mark.parametrize("name", SHIPPED)
def test_text_states_have_a_map(name: str) -> None:
    for r in load_profile(name).registers:
        if r.quantity in ("cp_state", "charger_state", "cable_state", "lock_state"):
            assert r.map, f"{name}: {r.quantity} needs a map"
        if r.quantity == "cp_state":
            assert set(r.map.values()) <= set("ABCDEF")


@pytest.mark.parametrize("name", SHIPPED)
def test_writes_have_something_to_verify_or_say_so(name: str) -> None:
    profile = load_profile(name)
    readable = {r.quantity for r in profile.readable()}
    for r in profile.registers:
        if r.writable:
            assert r.function in ("holding", "coil")
            if r.readback is not None:
                assert r.readback in readable


@pytest.mark.parametrize("name", SHIPPED)
def test_evse_error_codes_start_with_no_error(name: str) -> None:
    profile = load_profile(name)
    has_code = any(r.quantity == "evse_error_code" for r in profile.readable())
    assert has_code == bool(profile.error_codes), name
    if has_code:
        assert profile.error_codes[0].fault == "none"


# Where each device keeps its key values (function, 0-based address), as the sources give them.
ADDRESSES: dict[str, dict[str, tuple[str, int]]] = {
    "eastron-sdm630": {
        "voltage_l1": ("input", 0x00),
        "current_l1": ("input", 0x06),
        "power_w": ("input", 0x34),
        "frequency_hz": ("input", 0x46),
        "energy_import_wh": ("input", 0x48),
        "energy_export_wh": ("input", 0x4A),
        "energy_total_wh": ("input", 0x156),
        "serial_number": ("holding", 0xFC00),
    },
    "eastron-sdm72dm-v2": {
        "voltage_l1": ("input", 0x00),
        "current_l1": ("input", 0x06),
        "power_w": ("input", 0x34),
        "frequency_hz": ("input", 0x46),
        "energy_import_wh": ("input", 0x48),
        "energy_export_wh": ("input", 0x4A),
        "energy_total_wh": ("input", 0x156),
        "serial_number": ("holding", 0xFC00),
    },
    "abb-b23": {
        "voltage_l1": ("holding", 0x5B00),
        "current_l1": ("holding", 0x5B0C),
        "power_w": ("holding", 0x5B14),
        "power_l1_w": ("holding", 0x5B16),
        "frequency_hz": ("holding", 0x5B2C),
        "energy_import_wh": ("holding", 0x5000),
        "energy_export_wh": ("holding", 0x5004),
        "serial_number": ("holding", 0x8900),
    },
    "carlo-gavazzi-em340": {
        "voltage_l1": ("input", 0x00),
        "current_l1": ("input", 0x0C),
        "power_l1_w": ("input", 0x12),
        "power_w": ("input", 0x28),
        "frequency_hz": ("input", 0x33),
        "energy_import_wh": ("input", 0x34),
        "energy_export_wh": ("input", 0x4E),
        "serial_number": ("input", 0x5000),
    },
    "iskra-wm3m4c": {
        "frequency_hz": ("input", 105),
        "voltage_l1": ("input", 107),
        "current_l1": ("input", 126),
        "power_w": ("input", 140),
        "energy_import_wh": ("input", 418),
        "energy_export_wh": ("input", 420),
        "model": ("input", 1),
        "serial_number": ("input", 9),
    },
    "phoenix-ev-charge-control": {
        "cp_state": ("input", 100),
        "cable_max_current_a": ("input", 101),
        "evse_error_code": ("input", 107),
        "voltage_l1": ("input", 108),
        "current_l1": ("input", 114),
        "power_w": ("input", 120),
        "charging_enabled": ("coil", 400),
        "offered_current_a": ("holding", 528),
        "energy_import_wh": ("holding", 904),
    },
    "bender-cc612": {
        "evse_error_code": ("holding", 105),
        "cp_state": ("holding", 122),
        "contactor_closed": ("holding", 140),
        "current_l1": ("holding", 212),
        "energy_import_wh": ("holding", 218),
        "power_w": ("holding", 220),
        "voltage_l1": ("holding", 222),
        "energy_session_wh": ("holding", 716),
        "offered_current_a": ("holding", 1000),
    },
    "keba-p30x": {
        "charger_state": ("holding", 1000),
        "cable_state": ("holding", 1004),
        "evse_error_code": ("holding", 1006),
        "current_l1": ("holding", 1008),
        "serial_number": ("holding", 1014),
        "power_w": ("holding", 1020),
        "energy_import_wh": ("holding", 1036),
        "voltage_l1": ("holding", 1040),
        "offered_current_a": ("holding", 1100),
    },
}


@pytest.mark.parametrize("name", sorted(ADDRESSES))
def test_key_register_addresses(name: str) -> None:
    profile = load_profile(name)
    got = {q: (_reg(profile, q).function, _reg(profile, q).address) for q in ADDRESSES[name]}
    assert got == ADDRESSES[name]


# --- hand-computed words, per device ---------------------------------------------------


@dataclass(frozen=True)
class Case:
    profile: str
    quantity: str
    value: codec.Value
    words: list[int]
    exponent: int | None = None
    write: bool = False

    def __str__(self) -> str:  # readable test ids
        return f"{self.profile}:{self.quantity}={self.value!r}"


CASES = [
    # Eastron: float32, high word first; energy in kWh on the wire.
    Case("eastron-sdm630", "voltage_l1", 230.1, [0x4366, 0x199A]),
    Case("eastron-sdm630", "current_l1", 16.02, [0x4180, 0x28F6]),
    Case("eastron-sdm630", "frequency_hz", 50.0, [0x4248, 0x0000]),
    Case("eastron-sdm630", "power_factor", 0.98, [0x3F7A, 0xE148]),
    Case("eastron-sdm630", "energy_import_wh", 12345678, [0x4640, 0xE6B6]),  # 12345.678 kWh
    Case("eastron-sdm630", "serial_number", "12345678", [0x00BC, 0x614E]),
    Case("eastron-sdm72dm-v2", "voltage_l2", 230.1, [0x4366, 0x199A]),
    Case("eastron-sdm72dm-v2", "power_w", 11040.5, [0x462C, 0x8200]),
    Case("eastron-sdm72dm-v2", "energy_import_wh", 12345678, [0x4640, 0xE6B6]),
    Case("eastron-sdm72dm-v2", "energy_total_wh", 12345678, [0x4640, 0xE6B6]),
    # ABB: integers, high word first; 0.1 V, 0.01 A, 0.01 W, 0.01 Hz, 0.01 kWh (= 10 Wh).
    Case("abb-b23", "voltage_l1", 230.1, [0x0000, 2301]),
    Case("abb-b23", "current_l3", 16.02, [0x0000, 1602]),
    Case("abb-b23", "power_w", -1234.56, [0xFFFE, 0x1DC0]),  # s32 -123456
    Case("abb-b23", "frequency_hz", 50.0, [5000]),
    Case("abb-b23", "power_factor", -0.98, [0xFC2C]),  # s16 -980
    Case("abb-b23", "energy_import_wh", 12345670, [0, 0, 0x0012, 0xD687]),  # u64 1234567
    Case("abb-b23", "energy_export_wh", 10, [0, 0, 0, 1]),
    Case("abb-b23", "serial_number", "12345678", [0x00BC, 0x614E]),
    # Carlo Gavazzi: INT32 low word first; 0.1 V, 0.001 A, 0.1 W, 0.1 kWh (= 100 Wh).
    Case("carlo-gavazzi-em340", "voltage_l1", 230.1, [2301, 0]),
    Case("carlo-gavazzi-em340", "current_l2", 16.02, [16020, 0]),
    Case("carlo-gavazzi-em340", "power_w", -1234.5, [0xCFC7, 0xFFFF]),  # s32 -12345
    Case("carlo-gavazzi-em340", "power_factor_l1", -0.98, [0xFC2C]),
    Case("carlo-gavazzi-em340", "frequency_hz", 50.0, [500]),
    Case("carlo-gavazzi-em340", "energy_import_wh", 12345600, [0xE240, 0x0001]),  # 123456
    Case("carlo-gavazzi-em340", "reactive_energy_export_varh", 12345600, [0xE240, 0x0001]),
    # Iskra: energy counter s32 high word first, decimal exponent from its own register.
    Case("iskra-wm3m4c", "energy_import_wh", 12345678, [0x00BC, 0x614E], exponent=0),
    Case("iskra-wm3m4c", "energy_import_wh", 12345670, [0x0012, 0xD687], exponent=1),
    Case("iskra-wm3m4c", "energy_export_wh", 12345678, [0x4996, 0x0278], exponent=-2),
    # Phoenix: 32-bit values low word first, whole V/A/W; energy u32 Wh.
    Case("phoenix-ev-charge-control", "cp_state", "C", [0x0043]),
    Case("phoenix-ev-charge-control", "cable_max_current_a", 32.0, [32]),
    Case("phoenix-ev-charge-control", "voltage_l1", 230.0, [230, 0]),
    Case("phoenix-ev-charge-control", "current_l3", 16.0, [16, 0]),
    Case("phoenix-ev-charge-control", "power_w", 100000.0, [0x86A0, 0x0001]),
    Case("phoenix-ev-charge-control", "energy_import_wh", 12345678, [0x614E, 0x00BC]),
    Case("phoenix-ev-charge-control", "evse_error_code", 12, [12]),
    Case("phoenix-ev-charge-control", "offered_current_a", 16.0, [16], write=True),
    Case("phoenix-ev-charge-control", "charging_enabled", True, [1], write=True),
    # Bender: high word first; currents in mA; u16 state and limits.
    Case("bender-cc612", "cp_state", "C", [3]),
    Case("bender-cc612", "current_l1", 16.02, [0x0000, 16020]),
    Case("bender-cc612", "power_w", 11040.0, [0x0000, 11040]),
    Case("bender-cc612", "energy_import_wh", 12345678, [0x00BC, 0x614E]),
    Case("bender-cc612", "energy_session_wh", 12345, [0x0000, 12345]),
    Case("bender-cc612", "offered_current_a", 16.0, [16], write=True),
    # Keba: u32 high word first; mA, mW, 0.1 Wh; u16 write registers.
    Case("keba-p30x", "charger_state", "charging", [0, 3]),
    Case("keba-p30x", "cable_state", "plugged_station_ev_locked", [0, 7]),
    Case("keba-p30x", "current_l1", 16.02, [0x0000, 16020]),
    Case("keba-p30x", "power_w", 11040.123, [0x00A8, 0x757B]),  # 11040123 mW
    Case("keba-p30x", "energy_import_wh", 12345678, [0x075B, 0xCD0C]),  # 123456780 x 0.1 Wh
    Case("keba-p30x", "offered_current_a", 16.02, [0x0000, 16020]),  # 1100, mA
    Case("keba-p30x", "offered_current_a", 16.02, [16020], write=True),  # 5004, mA
    Case("keba-p30x", "failsafe_timeout_s", 30.0, [30], write=True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_known_value_encodes_to_hand_computed_words(case: Case) -> None:
    profile = load_profile(case.profile)
    reg = _reg(profile, case.quantity, case.write)
    order = profile.order(reg)
    exponent = case.exponent or 0
    assert codec.encode(reg, case.value, order, exponent=exponent) == case.words


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hand_computed_words_decode_to_canonical_value(case: Case) -> None:
    profile = load_profile(case.profile)
    reg = _reg(profile, case.quantity, case.write)
    got = codec.decode(reg, case.words, profile.order(reg), case.exponent)
    assert got == case.value
    assert type(got) is type(case.value)


def test_word_order_matters_for_carlo_gavazzi() -> None:
    profile = load_profile("carlo-gavazzi-em340")
    reg = _reg(profile, "voltage_l1")
    assert profile.order(reg) == "little"
    assert codec.decode(reg, [2301, 0], "little") == 230.1
    assert codec.decode(reg, [2301, 0], "big") != 230.1


def test_word_order_matters_for_phoenix_energy() -> None:
    profile = load_profile("phoenix-ev-charge-control")
    reg = _reg(profile, "energy_import_wh")
    assert reg.function == "holding" and reg.address == 904
    assert codec.decode(reg, [0x614E, 0x00BC], profile.order(reg)) == 12345678
    assert codec.decode(reg, [0x614E, 0x00BC], "big") != 12345678


# --- Iskra T5/T6 -----------------------------------------------------------------------


def test_iskra_t5_voltage_with_exponent_minus_2() -> None:
    profile = load_profile("iskra-wm3m4c")
    reg = _reg(profile, "voltage_l1")
    assert reg.type == "t5"
    # exponent byte 0xFE (-2), 24-bit mantissa 23012 = 0x0059E4
    assert codec.decode(reg, [0xFE00, 0x59E4], profile.order(reg)) == 230.12


def test_iskra_t5_frequency() -> None:
    profile = load_profile("iskra-wm3m4c")
    reg = _reg(profile, "frequency_hz")
    assert codec.decode(reg, [0xFE00, 5000], profile.order(reg)) == 50.0


def test_iskra_t6_negative_power() -> None:
    profile = load_profile("iskra-wm3m4c")
    reg = _reg(profile, "power_w")
    assert reg.type == "t6"
    # exponent 0xFF (-1), mantissa 0xFFCFC7 = -12345 (24-bit two's complement)
    assert codec.decode(reg, [0xFFFF, 0xCFC7], profile.order(reg)) == -1234.5


def test_iskra_t6_current_round_trip() -> None:
    profile = load_profile("iskra-wm3m4c")
    reg = _reg(profile, "current_l1")
    assert codec.decode(reg, [0xFE00, 1602], "big") == 16.02
    assert codec.decode(reg, codec.encode(reg, 16.02, "big"), "big") == 16.02


def test_iskra_energy_uses_its_exponent_register() -> None:
    profile = load_profile("iskra-wm3m4c")
    imp = _reg(profile, "energy_import_wh")
    exp = _reg(profile, "energy_export_wh")
    assert (imp.address, imp.exponent_address) == (418, 414)
    assert (exp.address, exp.exponent_address) == (420, 415)
    # 123456789 x 10^-1 Wh = 12345678.9 Wh -> integer Wh, half-even
    got = codec.decode(imp, [0x075B, 0xCD15], "big", exponent=-1)
    assert got == 12345679 and type(got) is int


def test_iskra_model_is_ascii() -> None:
    profile = load_profile("iskra-wm3m4c")
    reg = _reg(profile, "model")
    words = [0x574D, 0x334D, 0x3443, 0x2020, 0, 0, 0, 0]  # "WM3M4C  "
    assert codec.decode(reg, words, "big") == "WM3M4C"


# --- markers, maps and states ----------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "words"),
    [
        ("voltage_l1", [0xFFFF, 0xFFFF]),
        ("power_w", [0x7FFF, 0xFFFF]),
        ("frequency_hz", [0xFFFF]),
        ("power_factor_l2", [0x7FFF]),
        ("energy_import_wh", [0xFFFF] * 4),
        ("serial_number", [0xFFFF, 0xFFFF]),
    ],
)
def test_abb_not_available_markers(quantity: str, words: list[int]) -> None:
    profile = load_profile("abb-b23")
    reg = _reg(profile, quantity)
    with pytest.raises(NotAvailable):
        codec.decode(reg, words, profile.order(reg))


def test_bender_meter_values_not_available() -> None:
    profile = load_profile("bender-cc612")
    for q in ("current_l1", "power_w", "energy_import_wh", "voltage_l3"):
        with pytest.raises(NotAvailable):
            codec.decode(_reg(profile, q), [0xFFFF, 0xFFFF], "big")


def test_phoenix_cp_state_uses_the_low_byte() -> None:
    profile = load_profile("phoenix-ev-charge-control")
    reg = _reg(profile, "cp_state")
    assert (reg.function, reg.address, reg.byte) == ("input", 100, "low")
    assert codec.decode(reg, [0x0041], "little") == "A"
    assert codec.decode(reg, [0x2043], "little") == "C"  # high byte ignored
    with pytest.raises(DecodeError):
        codec.decode(reg, [0x0055], "little")  # 'U' is no IEC 61851 state


def test_phoenix_error_table_maps_every_code() -> None:
    faults = {
        0: "none",
        1: "cable_rejected",
        2: "cable_rejected",
        3: "invalid_pp",
        4: "pilot_short",
        5: "evse_unavailable",
        6: "busy",
        7: "busy",
        8: "lock_failure",
        9: "overcurrent",
        10: "meter_comm",
        11: "vehicle_rejected",
        12: "contactor_fault",
        13: "diode_missing",
        14: "unknown",
        15: "rcd_dc",
    }
    profile = load_profile("phoenix-ev-charge-control")
    assert {k: v.fault for k, v in profile.error_codes.items()} == faults


def test_phoenix_writes_go_to_coil_400_and_holding_528() -> None:
    profile = load_profile("phoenix-ev-charge-control")
    enable = profile.writable("charging_enabled")
    setpoint = profile.writable("offered_current_a")
    assert (enable.function, enable.address) == ("coil", 400)
    assert (setpoint.function, setpoint.address) == ("holding", 528)
    assert codec.decode(enable, [0], "little") is False


@pytest.mark.parametrize(("raw", "state"), [(1, "A"), (2, "B"), (3, "C"), (4, "D"), (5, "E")])
def test_bender_vehicle_state(raw: int, state: str) -> None:
    reg = _reg(load_profile("bender-cc612"), "cp_state")
    assert codec.decode(reg, [raw], "big") == state


def test_bender_unknown_vehicle_state_is_an_error() -> None:
    reg = _reg(load_profile("bender-cc612"), "cp_state")
    with pytest.raises(DecodeError):
        codec.decode(reg, [0], "big")


@pytest.mark.parametrize(("raw", "closed"), [(0, False), (1, True), (5, True)])
def test_bender_relay_state(raw: int, closed: bool) -> None:
    reg = _reg(load_profile("bender-cc612"), "contactor_closed")
    assert codec.decode(reg, [raw], "big") is closed


def test_bender_enable_is_the_current_limit() -> None:
    profile = load_profile("bender-cc612")
    enabled = _reg(profile, "charging_enabled")
    setpoint = profile.writable("offered_current_a")
    assert enabled.address == setpoint.address == 1000
    assert codec.decode(enabled, [16], "big") is True
    assert codec.decode(enabled, [0], "big") is False


def test_keba_reads_one_value_per_request() -> None:
    assert load_profile("keba-p30x").limits.single_value_reads is True


def test_keba_setpoint_is_write_only_and_read_back_from_1100() -> None:
    profile = load_profile("keba-p30x")
    w = profile.writable("offered_current_a")
    assert (w.address, w.type, w.access, w.readback) == (5004, "u16", "w", "offered_current_a")
    assert _reg(profile, "offered_current_a").address == 1100
    with pytest.raises(DecodeError):
        codec.encode(w, 70.0, "big")  # 70000 mA does not fit a u16


def test_keba_enable_and_failsafe_writes() -> None:
    profile = load_profile("keba-p30x")
    assert profile.writable("charging_enabled").address == 5014
    assert profile.writable("failsafe_timeout_s").address == 5018
    assert profile.writable("failsafe_current_a").address == 5016
    assert _reg(profile, "failsafe_timeout_s").address == 1602


def test_keba_energy_rounds_tenths_of_wh_half_even() -> None:
    reg = _reg(load_profile("keba-p30x"), "energy_import_wh")
    assert codec.decode(reg, [0x075B, 0xCD11], "big") == 12345678  # 12345678.5
    assert codec.decode(reg, [0x075B, 0xCD1B], "big") == 12345680  # 12345679.5


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (0, "starting"),
        (1, "not_ready"),
        (2, "ready"),
        (3, "charging"),
        (4, "error"),
        (5, "suspended"),
    ],
)
def test_keba_charger_state(raw: int, state: str) -> None:
    reg = _reg(load_profile("keba-p30x"), "charger_state")
    assert codec.decode(reg, [0, raw], "big") == state


def test_sdm72_request_limit_keeps_floats_aligned() -> None:
    profile = load_profile("eastron-sdm72dm-v2")
    assert profile.limits.max_registers <= 10
    assert profile.limits.max_registers % 2 == 0
    for name in ("eastron-sdm630", "eastron-sdm72dm-v2"):
        for r in load_profile(name).readable():
            if r.type == "float32":
                assert r.address % 2 == 0, f"{name}: {r.quantity} at odd address"


# --- invalid profiles ------------------------------------------------------------------

HEADER = """\
name = "bad"
kind = "evse"
manufacturer = "Test"
model = "T1"
sources = ["test"]
"""

VOLTAGE = """\
[[registers]]
quantity = "voltage_l1"
function = "input"
address = 0
type = "u16"
unit = "V"
"""


def _load(tmp_path: Path, body: str) -> Profile:
    path = tmp_path / "bad.toml"
    path.write_text(HEADER + body, encoding="utf-8")
    return load_profile_file(path)


def test_minimal_profile_is_valid(tmp_path: Path) -> None:
    """The base the invalid cases start from loads, so each failure below is its own."""
    assert _load(tmp_path, VOLTAGE).registers[0].quantity == "voltage_l1"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        pytest.param(
            VOLTAGE.replace('unit = "V"', 'unit = "mV"'),
            "registers.0",
            ["voltage_l1", "'V'", "'mV'"],
            id="wrong-unit-voltage",
        ),
        pytest.param(
            '[[registers]]\nquantity = "energy_import_wh"\nfunction = "input"\n'
            'address = 0\ntype = "u32"\nunit = "kWh"\n',
            "registers.0",
            ["energy_import_wh", "'Wh'", "'kWh'"],
            id="kwh-for-energy",
        ),
        pytest.param(
            '[[registers]]\nquantity = "serial_number"\nfunction = "input"\n'
            'address = 0\ntype = "ascii"\n',
            "registers.0",
            ["ascii", "count"],
            id="ascii-without-count",
        ),
        pytest.param(
            VOLTAGE + VOLTAGE.replace("address = 0", "address = 2"),
            "(top)",
            ["voltage_l1", "two registers"],
            id="duplicate-quantity",
        ),
        pytest.param(
            '[[registers]]\nquantity = "evse_error_code"\nfunction = "input"\naddress = 0\n'
            '[error_codes]\n7 = { text = "melted", fault = "melted_down" }\n',
            "error_codes.7.fault",
            ["'melted_down'"],
            id="unknown-fault",
        ),
        pytest.param(
            VOLTAGE.replace('function = "input"', 'function = "input"\naccess = "rw"'),
            "registers.0",
            ["cannot be written"],
            id="writable-input-register",
        ),
    ],
)
def test_invalid_profile_is_rejected_naming_the_field(
    tmp_path: Path, body: str, field: str, words: list[str]
) -> None:
    with pytest.raises(ProfileError) as err:
        _load(tmp_path, body)
    msg = str(err.value)
    assert msg.startswith(f"bad.toml: {field}:"), msg
    for w in words:
        assert w in msg, msg


def test_unknown_quantity_is_rejected_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as err:
        _load(tmp_path, VOLTAGE.replace('"voltage_l1"', '"voltage_l4"'))
    msg = str(err.value)
    assert msg.startswith("bad.toml: registers.0.quantity:"), msg
    assert "voltage_l4" in msg
