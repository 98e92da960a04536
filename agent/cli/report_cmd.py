"""`evedge report`: usage per day, week or month — sessions, kWh, revenue, idle time,
utilization, fault downtime — as a table, CSV or JSON, optionally plotted."""

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

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail
from agent.cli.store_open import config_and_store
from agent.sessions.report import ReportError, build_report, default_range, plot_report


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
) -> None:
    """Usage report from the charge records (buckets in the station's timezone)."""
    cfg, store = config_and_store(config)
    tz = cfg.billing.timezone if cfg.billing else "UTC"
    today = datetime.now(ZoneInfo(tz)).date()
    start, end = default_range(period.value, today)
    first, last = _date(from_, "--from"), _date(to, "--to")
    if first is not None:
        start = first
    if last is not None:
        from datetime import timedelta

        end = last + timedelta(days=1)
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
            plot_report(rows, str(plot))
    except ReportError as e:
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
        table = Table(title=title)
        cols = [c for c in COLUMNS if by is not None or c != "group"]
        for c in cols:
            table.add_column(
                c.replace("_", " "), justify="left" if c in ("period", "group") else "right"
            )
        for r in out:
            table.add_row(*[("—" if r[c] is None else str(r[c])) for c in cols])
        console.print(table)
    if plot is not None and fmt == FormatOpt.table and not json:
        console.print(f"plot written to {plot}")
