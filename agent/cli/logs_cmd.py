"""`evedge logs`: the service's log from the systemd journal (journalctl -u evedge).

The journal is per systemd unit, not per station config: `--unit` picks it, `--config` is
accepted like on every command and not used. No journal, or none of the unit's lines in it,
is exit 3 with one message saying where the log goes instead (with --json also the JSON
error object on stdout).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import DEFAULT_CONFIG, Exit, fail

UNIT = "evedge"
NO_ENTRIES = "-- No entries --"  # what journalctl prints for an empty selection


def logs(
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="how many lines")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="e.g. '1 hour ago', 'today', '2025-03-01'")
    ] = None,
    unit: Annotated[str, typer.Option("--unit", help="systemd unit")] = UNIT,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="not used: the journal is per unit (--unit)")
    ] = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show the service's log (journalctl -u evedge); exit 3 without a journal.

    Example: `evedge logs --since "1 hour ago" --json` (one journal entry per line)."""
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
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            rc = subprocess.run(cmd, check=False).returncode
    else:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        rc = out.returncode
        lines = [ln for ln in out.stdout.splitlines() if ln.strip() and ln != NO_ENTRIES]
        if rc == 0 and not lines:
            why = out.stderr.strip() or "the journal holds no lines of it"
            raise fail(
                f"no journal entries for the unit {unit} ({why}). Is the service installed "
                "under another unit name (--unit)? Outside systemd the agent logs to the "
                "stderr of `evedge run`.",
                Exit.UNREACHABLE,
            )
        sys.stdout.write("".join(ln + "\n" for ln in lines))
        sys.stderr.write(out.stderr)
    if rc != 0:
        raise fail(f"journalctl exited with {rc} (see its message above)", Exit.UNREACHABLE)
