"""What a value means, from the device's profile: `evse_error_code 7 (unlocking in
progress)` rather than a bare 7 (the profile's error-code table), `cp_state 3 (C)` for a raw
value of a mapped register (its enum)."""

from __future__ import annotations

from typing import Any

from drivers.profile import Profile, ProfileError, load_profile


def profile_of(name: str | None) -> Profile | None:
    """The profile `name`, None if there is none or it does not load (the views then show
    bare values; `evedge config check` reports the profile's problem)."""
    if name is None:
        return None
    try:
        return load_profile(name)
    except ProfileError:
        return None


def with_meaning(profile: Profile | None, quantity: str, value: Any) -> str:
    """`7 (unlocking in progress)` for a code in the profile's table, `3 (C)` for a raw
    value its register maps, else the value."""
    if profile is None or isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if quantity == "evse_error_code" and int(value) in profile.error_codes:
        return f"{value:g} ({profile.error_codes[int(value)].text})"
    reg = next((r for r in profile.readable() if r.quantity == quantity and r.map), None)
    if reg is not None and int(value) in reg.map:
        return f"{value:g} ({reg.map[int(value)]})"
    return str(value)
