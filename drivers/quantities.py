"""The canonical quantities a device profile may feed, with their unit and value kind.

Every register in a profile names one of these; the profile's `unit` must match, which
catches unit mistakes (kWh vs Wh, mA vs A) when a profile is loaded, not in the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["float", "int", "str", "bool"]


@dataclass(frozen=True)
class Quantity:
    """One canonical quantity: its unit (empty for dimensionless) and Python value kind."""

    name: str
    unit: str
    kind: Kind
    doc: str


def _q(name: str, unit: str, kind: Kind, doc: str) -> Quantity:
    return Quantity(name, unit, kind, doc)


_ALL = [
    *(_q(f"voltage_l{i}", "V", "float", f"phase L{i} to neutral voltage") for i in (1, 2, 3)),
    *(_q(f"current_l{i}", "A", "float", f"phase L{i} current") for i in (1, 2, 3)),
    *(_q(f"power_l{i}_w", "W", "float", f"phase L{i} active power") for i in (1, 2, 3)),
    *(
        _q(f"apparent_power_l{i}_va", "VA", "float", f"phase L{i} apparent power")
        for i in (1, 2, 3)
    ),
    *(
        _q(f"reactive_power_l{i}_var", "var", "float", f"phase L{i} reactive power")
        for i in (1, 2, 3)
    ),
    *(_q(f"power_factor_l{i}", "", "float", f"phase L{i} power factor") for i in (1, 2, 3)),
    *(
        _q(f"voltage_{a}_{b}", "V", "float", f"line voltage {a.upper()}-{b.upper()}")
        for a, b in (("l1", "l2"), ("l2", "l3"), ("l3", "l1"))
    ),
    _q("current_n", "A", "float", "neutral current"),
    _q("power_w", "W", "float", "total active power (import positive)"),
    _q("apparent_power_va", "VA", "float", "total apparent power"),
    _q("reactive_power_var", "var", "float", "total reactive power"),
    _q("power_factor", "", "float", "total power factor"),
    _q("power_demand_w", "W", "float", "total system power demand (meter's demand period)"),
    *(_q(f"thd_voltage_l{i}_pct", "%", "float", f"phase L{i} voltage THD") for i in (1, 2, 3)),
    _q("thd_voltage_pct", "%", "float", "average voltage THD"),
    *(_q(f"thd_current_l{i}_pct", "%", "float", f"phase L{i} current THD") for i in (1, 2, 3)),
    _q("thd_current_pct", "%", "float", "average current THD"),
    _q("frequency_hz", "Hz", "float", "supply frequency"),
    # Energy registers are integer Wh: billing never sees a float.
    _q("energy_import_wh", "Wh", "int", "total active energy imported"),
    _q("energy_export_wh", "Wh", "int", "total active energy exported"),
    _q("energy_session_wh", "Wh", "int", "energy of the current session (EVSE counter)"),
    *(_q(f"energy_import_l{i}_wh", "Wh", "int", f"phase L{i} energy imported") for i in (1, 2, 3)),
    *(_q(f"energy_export_l{i}_wh", "Wh", "int", f"phase L{i} energy exported") for i in (1, 2, 3)),
    *(_q(f"energy_total_l{i}_wh", "Wh", "int", f"phase L{i} import + export") for i in (1, 2, 3)),
    _q("energy_total_wh", "Wh", "int", "total active energy (import + export)"),
    _q("reactive_energy_import_varh", "varh", "int", "reactive energy imported"),
    _q("reactive_energy_export_varh", "varh", "int", "reactive energy exported"),
    _q("serial_number", "", "str", "device serial number"),
    _q("model", "", "str", "device model identifier"),
    _q("firmware_version", "", "str", "device firmware version"),
    # IEC 61851-1 control pilot state, "A".."F".
    _q("cp_state", "", "str", "IEC 61851-1 control pilot state A..F"),
    _q("charger_state", "", "str", "vendor charging state, mapped to a word"),
    _q("cable_state", "", "str", "cable / plug state, mapped to a word"),
    _q("cable_max_current_a", "A", "float", "current capacity of the plugged cable (PP)"),
    _q("contactor_closed", "", "bool", "main contactor closed"),
    _q("charging_enabled", "", "bool", "EVSE allowed to charge (enable flag)"),
    _q("offered_current_a", "A", "float", "current offered to the EV (PWM setpoint)"),
    _q("max_hw_current_a", "A", "float", "hardware current limit of the EVSE"),
    _q("evse_error_code", "", "int", "EVSE controller error / status code (vendor table)"),
    _q("temperature_c", "°C", "float", "EVSE internal temperature"),
    _q("failsafe_timeout_s", "s", "float", "communication failsafe timeout"),
    _q("failsafe_current_a", "A", "float", "current offered when communication fails"),
    _q("lock_state", "", "str", "connector lock state, mapped to a word"),
    _q("connector_unlock", "", "bool", "command: release the connector lock (write true)"),
]

QUANTITIES: dict[str, Quantity] = {q.name: q for q in _ALL}


def get(name: str) -> Quantity:
    """Return the canonical quantity called `name`, or raise KeyError listing the choices."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(
            f"unknown quantity {name!r}; known: {', '.join(sorted(QUANTITIES))}"
        ) from None


# Canonical meanings of EVSE controller error codes. A profile maps each vendor code to one
# of these, so diagnosis and the simulator speak one language across vendors.
EVSE_FAULTS: dict[str, str] = {
    "none": "no error",
    "busy": "transient: lock/unlock or self-test in progress",
    "cable_rejected": "cable rejected (PP coding or capacity)",
    "invalid_pp": "proximity pilot (PP) resistor invalid",
    "pilot_short": "control pilot shorted to PE / no supply (IEC 61851 state E)",
    "evse_unavailable": "EVSE not available (IEC 61851 state F)",
    "diode_missing": "vehicle CP diode missing",
    "lock_failure": "connector lock or unlock failed",
    "overcurrent": "vehicle draws more current than offered",
    "meter_comm": "EVSE lost communication with its meter",
    "vehicle_rejected": "vehicle rejected",
    "contactor_fault": "contactor failed (welded or will not close)",
    "rcd_dc": "residual current detected (DC 6 mA or AC)",
    "ground_failure": "protective earth / ground failure",
    "overtemperature": "over-temperature",
    "overvoltage": "supply over-voltage",
    "undervoltage": "supply under-voltage",
    "internal": "internal controller error",
    "unknown": "error the vendor does not specify",
}
