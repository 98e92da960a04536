"""`evedge report --kpi` and `evedge maintenance` end to end on a real store: read-only from
the store when the service is down, through the running service's API when it answers; the
table fits 80x24; CSV, JSON and the plot; the KPI member of the diagnostics bundle."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from kpi_helpers import scripted_month

from agent.config import load_config
from agent.kpi import render
from agent.kpi.model import KpiReport
from agent.runtime import Agent
from agent.store.db import Store
from agent.support.bundle import build_bundle
from hil.procs import EVEDGE, write_station

NET_C1 = 120 + 45  # counted outage minutes of connector 1 in March 2026 (kpi_helpers)


def _station(tmp_path: Path) -> Path:
    """A one-connector station whose store holds the scripted March 2026 (service down)."""
    sock = tmp_path / "api.sock"
    st = write_station(tmp_path, extra=f'[api]\nsocket = "{sock}"\n[diagnosis]\nenabled = false\n')
    scripted_month(tmp_path / "evedge.db")
    return st.path


def ev(config: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "24"}
    return subprocess.run([EVEDGE, *args, "-c", str(config)], capture_output=True, text=True,
                          timeout=60, env=env, check=False)  # fmt: skip


def march(doc: dict, connector: int = 1) -> dict:
    c = next(c for c in doc["connectors"] if c["connector"] == connector)
    return next(m for m in c["months"] if m["month"] == "2026-03")


def test_report_kpi_from_the_store_when_the_service_is_down(tmp_path):
    config = _station(tmp_path)
    out = ev(config, "report", "--kpi", "--format", "json", "--months", "13")
    assert out.returncode == 0, out.stderr
    assert "showing what the store" in out.stderr
    doc = json.loads(out.stdout)
    KpiReport.model_validate(doc)
    m = march(doc)
    assert (m["outage_min"], m["excluded_min"]) == (645, 480)
    assert m["uptime_12m_pct"] == round((525_600 - NET_C1) / 525_600 * 100, 3)
    assert (m["attempts"], m["successful"], m["first_try_success_pct"]) == (5, 3, 50.0)
    # CSV: a header, then one row per month (one connector here).
    csv = ev(config, "report", "--kpi", "--format", "csv", "--months", "13")
    lines = csv.stdout.strip().splitlines()
    assert lines[0].startswith("connector,month,") and len(lines) == 1 + 13
    assert any(",2026-03," in ln and ",645.0,480.0," in ln for ln in lines)
    # The table fits a 24-line, 80-column terminal, and says what was left out.
    table = ev(config, "report", "--kpi", "--months", "36")
    assert table.returncode == 0
    rows = table.stdout.rstrip("\n").splitlines()
    assert len(rows) <= 24 and max(len(r) for r in rows) <= 80, table.stdout
    assert "--format csv|json for all" in table.stdout
    # The plot is a PNG.
    png = tmp_path / "kpi.png"
    assert ev(config, "report", "--kpi", "--plot", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_maintenance_window_set_on_the_cli_is_excluded(tmp_path):
    config = _station(tmp_path)
    # The Unavailable time on March 28 (45 min) was maintenance after all.
    window = ["--from", "2026-03-28T10:00Z", "--to", "2026-03-28T11:00Z"]
    add = ev(config, "maintenance", "add", *window, "--connector", "1", "--note",
             "RFID reader swap", "--json")  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["note"] == "RFID reader swap"
    bad = ev(
        config, "maintenance", "add", "--from", "2026-03-28T11:00Z", "--to", "2026-03-28T10:00Z"
    )
    assert bad.returncode == 2 and "not after its start" in bad.stderr
    assert ev(config, "maintenance", "add", "--from", "2026-03-28T10:00", "--to",
              "2026-03-28T11:00Z").returncode == 2  # fmt: skip
    listed = json.loads(ev(config, "maintenance", "list", "--json").stdout)
    assert [w["note"] for w in listed] == ["contactor inspection", "RFID reader swap"]
    m = march(json.loads(ev(config, "report", "--kpi", "--json", "--months", "13").stdout))
    assert m["excluded_by"]["maintenance"] == 120 + 45 and m["uptime_12m_pct"] == round(
        (525_600 - 120) / 525_600 * 100, 3
    )


async def test_report_kpi_through_the_running_service(tmp_path):
    config = _station(tmp_path)
    offline = ev(config, "report", "--kpi", "--json", "--months", "13")
    agent = Agent(load_config(config))
    await agent.start()
    try:
        online = await asyncio.to_thread(ev, config, "report", "--kpi", "--json", "--months", "13")
    finally:
        await agent.stop()
    assert online.returncode == 0, online.stderr
    assert "showing what the store" not in online.stderr  # the service answered
    assert march(json.loads(online.stdout)) == march(json.loads(offline.stdout))


def test_plot_has_title_legend_and_axes_from_zero(tmp_path):
    config = _station(tmp_path)
    doc = json.loads(ev(config, "report", "--kpi", "--json", "--months", "13").stdout)
    fig = render.figure(KpiReport.model_validate(doc))
    ax = fig.axes[0]
    months = [m["month"] for m in doc["connectors"][0]["months"]]
    assert ax.get_title() == f"station TEST: availability {months[0]} to {months[-1]}"
    assert ax.get_ylim()[0] == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "connector 1: month",
        "connector 1: 12 months (NEVI)",
    ]


def test_bundle_carries_the_kpis(tmp_path):
    config = _station(tmp_path)
    cfg = load_config(config)
    with Store(cfg.store.path) as store:
        data = build_bundle(cfg, store)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        kpi = json.loads(tar.extractfile("kpi.json").read())
    assert kpi["station"] == "TEST" and [c["connector"] for c in kpi["connectors"]] == [1]
    assert kpi["connectors"][0]["months"]  # twelve months up to now
