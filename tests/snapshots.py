"""Snapshot tests of the CLI's views: a renderable printed on rich's fixed-width console
(80 and 160 columns, no colour) and compared to the committed file
tests/snapshots/<name>.<width>.txt.

Regenerate after an intended change of a view — then read the diff before committing:

    EVEDGE_SNAPSHOTS=update .venv/bin/pytest -q tests/test_views.py
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from rich.console import Console

DIR = Path(__file__).parent / "snapshots"
WIDTHS = (80, 160)


def rendered(renderable, width: int) -> str:
    """What a `width`-column terminal shows, as plain text."""
    console = Console(
        file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True
    )
    console.print(renderable)
    return console.export_text()


def check(name: str, renderable, width: int) -> str:
    """Compare (or with EVEDGE_SNAPSHOTS=update, write) the snapshot; returns the text."""
    text = rendered(renderable, width)
    path = DIR / f"{name}.{width}.txt"
    if os.environ.get("EVEDGE_SNAPSHOTS") == "update":
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}: run with EVEDGE_SNAPSHOTS=update"
    assert text == path.read_text(), f"{path} differs (EVEDGE_SNAPSHOTS=update regenerates)"
    return text
