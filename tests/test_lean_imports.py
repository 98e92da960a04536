"""What importing the daemon and its config loads: no rich/pygments through structlog, no
cryptography for a config load (RSS and CLI start time, issue 16). Each check runs in a
fresh interpreter: this test process has imported everything already."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded(module: str, names: list[str]) -> dict[str, bool]:
    code = (
        f"import sys, {module}; "
        f"print(','.join('1' if n in sys.modules else '0' for n in {names!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return dict(zip(names, (f == "1" for f in out.stdout.strip().split(",")), strict=True))


def test_daemon_import_leaves_out_rich():
    pytest.importorskip("rich")  # the check means something only where rich is installed
    loaded = _loaded("agent.runtime", ["structlog", "rich", "pygments"])
    assert loaded == {"structlog": True, "rich": False, "pygments": False}


def test_config_import_leaves_out_cryptography():
    loaded = _loaded("agent.config", ["agent.ocpp.metervalues", "cryptography"])
    assert loaded == {"agent.ocpp.metervalues": True, "cryptography": False}


def test_rich_still_importable_after_structlog():
    code = "import agent.runtime, rich.table, structlog; print(structlog.dev.rich is None)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "True"


def test_evedge_run_imports_leave_out_rich():
    """`evedge run` goes through the CLI module and its error helpers: rich stays out until
    a command prints something for a person."""
    pytest.importorskip("rich")
    loaded = _loaded("agent.cli.main, agent.cli.common, agent.runtime", ["rich"])
    assert loaded == {"rich": False}
