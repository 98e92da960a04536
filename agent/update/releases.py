"""Releases side by side: `<releases_dir>/<version>/venv`, and the `current` symlink.

The unit runs `<current_link>/venv/bin/evedge`; switching is one rename of a new symlink over
the old one (os.replace), so a crash at any point leaves `current` on one whole release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import structlog

from agent.update.status import UpdateRefused, UpdateStatus

log = structlog.get_logger(__name__)

PIP_TIMEOUT_S = 900  # a wheelhouse install on a slow controller; never forever
COMPLETE = "COMPLETE"  # written last: the release is whole


def current_version(link: Path) -> str | None:
    """The version `current` points to (the release directory's name), None without one."""
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def installed(releases_dir: Path) -> list[str]:
    """Versions installed completely (their COMPLETE file written), sorted by name."""
    if not releases_dir.is_dir():
        return []
    return sorted(p.parent.name for p in releases_dir.glob(f"*/{COMPLETE}"))


def install(releases_dir: Path, version: str, wheelhouse: Path, requirement: str) -> Path:
    """Create `<version>/venv` and pip-install `requirement` from `wheelhouse` only.

    Built in place (a venv cannot move: its scripts name their interpreter's path) and
    marked COMPLETE last, so a half-installed release is never taken for one; a leftover
    of an interrupted install is removed first (the caller refuses to reinstall the
    running release)."""
    final = releases_dir / version
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    venv = final / "venv"
    steps = [
        # --without-pip: the running release's pip installs into it (--python), fast and
        # with no network; the new venv needs no pip of its own.
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-index", "--no-cache-dir", "--find-links", str(wheelhouse), requirement],
    ]  # fmt: skip
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRefused(UpdateStatus.INSTALLATION_FAILED, f"{cmd[2]} timed out") from None
        if r.returncode != 0:
            shutil.rmtree(final, ignore_errors=True)
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise UpdateRefused(
                UpdateStatus.INSTALLATION_FAILED, f"{cmd[2]} failed: {' | '.join(tail)}"
            )
    (final / COMPLETE).write_text(requirement + "\n")
    log.info("update.installed", version=version, path=str(final))
    return final


def switch(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically: a symlink under a temporary name, then rename."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    log.info("update.switched", current=str(target))
