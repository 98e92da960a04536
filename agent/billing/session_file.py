"""A session timeline read from JSON, for `evedge tariff quote --session FILE`: an OCPI 2.2.1
Session or CDR (its `charging_periods`), or an evedge charge record body, so the cloud can
recompute any record or any of OCPI's worked cases.

OCPI periods: each starts at its `start_date_time` and ends where the next starts (the last at
the session's `end_date_time`). A period with a PARKING_TIME dimension (and no ENERGY) is
parking; the rest is charging, and all parking must come after all charging (the cost engine
has one end of charging). Per period: ENERGY (kWh in the period) builds the register, POWER
or MAX_POWER (kW) and CURRENT or MAX_CURRENT (A) are held from the period's start for power
and current restrictions. When no period gives ENERGY, the document's `total_energy` (CDR)
or `kwh` (Session) is spread evenly over the charging time. RESERVATION_TIME periods are
left out with a note (reservations are not priced by evedge). OCPI 2.1.1's `end_datetime`
is read as well. evedge records: `start`, `charging_end`, `end` and the periods'
`energy_wh`; records do not keep power, so power restrictions cannot be recomputed from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.billing.pricing import MeterSample, PricingError, Session


@dataclass(frozen=True)
class SessionFile:
    """The timeline to price, and what could not be taken from the file."""

    session: Session
    notes: list[str]


def _time(v: Any, where: str) -> datetime:
    try:
        dt = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        raise PricingError(f"{where}: not an ISO 8601 date-time: {v!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)  # OCPI: no offset means UTC


def _dims(period: dict[str, Any], where: str) -> dict[str, Decimal]:
    out = {}
    for k, d in enumerate(period.get("dimensions") or []):
        try:
            out[str(d["type"])] = Decimal(str(d["volume"]))
        except (KeyError, TypeError, ArithmeticError):
            raise PricingError(f"{where}.dimensions[{k}]: needs type and volume") from None
    return out


def _ocpi(doc: dict[str, Any]) -> SessionFile:
    periods = doc["charging_periods"]
    end = _time(doc.get("end_date_time", doc.get("end_datetime")), "end_date_time")
    starts = [_time(p.get("start_date_time"), f"charging_periods[{i}].start_date_time")
              for i, p in enumerate(periods)]  # fmt: skip
    notes, samples, charging_end = [], [], None
    wh = Decimal(0)
    for i, (p, at) in enumerate(zip(periods, starts, strict=True)):
        where = f"charging_periods[{i}]"
        d = _dims(p, where)
        if "RESERVATION_TIME" in d:
            notes.append(f"{where}: reservation time is not priced by evedge: left out")
            continue
        parking = "PARKING_TIME" in d and "ENERGY" not in d
        if parking and charging_end is None:
            charging_end = at
        elif not parking and charging_end is not None:
            raise PricingError(f"{where}: charging after parking is not supported")
        power = d.get("MAX_POWER", d.get("POWER"))
        current = d.get("MAX_CURRENT", d.get("CURRENT"))
        samples.append(MeterSample(at, int(wh), None if power is None else power * 1000, current))
        wh += d.get("ENERGY", Decimal(0)) * 1000
    if not samples:
        raise PricingError("charging_periods: no period to price")
    start = samples[0].at
    charging_end = charging_end or end
    total = doc.get("total_energy", doc.get("kwh"))
    if not wh and total is not None:
        wh = Decimal(str(total)) * 1000
        samples = [samples[0]]  # the register then rises linearly to charging_end
        notes.append("no ENERGY per period: the total energy is spread evenly over charging")
    samples.append(MeterSample(charging_end, int(wh), samples[-1].power_w, samples[-1].current_a))
    return SessionFile(Session(start, charging_end, end, samples), notes)


def _record(doc: dict[str, Any]) -> SessionFile:
    start = _time(doc["start"], "start")
    charging_end = _time(doc["charging_end"], "charging_end")
    samples, wh = [MeterSample(start, 0)], 0
    for i, p in enumerate(doc["charging_periods"]):
        wh += int(p.get("energy_wh", 0))
        samples.append(MeterSample(_time(p["end"], f"charging_periods[{i}].end"), wh))
    notes = ["an evedge record keeps no power samples: power restrictions are not recomputed"]
    if len({p.get("tariff_id") for p in doc["charging_periods"]}) > 1:
        notes.append("the record changed tariff mid-session: priced by this one tariff only")
    return SessionFile(Session(start, charging_end, _time(doc["end"], "end"), samples), notes)


def load_session(path: Path) -> SessionFile:
    """Read an OCPI Session/CDR or an evedge record body; PricingError naming what is wrong."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PricingError(f"{path}: cannot read a JSON session ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("charging_periods"), list):
        raise PricingError(f"{path}: no charging_periods list (OCPI Session/CDR or record)")
    try:
        return _record(doc) if "charging_end" in doc else _ocpi(doc)
    except KeyError as e:
        raise PricingError(f"{path}: missing field {e}") from None
