"""OCPP 1.6 MeterValue / SampledValue payloads from evedge's canonical quantities.

`MEASURANDS` maps each OCPP measurand evedge can report to the canonical quantities
(drivers/quantities.py) that feed it, per phase where OCPP reports phases. It is a protocol
mapping, not site data, so it lives here rather than in a data file; a measurand missing
from it (SoC, RPM, the *.Interval ones) is one no supported device reports.

Values are strings as OCPP wants them: integer Wh from the register exactly, floats with a
fixed number of digits per unit. Never a Decimal (the `ocpp` library would serialize it as a
float with one decimal) and never a made-up value: a quantity the device did not report
recently is left out.

Signed meter values follow the OCA application note "Signed Meter Values in OCPP" for 1.6:
a SampledValue with format "SignedData" whose value is the JSON of a SignedMeterValueType
{signedMeterData: Base64 of the OCMF record, signingMethod, encodingMethod: "OCMF",
publicKey: Base64 DER SubjectPublicKeyInfo, or "" when not sent with this value}.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.sessions.times import from_us

# Reading contexts (OCPP 1.6 ReadingContext).
BEGIN = "Transaction.Begin"
END = "Transaction.End"
PERIODIC = "Sample.Periodic"
CLOCK = "Sample.Clock"
TRIGGER = "Trigger"

ENERGY = "Energy.Active.Import.Register"


@dataclass(frozen=True)
class Source:
    """One canonical quantity behind a measurand: its OCPP phase, unit and digits sent."""

    quantity: str
    phase: str | None
    unit: str | None  # OCPP UnitOfMeasure (None: the measurand has none, e.g. Frequency)
    digits: int  # decimals of a float value (integers are sent exactly)
    location: str = "Outlet"


def _phases(fmt: str, unit: str, digits: int, phase_fmt: str = "L{i}") -> tuple[Source, ...]:
    return tuple(Source(fmt.format(i=i), phase_fmt.format(i=i), unit, digits) for i in (1, 2, 3))


# measurand -> the quantities that feed it: a total first (no phase), then per phase.
MEASURANDS: dict[str, tuple[Source, ...]] = {
    ENERGY: (
        Source("energy_import_wh", None, "Wh", 0),
        *_phases("energy_import_l{i}_wh", "Wh", 0),
    ),
    "Energy.Active.Export.Register": (
        Source("energy_export_wh", None, "Wh", 0),
        *_phases("energy_export_l{i}_wh", "Wh", 0),
    ),
    "Energy.Reactive.Import.Register": (Source("reactive_energy_import_varh", None, "varh", 0),),
    "Energy.Reactive.Export.Register": (Source("reactive_energy_export_varh", None, "varh", 0),),
    "Power.Active.Import": (Source("power_w", None, "W", 1), *_phases("power_l{i}_w", "W", 1)),
    "Power.Reactive.Import": (Source("reactive_power_var", None, "var", 1),),
    "Power.Factor": (Source("power_factor", None, None, 3),),
    "Current.Import": _phases("current_l{i}", "A", 2),
    "Current.Offered": (Source("offered_current_a", None, "A", 1),),
    "Voltage": _phases("voltage_l{i}", "V", 1, "L{i}-N"),
    "Frequency": (Source("frequency_hz", None, None, 2),),
    "Temperature": (Source("temperature_c", None, "Celsius", 1, "Body"),),
}

SUPPORTED_MEASURANDS: tuple[str, ...] = tuple(MEASURANDS)


def parse_measurands(csl: str | None) -> list[str]:
    """The measurands of a configuration value like "Energy.Active.Import.Register,Voltage"
    (unsupported names are skipped: ChangeConfiguration refuses them before they get here)."""
    names = [m.strip() for m in (csl or "").split(",") if m.strip()]
    return [m for m in names if m in MEASURANDS]


def iso(us: int) -> str:
    """UTC with milliseconds and `Z` (strict central systems refuse times without offset)."""
    return from_us(us).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any, digits: int) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return f"{value:.{digits}f}"
    return None


def sampled_values(
    values: Mapping[str, Any], measurands: Iterable[str], context: str
) -> list[dict[str, Any]]:
    """SampledValue objects (camelCase, strings) for the measurands `values` can feed.

    `values` maps canonical quantity -> value (from the meter, the EVSE or a stored sample).
    A measurand with a total and phases sends the total when known, and the phases too."""
    out: list[dict[str, Any]] = []
    for m in measurands:
        for src in MEASURANDS.get(m, ()):
            text = _text(values.get(src.quantity), src.digits)
            if text is None:
                continue
            sv: dict[str, Any] = {
                "value": text,
                "context": context,
                "format": "Raw",
                "measurand": m,
                "location": src.location,
            }
            if src.phase is not None:
                sv["phase"] = src.phase
            if src.unit is not None:
                sv["unit"] = src.unit
            out.append(sv)
    return out


def signed_value(record: str, context: str, public_key_hex: str | None) -> dict[str, Any]:
    """The SampledValue carrying a signed OCMF record (format SignedData, OCA app note).

    `public_key_hex`: the DER key (hex, as `MeterPublicKey<n>` shows it) to send with this
    value, or None when PublicKeyWithSignedMeterValue says not to send it here."""
    # Imported here: agent.config reaches this module (the measurand list), and ocmf
    # brings in cryptography, which nothing else in a config load needs.
    from agent.billing import ocmf

    parsed = ocmf.parse(record)
    key = "" if not public_key_hex else base64.b64encode(bytes.fromhex(public_key_hex)).decode()
    signed = {
        "signedMeterData": base64.b64encode(record.encode()).decode("ascii"),
        "signingMethod": parsed.algorithm,
        "encodingMethod": "OCMF",
        "publicKey": key,
    }
    return {
        "value": json.dumps(signed, separators=(",", ":")),
        "context": context,
        "format": "SignedData",
        "measurand": ENERGY,
        "location": "Outlet",
        "unit": "Wh",
    }


def meter_value(at_us: int, sampled: list[dict[str, Any]]) -> dict[str, Any]:
    """One MeterValue: a timestamp and its sampled values."""
    return {"timestamp": iso(at_us), "sampledValue": sampled}


def signed_record_of(sampled_value: Mapping[str, Any]) -> tuple[str, str]:
    """(OCMF record text, public key Base64 or "") of a SignedData sampled value (the
    inverse of `signed_value`; for tests and tools that check what was sent)."""
    data = json.loads(sampled_value["value"])
    return base64.b64decode(data["signedMeterData"]).decode(), data.get("publicKey", "")
