"""Probation of a new release: health marker, boot counter, automatic rollback.

Standard library only, and runnable as a file (`python3 probation.py STATE_DIR`): the unit's
ExecStartPre runs it from a copy outside the releases (systemd/install.sh puts it at
<prefix>/boot-check.py), so a broken new release cannot break its own rollback.

State in STATE_DIR (`<store dir>/update`):
  probation.json   written when a release is switched in: version, previous release dir,
                   `current` link, since (epoch s), healthy_within_s, max_boots, boots
  healthy-<v>      written by release v once it is healthy (agent/runtime.py)
  last.json        the outcome of the last probation (committed or rolled back, and why)

At each start (boot_check): a healthy marker commits the release; otherwise the boot is
counted, and more than max_boots starts or a deadline passed rolls back: `current` back to
the previous release, which this very start then runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

PROBATION, LAST = "probation.json", "last.json"


def marker(state_dir: Path, version: str) -> Path:
    """The file release `version` writes once healthy."""
    return state_dir / f"healthy-{version}"


def mark_healthy(state_dir: Path, version: str) -> None:
    """Say release `version` is healthy (sd_notify READY sent, a poll cycle done, store open)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_json(marker(state_dir, version), {"at": time.time(), "pid": os.getpid()})


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def read(state_dir: Path, name: str = PROBATION) -> dict | None:
    """probation.json (or `name`), None when absent."""
    try:
        return json.loads((state_dir / name).read_text())
    except FileNotFoundError:
        return None


def begin(
    state_dir: Path,
    version: str,
    previous: str,
    link: Path,
    healthy_within_s: float,
    max_boots: int,
) -> None:
    """Put `version` on probation, `previous` (a release directory) its fallback."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # `update apply` runs as root: the service must still write markers
        owner = state_dir.parent.stat()
        os.chown(state_dir, owner.st_uid, owner.st_gid)
    marker(state_dir, version).unlink(missing_ok=True)  # only a fresh marker counts
    doc = {
        "version": version,
        "previous": previous,
        "link": str(link),
        "since": time.time(),
        "healthy_within_s": healthy_within_s,
        "max_boots": max_boots,
        "boots": 0,
    }
    _write_json(state_dir / PROBATION, doc)


def switch_link(link: Path, target: str | Path) -> None:
    """Point `link` at `target` atomically: a symlink under a temporary name, then rename
    (a crash at any point leaves `link` on one whole release)."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _end(state_dir: Path, p: dict, outcome: str, reason: str) -> str:
    _write_json(state_dir / LAST, {**p, "outcome": outcome, "reason": reason, "at": time.time()})
    (state_dir / PROBATION).unlink(missing_ok=True)
    return outcome


def rollback(state_dir: Path, reason: str) -> str:
    """Switch `current` back to the previous release and end the probation."""
    p = read(state_dir)
    if p is None:
        raise LookupError("no release on probation: nothing to roll back to automatically")
    switch_link(Path(p["link"]), p["previous"])
    _log("rolled_back", version=p["version"], to=p["previous"], reason=reason)
    return _end(state_dir, p, "rolled_back", reason)


def forget(state_dir: Path) -> None:
    """Drop the last outcome (a manual rollback used it: no second rollback from it)."""
    (state_dir / LAST).unlink(missing_ok=True)


def check(state_dir: Path, now: float | None = None, boot: bool = False) -> str:
    """Decide a probation: "stable" (none), "committed", "rolled_back" or "probation".

    `boot`: called at a start of the service, which is counted."""
    p = read(state_dir)
    if p is None:
        return "stable"
    if marker(state_dir, p["version"]).exists():
        _log("committed", version=p["version"], boots=p["boots"])
        return _end(state_dir, p, "committed", "healthy")
    now = time.time() if now is None else now
    if boot:
        p["boots"] += 1
        _write_json(state_dir / PROBATION, p)
    if p["boots"] > p["max_boots"]:
        return rollback(state_dir, f"{p['boots'] - 1} starts without becoming healthy")
    if now - p["since"] > p["healthy_within_s"]:
        return rollback(state_dir, f"not healthy within {p['healthy_within_s']:g} s")
    return "probation"


def _log(event: str, **fields: object) -> None:
    # One JSON line on stderr: the journal keeps it, and no logging stack is needed here.
    print(json.dumps({"event": f"update.{event}", **fields}), file=sys.stderr, flush=True)


if __name__ == "__main__":  # ExecStartPre=+<python3> <prefix>/boot-check.py <state dir>
    if len(sys.argv) != 2:
        sys.exit("usage: boot-check.py STATE_DIR")
    try:
        check(Path(sys.argv[1]), boot=True)
    except Exception as e:  # never keep the service from starting over a check
        _log("boot_check_failed", error=repr(e))
