"""The faults panel of the live views (`evedge demo`, `evedge live`): each active fault with
its root cause, the technician's first step and how it clears — the first thing a
technician needs, so the views put it at the top."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli.faults_cmd import SEVERITY_STYLE, how_it_clears
from agent.cli.labels import labels
from agent.diagnosis.store import FaultRecord
from agent.events import FaultCleared, FaultLatch, FaultRaised


def track(faults: dict[str, FaultRecord], event: object) -> None:
    """Apply one diagnosis event to the active faults by id."""
    if isinstance(event, FaultRaised):
        faults[event.fault_id] = FaultRecord(event)
    elif isinstance(event, FaultLatch) and event.fault_id in faults:
        faults[event.fault_id] = replace(faults[event.fault_id], latch=event)
    elif isinstance(event, FaultCleared):
        faults.pop(event.fault_id, None)


def faults_panel(faults: dict[str, FaultRecord], lang: str = "en") -> Panel:
    """The active faults, most severe first; a one-line green panel when there are none."""
    w = labels(lang)
    if not faults:
        return Panel(Text(w.no_active, style="green"), title=w.fault, border_style="green")
    order = list(SEVERITY_STYLE)
    lines: list[Text | Table] = []
    records = sorted(
        faults.values(),
        key=lambda r: order.index(r.raised.severity) if r.raised.severity in order else len(order),
    )
    for r in records:
        f = r.raised
        lines.append(
            Text.assemble(
                ("● ", SEVERITY_STYLE.get(f.severity, "")),
                (f.title.get(lang, f.rule), "bold"),
                f" · {f.scope} · {f.severity}",
                (f" · {w.faulted}" if f.faulted else "", "red"),
                f" · {f.fault_id}",
            )
        )
        # A grid keeps a wrapped line under its text, not under its label.
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=8)
        grid.add_column()
        grid.add_row(f"  {w.cause}", f.root_cause.get(lang, ""))
        steps = f.technician_steps.get(lang) or []
        if steps:
            grid.add_row(f"  {w.do}", steps[0])
        grid.add_row(f"  {w.clears}", Text(how_it_clears(r), style="bold" if r.latched else ""))
        lines.append(grid)
    worst = records[0].raised.severity
    return Panel(
        Group(*lines),
        title=f"{w.active_faults}: {len(records)} ({w.details})",
        border_style=SEVERITY_STYLE.get(worst, "red"),
    )
