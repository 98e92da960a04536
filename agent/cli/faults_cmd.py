"""`evedge faults`: the faults diagnosis raised — active ones with guidance, or the history;
`evedge faults clear ID --note …`: a technician clears one.

Showing reads the store named by the station config directly (works while the service runs:
the store is in WAL mode, and while it is down). Each fault says how it can clear: on its
condition's end, on positive evidence (which), or only by a technician (the command).
Clearing changes the station, so it goes through the running service's API (a control
operation: root or the [api] group).
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
from agent.cli.labels import labels
from agent.diagnosis.clearing import ClearFaultInput
from agent.diagnosis.store import FaultLog, FaultRecord
from agent.logsetup import setup_logging
from agent.store.db import StoreError

SEVERITY_STYLE = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "dim"}
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Show active faults with root cause and guidance (--history: all of them); "
    "`faults clear ID --note …` clears one.",
)


@app.callback()
def faults(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    history: Annotated[bool, typer.Option("--history", help="all faults, newest first")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="history length")] = 50,
    lang: Annotated[str, typer.Option(help="language of the texts: en or de")] = "",
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show active faults with root cause and guidance (--history: all of them)."""
    if ctx.invoked_subcommand is not None:
        return
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
    words = labels(lang)
    if not records:
        console.print(f"[green]{words.no_active}[/]" if not history else words.no_faults)
        return
    console.print(_table(records, lang, history))
    if not history:
        for r in records:
            console.print(_details(r, lang))
    elif any(r.cleared and r.cleared.reason == "manual" for r in records):
        for r in records:
            c = r.cleared
            if c is not None and c.reason == "manual":
                console.print(
                    f"{r.raised.fault_id}: {words.cleared} {_when(c.ts)} {words.by} {c.by}: "
                    f"{c.note}",
                    highlight=False,
                )


@app.command("clear")
def clear(
    fault_id: Annotated[str, typer.Argument(help="the fault's id (see `evedge faults`)")],
    note: Annotated[str, typer.Option("--note", help="what was found or done (required)")],
    config: ConfigOpt = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Clear an active fault as a technician (a latched hardware fault after the repair).
    Recorded in the fault history with who, when and the note.

    Example: `evedge faults clear 20261208T022828Z-66eee2 --note "contactor replaced"`"""
    from pydantic import ValidationError

    from agent.cli.service import control

    cfg = load_or_exit(config)
    try:
        args = ClearFaultInput(fault_id=fault_id, note=note.strip(), by=_user())
    except ValidationError as e:
        err = e.errors()[0]
        raise fail(f"{err['loc'][0]}: {err['msg']}", Exit.USAGE) from None
    cleared = control(cfg, "clear_fault", **args.model_dump())
    if json:
        emit_json(cleared)
        return
    console.print(
        f"fault {cleared['fault_id']} ({cleared['rule']}, {cleared['scope']}) cleared by "
        f"{cleared['by']}: {cleared['note']}",
        highlight=False,
    )


def _user() -> str:
    """Who runs the command (for the history): the login name, else the uid."""
    import getpass
    import os
    import re

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name)[:64]


def how_it_clears(r: FaultRecord) -> str:
    """How an active fault can clear, in one line (the CLI's 'clears' column)."""
    f, latch = r.raised, r.latch
    if f.clear == "condition":
        return "when the condition ends"
    state = ""
    if latch is not None and latch.state != "active":
        retry = f"retry {latch.attempts + 1} of {latch.retries}"
        if latch.state == "retry":
            state = f"latched, {retry} allowed now; "
        elif latch.retry_at is not None:
            state = f"latched, {retry} from {_when(latch.retry_at)}; "
        elif latch.retries:
            state = f"latched, all {latch.retries} retries used; "
        else:
            state = "latched; "
    manual = f"`evedge faults clear {f.fault_id} --note …`"
    if f.clear == "evidence":
        return f"{state}on evidence: {f.clear_evidence}; or {manual}"
    return f"{state}only by a technician: {manual}"


def _when(ts: datetime) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(records: list[FaultRecord], lang: str, history: bool) -> Table:
    w = labels(lang)
    table = Table(title=w.history if history else w.active_faults)
    for col in (w.raised, w.fault, w.where, w.severity, w.faulted, "OCPP 1.6"):
        table.add_column(col)
    table.add_column(w.cleared if history else w.clears)
    for r in records:
        f = r.raised
        row = [
            _when(f.ts),
            f.title.get(lang, f.rule),
            f.scope,
            Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")),
            w.yes if f.faulted else w.no,
            f.codes.error_code,
        ]
        if history:
            c = r.cleared
            row.append(f"{_when(c.ts)} ({c.reason})" if c else Text(w.active, style="bold"))
        else:
            row.append(Text(how_it_clears(r), style="bold" if r.latched else ""))
        table.add_row(*row)
    return table


def _details(r: FaultRecord, lang: str) -> Panel:
    f, w = r.raised, labels(lang)
    # Text, not markup: evidence and vendor texts may contain brackets.
    lines: list[Text | str] = [Text(f.root_cause.get(lang, ""), style="bold")]
    lines.append(f"{w.driver}: {f.driver_message.get(lang, '')}")
    codes = f.codes
    lines.append(
        f"OCPP 1.6 {codes.error_code}, vendorId {codes.vendor_id}, vendorErrorCode "
        f"{codes.vendor_error_code}, info {codes.info!r}; OCPP 2.0.1 "
        f"{codes.component}.{codes.variable}; confidence {f.confidence:.0%}"
    )
    if f.explains:
        lines.append(f"{w.explains}: " + ", ".join(f"{s.title} ({s.scope})" for s in f.explains))
    lines.append(f"{w.clears}: {how_it_clears(r)}")
    if f.side != "unknown" or f.side_basis:
        lines.append(f"{w.side}: {f.side} — {f.side_basis}")
    if f.evidence:
        lines.append(f"{w.evidence}:")
        for e in f.evidence[:8]:
            when = f" {w.at} {e.ts.astimezone():%H:%M:%S}" if e.ts else ""
            lines.append(f"  {e.name} = {e.value}{' ' + e.unit if e.unit else ''}{when}")
    lines.append(f"{w.what_to_do}:")
    for i, step in enumerate(f.technician_steps.get(lang, []), 1):
        lines.append(f"  {i}. {step}")
    style = SEVERITY_STYLE.get(f.severity, "")
    body = Group(*(t if isinstance(t, Text) else Text(t) for t in lines))
    title = f"{f.title.get(lang, f.rule)} · {f.scope} · {f.fault_id}"
    return Panel(body, title=title, border_style=style)
