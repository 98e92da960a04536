"""`evedge faults --lang de` in German, words and texts; every language has every label."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import rule_fault
from pydantic import ValidationError
from typer.testing import CliRunner

from agent.cli.labels import FILE, all_labels
from agent.cli.main import app
from agent.diagnosis.store import FaultLog
from hil.scenarios.stations import station_toml

runner = CliRunner()


def test_faults_in_german(tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_text(station_toml("tcp", store=str(tmp_path / "evedge.db")))
    with FaultLog(tmp_path / "evedge.db") as log:
        log.record(rule_fault("evse_contactor_fault", [1], fault_id="F-1"))
    de = runner.invoke(app, ["faults", "-c", str(config), "--lang", "de"], terminal_width=120)
    assert de.exit_code == 0, de.output
    said = " ".join(de.stdout.replace("│", " ").split())
    for word in ("aktive Fehler", "gemeldet", "Schwere", "Gestört", "was zu tun ist:", "ja"):
        assert word in said, (word, said)
    assert "Schützfehler gemeldet" in said  # the rule's own German title
    en = runner.invoke(app, ["faults", "-c", str(config)], terminal_width=120)
    assert "active faults" in en.stdout and "aktive Fehler" not in en.stdout


def test_a_language_missing_a_label_is_refused_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "labels.toml"
    broken.write_text(FILE.read_text().replace('what_to_do = "was zu tun ist"\n', ""))
    with pytest.raises(ValidationError, match="what_to_do"):
        all_labels(broken)
    assert set(all_labels()) == {"en", "de"}
