"""`evedge logs`: the service's log from the systemd journal (journalctl -u evedge)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import DEFAULT_CONFIG, Exit, fail

UNIT = "evedge"


def logs(
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="how many lines")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="e.g. '1 hour ago', 'today', '2025-03-01'")
    ] = None,
    unit: Annotated[str, typer.Option("--unit", help="systemd unit")] = UNIT,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="station config (unused; for symmetry)")
    ] = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show the service's log (journalctl -u evedge); exit 3 without a journal."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise fail(
            "journalctl not found: this system has no systemd journal. When the agent runs "
            "outside systemd its log goes to the stderr of `evedge run`.",
            Exit.UNREACHABLE,
        )
    cmd = [journalctl, "--unit", unit, "--lines", str(lines), "--no-pager"]
    cmd += ["--output", "json" if json else "short-iso"]
    if since:
        cmd += ["--since", since]
    if follow:
        cmd.append("--follow")
    with contextlib.suppress(KeyboardInterrupt):
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            raise fail(f"journalctl exited with {rc} (see its message above)", Exit.UNREACHABLE)
