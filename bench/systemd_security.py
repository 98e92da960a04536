"""Exposure score of systemd/evedge.service, against the same unit without its hardening.

    .venv/bin/python bench/systemd_security.py [UNIT]

Runs `systemd-analyze security --offline=true` (0 = locked down, 10 = fully exposed) on the
unit and on a baseline that keeps only what makes it a service (type, command, user,
restart), prints both scores, their ratio, and the settings still counted against the unit.
tests/test_systemd_unit.py asserts the score against GOAL with the same `analyze`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "evedge.service"
BASELINE_KEYS = ("Description", "Type", "ExecStart", "User", "Group", "Restart", "WantedBy")
GOAL = 2.0  # the highest exposure score the unit may have
SCORE = re.compile(r"Overall exposure level for \S+: ([0-9.]+) (\S+)")


def analyze(unit: Path) -> tuple[float, str, list[str]]:
    """(score, verdict, lines of the settings counted against the unit)."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = SCORE.search(out)
    if match is None:
        raise SystemExit(f"no exposure level in systemd-analyze's output:\n{out}")
    open_items = [" ".join(line.split()) for line in out.splitlines() if line.startswith("✗")]
    return float(match.group(1)), match.group(2), open_items


def baseline_of(unit_text: str) -> str:
    """The unit with every hardening setting removed."""
    keep = []
    for line in unit_text.splitlines():
        key = line.split("=", 1)[0]
        if line.startswith("[") or key in BASELINE_KEYS:
            keep.append(line)
    return "\n".join(keep) + "\n"


def main() -> None:
    if shutil.which("systemd-analyze") is None:
        raise SystemExit("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = Path(sys.argv[1]) if len(sys.argv) > 1 else UNIT
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / unit.name
        base.write_text(baseline_of(unit.read_text()))
        base_score, base_verdict, _ = analyze(base)
    score, verdict, open_items = analyze(unit)
    print(f"command: systemd-analyze security --offline=true {unit}")
    print(f"baseline (no hardening): exposure {base_score} {base_verdict}")
    print(f"evedge.service:          exposure {score} {verdict}")
    print(f"ratio: {score / base_score:.2f} of the baseline's exposure (goal: score <= {GOAL})")
    print("still counted:")
    for item in open_items:
        print(f"  {item}")


if __name__ == "__main__":
    main()
