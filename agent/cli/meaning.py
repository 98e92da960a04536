"""What a decoded value means, from the device's profile: `evse_error_code 7 (unlocking in
progress)` rather than a bare 7 (the profile's error-code table)."""

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
    """`7 (unlocking in progress)` for a code in the profile's table, else the value."""
    if profile is not None and quantity == "evse_error_code" and isinstance(value, int | float):
        code = profile.error_codes.get(int(value))
        if code is not None:
            return f"{value:g} ({code.text})"
    return str(value)
