"""`evedge tariff check|quote`: validate an OCPI tariff file and price a planned session."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.table import Table

from agent.billing.pricing import CostResult, PricingError, price_session, quote
from agent.billing.session_file import load_session
from agent.billing.tariff import (
    PriceComponent,
    Tariff,
    TariffError,
    TariffRestrictions,
    load_tariff,
)
from agent.billing.usable import TariffLimits, check_usable
from agent.cli.common import Exit, console, emit_json, err_console, fail, load_or_exit
from agent.events import utcnow

app = typer.Typer(help="Check OCPI 2.2.1 tariff files and quote sessions.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
FileArg = Annotated[Path, typer.Argument(help="tariff file (.json or .toml, OCPI 2.2.1 Tariff)")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="station config whose [billing.tariff_limits] apply"),
]


def _limits(config: Path | None) -> TariffLimits:
    if config is None:
        return TariffLimits()
    billing = load_or_exit(config).billing
    return TariffLimits() if billing is None else billing.tariff_limits


def _load(file: Path, as_json: bool, limits: TariffLimits, in_force: bool) -> Tariff:
    """Load the tariff and check it is usable (check_usable; its validity period too when
    `in_force`), or print every problem (field path first) and exit 2."""
    try:
        return check_usable(load_tariff(file), limits, utcnow() if in_force else None, file.name)
    except TariffError as e:
        if as_json:
            problems = [{"path": p, "message": m} for p, m in e.problems]
            emit_json({"ok": False, "file": str(file), "problems": problems})
        else:
            for p, m in e.problems:
                err_console.print(f"[red]{e.file}[/]: {p}: {m}", highlight=False)
        raise typer.Exit(int(Exit.USAGE)) from None


def _component(c: PriceComponent) -> str:
    unit = {"ENERGY": "/kWh", "TIME": "/h charging", "PARKING_TIME": "/h parking"}
    step = {"ENERGY": f"per {c.step_size} Wh", "FLAT": ""}.get(c.type, f"per {c.step_size} s")
    vat = "no VAT applicable" if c.vat is None else f"+{c.vat}% VAT"
    return " ".join(x for x in (c.type.value, f"{c.price}{unit.get(c.type, '')}", vat, step) if x)


def _restrictions(r: TariffRestrictions | None) -> str:
    if r is None:
        return "always (fallback)"
    out = []
    if r.start_time or r.end_time:
        a = r.start_time.strftime("%H:%M") if r.start_time else "00:00"
        b = r.end_time.strftime("%H:%M") if r.end_time else "24:00"
        out.append(f"{a}–{b} local")
    if r.day_of_week:
        out.append(" ".join(d.value[:3] for d in r.day_of_week))
    if r.start_date or r.end_date:
        out.append(f"dates [{r.start_date or '…'}, {r.end_date or '…'})")
    for name, unit in (("kwh", "kWh"), ("power", "kW"), ("current", "A"), ("duration", "s")):
        lo, hi = getattr(r, f"min_{name}"), getattr(r, f"max_{name}")
        if lo is not None or hi is not None:
            out.append(f"{name} [{lo if lo is not None else 0}, {hi if hi is not None else '∞'})")
            out[-1] += f" {unit}"
    if r.reservation:
        out.append(r.reservation.lower())
    return ", ".join(out) or "always (fallback)"


@app.command("check")
def check(file: FileArg, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Validate a tariff file for use now: shape, validity period, price ceilings and step
    sizes ([billing.tariff_limits] of --config, else the defaults), a fallback element;
    every problem with its field path, exit 2 if any."""
    tariff = _load(file, json, _limits(config), in_force=True)
    warnings = tariff.warnings()
    if json:
        emit_json(
            {
                "ok": True,
                "file": str(file),
                "tariff": tariff.model_dump(mode="json", exclude_none=True),
                "warnings": [{"path": p, "message": m} for p, m in warnings],
            }
        )
        return
    table = Table(title=f"{file}: tariff {tariff.id} ({tariff.currency}) — ok")
    for col in ("#", "price components", "applies when"):
        table.add_column(col)
    for i, el in enumerate(tariff.elements):
        comps = "\n".join(_component(c) for c in el.price_components)
        table.add_row(str(i), comps, _restrictions(el.restrictions))
    console.print(table)
    for name in ("min_price", "max_price"):
        p = getattr(tariff, name)
        if p is not None:
            incl = "" if p.incl_vat is None else f" ({p.incl_vat} incl. VAT)"
            console.print(f"{name}: {p.excl_vat} {tariff.currency} excl. VAT{incl}")
    for p, m in warnings:
        console.print(f"[yellow]warning[/]: {p}: {m}", highlight=False)


def _when(text: str, tz: ZoneInfo, what: str) -> datetime:
    """ISO 8601; a time without offset is local wall-clock time in `tz`."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{what}: not an ISO 8601 date-time: {text!r}", Exit.USAGE) from None
    return dt.replace(tzinfo=tz) if dt.tzinfo is None else dt


def _qty(unit: str, q: Decimal) -> str:
    if unit == "Wh":
        return f"{q / 1000:.3f} kWh"
    if unit == "s":
        s = int(q.to_integral_value(rounding=ROUND_CEILING))
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{q:g}"


def _vat(v: Decimal | None) -> str:
    return "—" if v is None else f"{v}%"


def _money(v: Decimal | None) -> str:
    return "unknown" if v is None else str(v)


def _billed(unit: str, q: Decimal, billed: Decimal) -> str:
    """Billed quantity, with the measured one when step_size rounded it up."""
    out = _qty(unit, billed)
    return out if billed == q else f"{out} ({_qty(unit, q)})"


SHORT = {"ENERGY": "energy", "TIME": "charging", "PARKING_TIME": "parking", "FLAT": "flat fee"}
PER = {"Wh": "/kWh", "s": "/h", "session": ""}


def _cost_table(r: CostResult, tz: ZoneInfo) -> Table:
    table = Table(title=f"tariff {r.tariff_id}: quote in {r.currency}")
    for col in ("period (local)", "item", "billed (measured)", "price", "VAT"):
        table.add_column(col)
    table.add_column("excl. VAT", justify="right")
    table.add_column("incl. VAT", justify="right")
    units = {d.dimension: d.unit for d in r.dimensions}
    for p in r.periods:
        span = f"{p.start.astimezone(tz):%a %H:%M}–{p.end.astimezone(tz):%H:%M}"
        for ln in p.lines:
            u = units[ln.dimension]
            table.add_row(
                span,
                SHORT[ln.dimension],
                _billed(u, ln.quantity, ln.billed_quantity),
                f"{ln.unit_price}{PER[u]}",
                _vat(ln.vat),
                _money(ln.excl_vat),
                _money(ln.incl_vat),
            )
    table.add_section()
    for d in r.dimensions:
        table.add_row(
            "",
            f"[bold]{SHORT[d.dimension]}[/]",
            _billed(d.unit, d.quantity, d.billed_quantity),
            "mixed" if d.unit_price is None else f"{d.unit_price}{PER[d.unit]}",
            "mixed" if d.vat_mixed else _vat(d.vat),
            _money(d.excl_vat),
            _money(d.incl_vat),
        )
    table.add_section()
    limit = r.limit_excl or r.limit_incl
    label = "[bold]total[/]" + (f" ({limit})" if limit else "")
    total = (_money(r.total_excl_vat), _money(r.total_incl_vat))
    table.add_row("", label, "", "", "", *total)
    return table


@app.command("quote")
def quote_cmd(
    file: FileArg,
    energy_wh: Annotated[
        int | None, typer.Option("--energy-wh", min=0, help="energy to charge (Wh)")
    ] = None,
    start: Annotated[str | None, typer.Option("--start", help="plug-in time, ISO 8601")] = None,
    end: Annotated[str | None, typer.Option("--end", help="end of charging, ISO 8601")] = None,
    session: Annotated[
        Path | None,
        typer.Option(
            "--session",
            help="price this session instead: OCPI Session/CDR JSON with charging_periods "
            "(energy, power, current per period) or an evedge charge record body",
        ),
    ] = None,
    parking_s: Annotated[
        int, typer.Option("--parking-s", min=0, help="seconds plugged in after charging")
    ] = 0,
    max_power_w: Annotated[
        int | None,
        typer.Option("--max-power-w", min=0, help="charging power for power restrictions"),
    ] = None,
    tz: Annotated[
        str, typer.Option("--tz", help="station timezone; times without offset are local")
    ] = "UTC",
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Price a planned session (--energy-wh, --start, --end) or a past one (--session):
    ENERGY, TIME, PARKING_TIME and FLAT, with VAT and totals."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"--tz: unknown timezone {tz!r}", Exit.USAGE) from None
    usage = "give --session FILE, or all of --energy-wh, --start, --end (not both)"
    tariff = _load(file, json, _limits(config), in_force=False)
    notes: list[str] = []
    try:
        if session is not None:
            if energy_wh is not None or start is not None or end is not None:
                raise fail(usage, Exit.USAGE)
            read = load_session(session)
            notes = read.notes
            if not tariff.is_valid_at(read.session.start):
                notes.append(f"tariff {tariff.id} was not in force at the session start")
            # A past session is priced by the tariff it had, in force or not (its record
            # says which): the result must be the record's.
            result = price_session(tariff, read.session, tz=zone, in_force_only=False)
        elif energy_wh is None or start is None or end is None:
            raise fail(usage, Exit.USAGE)
        else:
            t0, t1 = _when(start, zone, "--start"), _when(end, zone, "--end")
            result = quote(tariff, energy_wh, t0, t1, parking_s, tz=zone, max_power_w=max_power_w)
    except PricingError as e:
        raise fail(str(e), Exit.USAGE) from None
    result = result.model_copy(update={"notes": [*notes, *result.notes]})
    if json:
        emit_json(result.to_json())
        return
    console.print(_cost_table(result, zone))
    for note in result.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
