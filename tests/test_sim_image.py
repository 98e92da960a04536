"""DeviceImage: register images built from profiles with the driver codec."""

from __future__ import annotations

import pytest
from pymodbus.constants import ExcCodes

from drivers import codec
from drivers.profile import Profile, load_profile, profile_names
from hil.image import DeviceImage


def _profile(registers: list[dict], **extra) -> Profile:
    return Profile.model_validate(
        {
            "name": "test",
            "kind": "evse",
            "manufacturer": "t",
            "model": "t",
            "sources": ["test"],
            "registers": registers,
            **extra,
        }
    )


@pytest.mark.parametrize("name", profile_names())
def test_fresh_image_decodes_every_readable_register(name):
    image = DeviceImage(load_profile(name))
    values = image.values()
    for reg in image.profile.readable():
        if reg.not_available:
            continue  # 0 is a value, not the marker
        assert reg.quantity in values, reg.quantity


def test_set_get_respects_word_order_and_scale():
    profile = load_profile("phoenix-ev-charge-control")  # s32, LSW first
    image = DeviceImage(profile)
    image.set("energy_import_wh", 0x12345)
    reg = next(r for r in profile.registers if r.quantity == "energy_import_wh")
    assert image.peek("holding", reg.address, 2) == [0x2345, 0x0001]  # low word first
    assert image.get("energy_import_wh") == 0x12345


def test_byte_register_keeps_the_other_byte():
    profile = _profile(
        [
            {"quantity": "cp_state", "function": "input", "address": 0, "byte": "low",
             "map": {65: "A", 66: "B", 67: "C"}},
            {"quantity": "evse_error_code", "function": "input", "address": 0, "byte": "high"},
        ]
    )  # fmt: skip
    image = DeviceImage(profile)
    image.set("evse_error_code", 7)
    image.set("cp_state", "C")
    assert image.peek("input", 0, 1) == [0x0743]
    assert image.get("cp_state") == "C"
    assert image.get("evse_error_code") == 7


def test_exponent_register_is_written_and_used():
    profile = load_profile("iskra-wm3m4c")
    reg = next(r for r in profile.registers if r.quantity == "energy_import_wh")
    image = DeviceImage(profile, exponent=-1)
    image.set("energy_import_wh", 123_456)
    assert image.peek("input", reg.exponent_address, 1) == [0xFFFF]  # -1 as s16
    raw = image.peek("input", reg.address, 2)
    assert raw == codec.encode(reg, 123_456, "big", exponent=-1) == [0x0012, 0xD680]
    assert image.get("energy_import_wh") == 123_456


def test_strict_addresses_gaps_splits_and_lenient_mode():
    profile = load_profile("eastron-sdm630")
    strict = DeviceImage(profile, strict_addresses=True)
    assert isinstance(strict.read(4, 0, 6), list)
    assert strict.read(4, 0x24, 2) == ExcCodes.ILLEGAL_ADDRESS  # gap 0x24..0x33
    assert strict.read(4, 1, 2) == ExcCodes.ILLEGAL_ADDRESS  # half of two floats
    assert strict.read(4, 0, 3) == ExcCodes.ILLEGAL_ADDRESS
    lenient = DeviceImage(profile)
    assert lenient.read(4, 0x24, 2) == [0, 0]


def test_missing_table_is_illegal_function_and_max_request_is_illegal_value():
    image = DeviceImage(load_profile("eastron-sdm630"), max_request=10)
    assert image.read(1, 0, 1) == ExcCodes.ILLEGAL_FUNCTION  # no coils
    assert image.read(4, 0, 12) == ExcCodes.ILLEGAL_VALUE
    assert isinstance(image.read(4, 0, 10), list)


def test_single_value_reads():
    image = DeviceImage(load_profile("keba-p30x"), single_value_reads=True)
    assert isinstance(image.read(3, 1008, 2), list)
    assert image.read(3, 1008, 4) == ExcCodes.ILLEGAL_ADDRESS
    assert image.read(3, 1009, 1) == ExcCodes.ILLEGAL_ADDRESS


def test_writes_notify_decoded_values():
    seen = []
    profile = load_profile("phoenix-ev-charge-control")
    image = DeviceImage(profile, on_write=lambda q, v: seen.append((q, v)))
    assert image.write(5, 400, [True]) is None
    assert image.write(6, 528, [16]) is None
    assert seen == [("charging_enabled", True), ("offered_current_a", 16.0)]
    assert image.get("offered_current_a") == 16.0


def test_write_to_read_only_or_unknown_address_is_illegal_address():
    image = DeviceImage(load_profile("phoenix-ev-charge-control"))
    before = image.get("energy_import_wh")
    assert image.write(16, 904, [1, 0]) == ExcCodes.ILLEGAL_ADDRESS  # read-only register
    assert image.write(6, 529, [1]) == ExcCodes.ILLEGAL_ADDRESS  # not in the profile
    assert image.write(5, 401, [True]) == ExcCodes.ILLEGAL_ADDRESS
    assert image.get("energy_import_wh") == before


def test_partial_write_of_a_multiword_value_is_refused():
    profile = _profile(
        [{"quantity": "offered_current_a", "function": "holding", "address": 10, "type": "u32",
          "scale": 0.001, "unit": "A", "access": "rw"}]
    )  # fmt: skip
    image = DeviceImage(profile)
    assert image.write(6, 10, [1]) == ExcCodes.ILLEGAL_ADDRESS
    assert image.write(16, 10, [0, 16000]) is None
    assert image.get("offered_current_a") == 16.0


def test_write_only_register_is_stored_reported_and_not_readable_when_strict():
    seen = []
    profile = load_profile("keba-p30x")
    image = DeviceImage(profile, strict_addresses=True, on_write=lambda q, v: seen.append((q, v)))
    assert image.write(6, 5004, [16000]) is None  # mA, write-only
    assert image.write(6, 5014, [1]) is None
    assert seen == [("offered_current_a", 16.0), ("charging_enabled", True)]
    assert image.peek("holding", 5004, 1) == [16000]
    assert image.read(3, 5004, 1) == ExcCodes.ILLEGAL_ADDRESS


def test_callback_rejection_rolls_back():
    image = DeviceImage(
        load_profile("phoenix-ev-charge-control"), on_write=lambda q, v: ExcCodes.ILLEGAL_VALUE
    )
    image.set("offered_current_a", 10.0)
    assert image.write(6, 528, [3]) == ExcCodes.ILLEGAL_VALUE
    assert image.get("offered_current_a") == 10.0


def test_unmapped_write_value_is_illegal_value():
    profile = _profile(
        [{"quantity": "lock_state", "function": "holding", "address": 0, "access": "rw",
          "map": {0: "unlocked", 1: "locked"}}]
    )  # fmt: skip
    image = DeviceImage(profile)
    assert image.write(6, 0, [9]) == ExcCodes.ILLEGAL_VALUE
    assert image.get("lock_state") == "unlocked"


def test_views_of_writable_registers():
    image = DeviceImage(load_profile("bender-cc612"))
    assert image.views == {"charging_enabled"}
    image.set("offered_current_a", 16.0)
    assert image.get("charging_enabled") is True
    image.set("offered_current_a", 0.0)
    assert image.get("charging_enabled") is False
