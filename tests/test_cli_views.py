"""The technician's tables on an 80-column terminal, with real recorded sessions: the report
without empty periods and with whole headers, clear errors for a date range that ends before
it starts, sessions with whole ids that `show` accepts, one time format, readable durations
and labelled prices."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import pytest
from test_records import copy, recorded  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from agent.cli.main import app

runner = CliRunner()


@pytest.fixture
def conf(copy):  # noqa: F811  (the imported fixture)
    """A private copy of test_records' store (three sessions today) and its config."""
    return str(copy[1])


def words(text: str) -> str:
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


def test_report_table_hides_empty_periods_and_keeps_headers_whole(conf) -> None:
    r = runner.invoke(app, ["report", "-c", conf, "--period", "day"], terminal_width=80)
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout, r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    said = words(r.stdout)
    assert "period sessions kWh net gross cur." in said, said
    assert "29 of 30 periods had no sessions and no fault downtime: not shown" in said
    full = runner.invoke(app, ["report", "-c", conf, "--period", "day", "--all"])
    assert "not shown" not in full.stdout
    assert full.stdout.count(str(date.today() - timedelta(days=3))) == 1


def test_report_range_that_ends_before_it_starts_names_the_dates(conf) -> None:
    r = runner.invoke(app, ["report", "-c", conf, "--from", "2025-03-10", "--to", "2025-03-01"])
    assert r.exit_code == 2
    assert "--from 2025-03-10 is after --to 2025-03-01" in words(r.output)
    later = str(date.today() + timedelta(days=5))
    r = runner.invoke(app, ["report", "-c", conf, "--from", later])
    assert r.exit_code == 2 and f"--from {later} is after today" in words(r.output)
    r = runner.invoke(app, ["report", "-c", conf, "--to", "2025-03-01", "--json"])
    assert r.exit_code == 0
    days = json.loads(r.stdout)
    assert days[-1]["period"] == "2025-03-01" and len(days) == 30


def test_sessions_list_ids_are_taken_by_show_in_one_time_format(conf) -> None:
    r = runner.invoke(app, ["sessions", "list", "-c", conf], terminal_width=80)
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout and "times Europe/Berlin" in words(r.stdout), r.stdout
    rows = [line.split()[0] for line in r.stdout.splitlines()
            if re.match(r" ?[0-9a-f]{8} ", line)]  # fmt: skip
    assert len(rows) == 3 and all(len(sid) == 8 for sid in rows), rows
    shown = runner.invoke(app, ["sessions", "show", rows[0], "-c", conf], terminal_width=80)
    assert shown.exit_code == 0, shown.output
    said = words(shown.stdout)
    assert re.search(r"started 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d CET,", said), said
    assert re.search(r"ended 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d CET —", said), said
    assert re.search(r"charging \d+\.\d s, parking \d+\.\d s", said), said
    utc = words(runner.invoke(app, ["sessions", "show", rows[0], "-c", conf, "--utc"]).stdout)
    assert re.search(r"started 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC,", utc), utc
    assert " CET" not in utc


def test_version_is_the_installed_one() -> None:
    from importlib import metadata

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout == f"evedge {metadata.version('evedge')}\n"


def test_report_plot_has_title_legend_vat_axes_from_zero_and_groups(conf, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from agent.cli.report_plot import usage_figure
    from agent.config import load_config
    from agent.sessions.report import build_report
    from agent.sessions.store import SessionStore

    cfg = load_config(conf)
    today = date.today()
    with SessionStore(cfg.store.path) as store:
        rows = build_report(store, period="day", start=today - timedelta(days=2),
                            end=today + timedelta(days=1), tz="Europe/Berlin",
                            connectors=[1], by="token", now=None)  # fmt: skip
    fig = usage_figure(rows, "TEST", "token")
    ax, ax2 = fig.axes
    assert ax.get_title() == (
        f"station TEST: energy and revenue {today - timedelta(days=2)} to {today}, per token"
    )
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["energy, token FREEVEND", "revenue (incl. VAT)"], legend
    assert ax.get_ylim()[0] == 0 and ax2.get_ylim()[0] == 0
    assert "EUR incl. VAT" in ax2.get_ylabel()
    png = tmp_path / "usage.png"
    r = runner.invoke(app, ["report", "-c", conf, "--by", "connector", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
