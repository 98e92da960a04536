"""`evedge status --json`'s fast path gives way to the ordinary one whenever it cannot ask
the service: the ordinary path then validates the config and says what is wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.cli.fastpath import service_answer
from hil.procs import EVEDGE


def test_no_answer_without_a_socket_a_readable_file_or_a_service(tmp_path: Path) -> None:
    cfg = tmp_path / "station.toml"
    assert service_answer(tmp_path / "missing.toml", "status") is None
    cfg.write_text("[api\n")
    assert service_answer(cfg, "status") is None
    cfg.write_text('[station]\nid = "X"\n')
    assert service_answer(cfg, "status") is None
    cfg.write_text(f'[api]\nsocket = "{tmp_path / "nobody.sock"}"\n')
    assert service_answer(cfg, "status") is None


def test_status_json_with_a_broken_config_still_reports_the_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[api]\nsocket = "{tmp_path / "nobody.sock"}"\nbogus = 1\n')
    res = subprocess.run([EVEDGE, "status", "--json", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2, res
    assert '"invalid_config"' in res.stdout
