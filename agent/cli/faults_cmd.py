"""`evedge faults`: the faults diagnosis raised — active ones with guidance, or the history.

Reads the store named by the station config directly (works while the service runs: the
store is in WAL mode, and while it is down).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.diagnosis.store import FaultLog, FaultRecord
from agent.logsetup import setup_logging
from agent.store.db import StoreError

SEVERITY_STYLE = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "dim"}


def faults(
    config: Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")] = (
        DEFAULT_CONFIG
    ),
    history: Annotated[bool, typer.Option("--history", help="all faults, newest first")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="history length")] = 50,
    lang: Annotated[str, typer.Option(help="language of the texts: en or de")] = "",
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show active faults with root cause and guidance (--history: all of them)."""
    cfg = load_or_exit(config)
    setup_logging("warning")  # logs to stderr: stdout is the report (or the JSON)
    lang = lang or cfg.diagnosis.language
    if lang not in ("en", "de"):
        raise fail(f"--lang must be en or de, got {lang!r}", Exit.USAGE)
    path = cfg.store.path
    if not path.exists():
        raise fail(
            f"no store at {path}: the service has not run with this config yet", Exit.UNREACHABLE
        )
    try:
        with FaultLog(path, readonly=True) as log:
            records = log.history(limit) if history else log.active()
    except StoreError as e:
        raise fail(str(e), Exit.UNREACHABLE) from None
    if json:
        emit_json(
            {
                "station": cfg.station.id,
                "active_only": not history,
                "faults": [r.as_json() for r in records],
            }
        )
        return
    if not records:
        console.print("[green]no active faults[/]" if not history else "no faults recorded")
        return
    console.print(_table(records, lang, history))
    if not history:
        for r in records:
            console.print(_details(r, lang))


def _when(ts: datetime) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(records: list[FaultRecord], lang: str, history: bool) -> Table:
    title = "fault history (newest first)" if history else "active faults"
    table = Table(title=title)
    for col in ("raised", "fault", "where", "severity", "Faulted", "OCPP 1.6"):
        table.add_column(col)
    if history:
        table.add_column("cleared")
    for r in records:
        f = r.raised
        row = [
            _when(f.ts),
            f.title.get(lang, f.rule),
            f.scope,
            Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")),
            "yes" if f.faulted else "no",
            f.codes.error_code,
        ]
        if history:
            c = r.cleared
            row.append(f"{_when(c.ts)} ({c.reason})" if c else Text("active", style="bold"))
        table.add_row(*row)
    return table


def _details(r: FaultRecord, lang: str) -> Panel:
    f = r.raised
    # Text, not markup: evidence and vendor texts may contain brackets.
    lines: list[Text | str] = [Text(f.root_cause.get(lang, ""), style="bold")]
    lines.append(f"driver: {f.driver_message.get(lang, '')}")
    codes = f.codes
    lines.append(
        f"OCPP 1.6 {codes.error_code}, vendorId {codes.vendor_id}, vendorErrorCode "
        f"{codes.vendor_error_code}, info {codes.info!r}; OCPP 2.0.1 "
        f"{codes.component}.{codes.variable}; confidence {f.confidence:.0%}"
    )
    if f.explains:
        lines.append("explains: " + ", ".join(f"{s.title} ({s.scope})" for s in f.explains))
    if f.side != "unknown" or f.side_basis:
        lines.append(f"side: {f.side} — {f.side_basis}")
    if f.evidence:
        lines.append("evidence:")
        for e in f.evidence[:8]:
            when = f" at {e.ts.astimezone():%H:%M:%S}" if e.ts else ""
            lines.append(f"  {e.name} = {e.value}{' ' + e.unit if e.unit else ''}{when}")
    lines.append("what to do:")
    for i, step in enumerate(f.technician_steps.get(lang, []), 1):
        lines.append(f"  {i}. {step}")
    style = SEVERITY_STYLE.get(f.severity, "")
    body = Group(*(t if isinstance(t, Text) else Text(t) for t in lines))
    title = f"{f.title.get(lang, f.rule)} · {f.scope} · {f.fault_id}"
    return Panel(body, title=title, border_style=style)
