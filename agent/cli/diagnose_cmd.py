"""`evedge diagnose`: run the active self-test and print findings with guidance.

Through the running service when it answers (it owns the serial lines: one master per
line, so it judges serial devices by their live health); else directly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.cli.service import read
from agent.diagnosis.selftest import Finding, run_selftest
from agent.logsetup import setup_logging


def diagnose(
    config: Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")] = (
        DEFAULT_CONFIG
    ),
    reads: Annotated[int, typer.Option(min=2, max=20, help="read cycles per device")] = 3,
    gap: Annotated[float, typer.Option(min=0, max=30, help="seconds between reads")] = 1.0,
    lang: Annotated[str, typer.Option(help="language of the guidance: en or de")] = "",
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Self-test the station: bus scan, P ≈ Σ V·I, energy register, clock, disk, cloud.

    Exit 0 when every check passes, 1 when one finds a problem.

    Example: `evedge diagnose -c /etc/evedge/station.toml --lang de`
    """
    cfg = load_or_exit(config)
    setup_logging("warning")  # logs to stderr: stdout is the report (or the JSON)
    lang = lang or cfg.diagnosis.language
    if lang not in ("en", "de"):
        raise fail(f"--lang must be en or de, got {lang!r}", Exit.USAGE)
    served = read(cfg, "diagnose", reads=reads, gap_s=gap)
    if served is not None:
        findings = [Finding(**f) for f in served["findings"]]
    else:
        findings = asyncio.run(run_selftest(cfg, reads=reads, gap_s=gap))
    problems = [f for f in findings if not f.ok]
    if json:
        emit_json(
            {
                "station": cfg.station.id,
                "source": "direct" if served is None else "service",
                "ok": not problems,
                "findings": [f.as_json() for f in findings],
            }
        )
    else:
        _print(findings, problems, lang, cfg.station.id)
    if problems:
        raise typer.Exit(int(Exit.CHECK_FAILED))


def _print(findings: list[Finding], problems: list[Finding], lang: str, station: str) -> None:
    table = Table(title=f"self-test of station {station}")
    for col in ("check", "target", "result", "finding"):
        table.add_column(col)
    for f in findings:
        mark = Text("ok", style="green") if f.ok else Text("PROBLEM", style="bold red")
        table.add_row(f.check, f.target, mark, Text(f.message))
    console.print(table)
    for f in problems:
        lines = [Text(f.message, style="bold")]
        for i, step in enumerate(f.steps.get(lang, []), 1):
            lines.append(Text(f"  {i}. {step}"))
        if f.evidence:
            lines.append(Text("evidence: " + ", ".join(f"{k}={v}" for k, v in f.evidence.items())))
        console.print(
            Panel(Text("\n").join(lines), title=f"{f.check} · {f.target}", border_style="red")
        )
    if not problems:
        console.print("[green]all checks passed[/]")
