"""Releases side by side: `<releases_dir>/<version>/venv`, and the `current` symlink.

The unit runs `<current_link>/venv/bin/evedge`; switching is one rename of a new symlink over
the old one (os.replace), so a crash at any point leaves `current` on one whole release.
"""

from __future__ import annotations

import ensurepip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import structlog

from agent.update import probation
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


def prune(releases_dir: Path, keep: set[str]) -> list[str]:
    """Remove every release directory but those named in `keep` (the current and the one
    before it: a rollback target); returns the versions removed."""
    gone = []
    for d in sorted(releases_dir.iterdir()) if releases_dir.is_dir() else []:
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d)
            gone.append(d.name)
    if gone:
        log.info("update.pruned", releases=gone)
    return gone


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
    python = venv / "bin" / "python"
    steps = {
        "venv": [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        "pip install": [*_pip(python), "install", "--quiet", "--no-index", "--no-cache-dir",
                        "--find-links", str(wheelhouse), requirement],
    }  # fmt: skip
    for what, cmd in steps.items():
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRefused(UpdateStatus.INSTALLATION_FAILED, f"{what} timed out") from None
        if r.returncode != 0:
            shutil.rmtree(final, ignore_errors=True)
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise UpdateRefused(
                UpdateStatus.INSTALLATION_FAILED, f"{what} failed: {' | '.join(tail)}"
            )
    (final / COMPLETE).write_text(requirement + "\n")
    log.info("update.installed", version=version, path=str(final))
    return final


def _pip(python: Path) -> list[str]:
    """pip for the new venv, which has none of its own (ensurepip costs seconds per venv):
    the interpreter's bundled pip wheel run as a zip (needs no pip in any venv, so a release
    installed this way can install the next), else this release's pip aimed at it."""
    bundled = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if bundled:
        return [str(python), f"{bundled[-1]}/pip"]
    return [sys.executable, "-m", "pip", "--python", str(python)]


def switch(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (probation.switch_link) and log it."""
    probation.switch_link(link, target)
    log.info("update.switched", current=str(target))
