"""`evedge maintenance [add | list]`: scheduled maintenance windows, set by a technician.

Outage time inside a window is excluded from the NEVI uptime (`evedge report --kpi`,
agent/kpi). Windows live in the store (table kpi_maintenance); `add` writes it directly
(WAL: safe while the service runs), `list` reads it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.cli.store_open import writable_store
from agent.config import StationConfig
from agent.events import utcnow
from agent.kpi.maintenance import add_window, windows
from agent.store.db import Store

app = typer.Typer(help="Scheduled maintenance windows (excluded from the uptime KPI).")
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]


def _when(text: str, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"{what}: not a time like 2026-03-20T06:00+01:00: {text!r}", Exit.USAGE
        ) from None
    if t.tzinfo is None:
        raise fail(f"{what}: give a UTC offset (2026-03-20T06:00Z or …+01:00)", Exit.USAGE)
    return t


def _open(cfg: StationConfig, config: Path) -> Store:
    return writable_store(cfg, config, Store)


@app.command("add")
def add(
    start: Annotated[str, typer.Option("--from", help="start, ISO 8601 with offset")],
    end: Annotated[str, typer.Option("--to", help="end, ISO 8601 with offset")],
    connector: Annotated[
        int | None, typer.Option("--connector", help="one connector (default: the station)")
    ] = None,
    note: Annotated[str, typer.Option("--note", help="what is done")] = "",
    config: ConfigOpt = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Add a maintenance window.

    Example: `evedge maintenance add --connector 1 --from 2025-03-01T08:00+01:00
    --to 2025-03-01T12:00+01:00 --note "meter swap"`"""
    cfg = load_or_exit(config)
    t0, t1 = _when(start, "--from"), _when(end, "--to")
    if connector is not None and connector not in {c.id for c in cfg.connector}:
        raise fail(f"--connector: no connector {connector} in {config}", Exit.USAGE)
    with _open(cfg, config) as store:
        try:
            with store.tx() as c:
                w = add_window(c, t0, t1, connector, note, utcnow())
        except ValueError as e:
            raise fail(str(e), Exit.USAGE) from None
    if json:
        emit_json(w.to_json())
    else:
        where = "the station" if connector is None else f"connector {connector}"
        console.print(
            f"maintenance window {w.id} for {where}: {t0.isoformat()} to {t1.isoformat()}"
        )


@app.command("list")
def list_(
    config: ConfigOpt = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the maintenance windows.

    Example: `evedge maintenance list --json`"""
    cfg = load_or_exit(config)
    with _open(cfg, config) as store, store.reading() as c:
        found = windows(c, 0, 2**62)
    if json:
        emit_json([w.to_json() for w in found])
        return
    t = Table(title="maintenance windows")
    for col in ("id", "connector", "start", "end", "note"):
        t.add_column(col)
    for w in found:
        d = w.to_json()
        t.add_row(str(w.id), "all" if w.connector is None else str(w.connector), d["start"],
                  d["end"], w.note)  # fmt: skip
    console.print(t)
