"""`evedge report`: usage per day, week or month — sessions, kWh, revenue, idle time,
utilization, fault downtime — as a table, CSV or JSON, optionally plotted.

`evedge report --kpi`: availability KPIs per connector and month (agent/kpi): NEVI uptime,
attempts, first-try success, sessions ended by faults; from the running service when it
answers, else read-only from the store."""

from __future__ import annotations

import csv
import sys
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.cli.fmt import duration
from agent.cli.report_plot import plot_usage
from agent.cli.service import read, store_note
from agent.cli.store_open import config_and_store
from agent.kpi import render
from agent.kpi.model import KpiReport
from agent.kpi.render import PlotError
from agent.kpi.station import station_kpis
from agent.sessions.report import (
    ReportError,
    build_report,
    day_after,
    default_range,
)


class PeriodOpt(StrEnum):
    day = "day"
    week = "week"
    month = "month"


class ByOpt(StrEnum):
    connector = "connector"
    token = "token"


class FormatOpt(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


COLUMNS = (
    "period",
    "group",
    "sessions",
    "energy_kwh",
    "revenue_excl_vat",
    "revenue_incl_vat",
    "currency",
    "idle_s",
    "utilization_pct",
    "fault_downtime_s",
    "review",
)


# Table headers an 80-column terminal shows whole (CSV and JSON keep the field names).
HEADERS = {
    "energy_kwh": "kWh",
    "revenue_excl_vat": "net",
    "revenue_incl_vat": "gross",
    "currency": "cur.",
    "idle_s": "idle",
    "utilization_pct": "used %",
    "fault_downtime_s": "faulted",
}
DURATIONS = ("idle_s", "fault_downtime_s")


def _cell(column: str, value: object) -> str:
    if value is None:
        return "—"
    if column in DURATIONS:
        return "—" if float(value) == 0 else duration(float(value))
    return str(value)


def _range(period: str, today: date, first: date | None, last: date | None) -> tuple[date, date]:
    """[start, end) of the report: the defaults, moved by --from/--to; exit 2 on a range
    that ends before it starts, naming the dates the user gave."""
    if first is not None and last is not None and first > last:
        raise fail(f"--from {first} is after --to {last}: give the earlier date first", Exit.USAGE)
    try:
        given_end = None if last is None else day_after(last)
        start, end = default_range(period, last or today)
    except ReportError as e:
        raise fail(str(e), Exit.USAGE) from None
    end = given_end or end
    if first is not None:
        start = first
        if first >= end:
            raise fail(
                f"--from {first} is after today ({today}): nothing to report; "
                "give an earlier --from (or --to)",
                Exit.USAGE,
            )
    return start, end


def _date(text: str | None, what: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise fail(f"{what}: not a date like 2025-03-01: {text!r}", Exit.USAGE) from None


def report(
    period: Annotated[PeriodOpt, typer.Option("--period", help="bucket size")] = PeriodOpt.day,
    from_: Annotated[
        str | None, typer.Option("--from", help="first local date (default: a span back)")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="last local date, inclusive")] = None,
    by: Annotated[ByOpt | None, typer.Option("--by", help="split per connector or token")] = None,
    fmt: Annotated[FormatOpt, typer.Option("--format", help="output format")] = FormatOpt.table,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="also draw energy and revenue to a PNG")
    ] = None,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="station config (TOML)")
    ] = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
    all_periods: Annotated[
        bool, typer.Option("--all", help="table: also the periods without sessions")
    ] = False,
    kpi: Annotated[
        bool, typer.Option("--kpi", help="availability KPIs (NEVI uptime, attempts) instead")
    ] = False,
    months: Annotated[
        int | None, typer.Option("--months", min=1, max=36, help="--kpi: months shown")
    ] = None,
) -> None:
    """Usage report from the charge records (buckets in the station's timezone).

    Example: `evedge report --period week --from 2025-03-01 --to 2025-03-31 --plot usage.png`"""
    if kpi:
        _kpi(config, FormatOpt.json if json else fmt, plot, months)
        return
    cfg, store = config_and_store(config)
    tz = cfg.billing.timezone if cfg.billing else "UTC"
    today = datetime.now(ZoneInfo(tz)).date()
    first, last = _date(from_, "--from"), _date(to, "--to")
    start, end = _range(period.value, today, first, last)
    try:
        with store:
            rows = build_report(
                store,
                period=period.value,
                start=start,
                end=end,
                tz=tz,
                connectors=[c.id for c in cfg.connector],
                by=None if by is None else by.value,
                now=datetime.now(ZoneInfo(tz)),
            )
        if plot is not None:
            plot_usage(rows, str(plot), cfg.station.id, None if by is None else by.value)
    except (ReportError, PlotError) as e:
        raise fail(str(e), Exit.USAGE) from None
    out = [r.to_json() for r in rows]
    if json or fmt == FormatOpt.json:
        emit_json(out)
    elif fmt == FormatOpt.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(out)
    else:
        title = f"station {cfg.station.id}: usage per {period.value} ({tz})"
        # No box: ten columns fit 80 characters with every date and header whole.
        table = Table(title=title, box=None, pad_edge=False, header_style="bold underline")
        cols = [c for c in COLUMNS if by is not None or c != "group"]
        for c in cols:
            table.add_column(
                HEADERS.get(c, c),
                justify="left" if c in ("period", "group") else "right",
                no_wrap=c != "group",
            )
        shown = [r for r in out if all_periods or r["sessions"] or float(r["fault_downtime_s"])]
        for r in shown:
            table.add_row(*[_cell(c, r[c]) for c in cols])
        console.print(table)
        if len(shown) < len(out):
            console.print(
                f"{len(out) - len(shown)} of {len(out)} periods had no sessions and no fault "
                "downtime: not shown (--all shows them)"
            )
    if plot is not None and fmt == FormatOpt.table and not json:
        console.print(f"plot written to {plot}")


def _kpi(config: Path, fmt: FormatOpt, plot: Path | None, months: int | None) -> None:
    """`--kpi`: from the service (API) when it answers, else from the store, read-only."""
    cfg = load_or_exit(config)
    result = read(cfg, "kpi", months=months)
    if result is not None:
        rep = KpiReport.model_validate(result)
    else:
        _, store = config_and_store(config)
        store_note(cfg)
        with store:
            rep = station_kpis(cfg, store.reading, months=months)
    if plot is not None:
        try:
            render.plot(rep, str(plot))
        except PlotError as e:
            raise fail(str(e), Exit.USAGE) from None
    if fmt == FormatOpt.json:
        emit_json(rep.model_dump(mode="json"))
    elif fmt == FormatOpt.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=render.CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(render.csv_rows(rep))
    else:
        table, notes = render.table(rep)
        console.print(table)
        for line in notes:
            console.print(line, highlight=False)
        if plot is not None:
            console.print(f"plot written to {plot}")
