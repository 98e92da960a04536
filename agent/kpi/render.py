"""The KPI report for people: a table that fits 80x24, CSV rows, a PNG plot."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from agent.kpi.model import KpiReport

TABLE_ROWS = 14  # data rows that fit a 24-line terminal with title, header and notes
CSV_COLUMNS = (
    "connector",
    "month",
    "start",
    "end",
    "minutes",
    "outage_min",
    "excluded_min",
    "excluded_grid",
    "excluded_maintenance",
    "excluded_vehicle",
    "excluded_csms",
    "uptime_pct",
    "uptime_12m_pct",
    "attempts",
    "successful",
    "first_try_success_pct",
    "fault_ended",
)


class PlotError(RuntimeError):
    """The plot cannot be drawn (matplotlib missing)."""


def csv_rows(rep: KpiReport) -> list[dict[str, Any]]:
    """One row per connector and month."""
    out = []
    for c in rep.connectors:
        for m in c.months:
            d = m.model_dump(mode="json")
            by = d.pop("excluded_by")
            out.append(
                {"connector": c.connector, **d, **{f"excluded_{k}": v for k, v in by.items()}}
            )
    return out


def _num(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(rep: KpiReport) -> tuple[Table, list[str]]:
    """The newest months that fit TABLE_ROWS (all connectors), and notes to print under it."""
    n_conn = max(1, len(rep.connectors))
    months = max(1, TABLE_ROWS // n_conn)
    t = Table(
        title=f"station {rep.station}: availability ({rep.timezone})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for name in ("port", "month", "μ 12m %", "month %", "outage", "excl.", "tries", "ok",
                 "1st %", "fault"):  # fmt: skip
        left = name in ("port", "month")
        t.add_column(name, justify="left" if left else "right", no_wrap=True)
    shown = 0
    for c in rep.connectors:
        for m in c.months[-months:]:
            shown += 1
            t.add_row(
                str(c.connector),
                m.month,
                _num(m.uptime_12m_pct, 3),
                _num(m.uptime_pct, 2),
                f"{m.outage_min:.0f}",
                f"{m.excluded_min:.0f}",
                str(m.attempts),
                str(m.successful),
                _num(m.first_try_success_pct, 0),
                str(m.fault_ended),
            )
    notes = ["outage/excl. in minutes; μ: NEVI uptime (23 CFR 680.116(b)), 12 months"]
    total = sum(len(c.months) for c in rep.connectors)
    if shown < total:
        notes.append(f"newest {months} of {len(rep.connectors[0].months)} months; "
                     "--format csv|json for all")  # fmt: skip
    codes = {f"{c.connector}: {k} x{v}" for c in rep.connectors for k, v in c.fault_codes.items()}
    if codes:
        notes.append("ended by faults (MREC/OCPP): " + ", ".join(sorted(codes)))
    return t, notes


def pyplot() -> Any:
    """matplotlib.pyplot without a display (Agg); PlotError when the `plot` extra is missing.
    Shared by the KPI plot and the usage report's (agent/cli/report_plot.py)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'evedge[plot]'") from None
    return plt


def save(fig: Any, path: str) -> None:
    """Write a figure to a PNG at `path` and release it."""
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def figure(rep: KpiReport) -> Any:
    """Monthly and 12-month uptime per connector (a matplotlib Figure; the `plot` extra):
    title with station and period, a legend, the y axis from 0 to 100 %."""
    plt = pyplot()
    first = rep.connectors[0].months if rep.connectors else []
    labels = [m.month for m in first]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.6), 4))
    for c in rep.connectors:
        ax.plot(labels, [m.uptime_pct for m in c.months], marker="o",
                label=f"connector {c.connector}: month")  # fmt: skip
        ax.plot(labels, [m.uptime_12m_pct for m in c.months], linestyle="--",
                label=f"connector {c.connector}: 12 months (NEVI)")  # fmt: skip
    ax.set_ylim(0, 100.5)
    ax.set_ylabel("uptime (%)")
    ax.set_xlabel("month")
    period = f"{labels[0]} to {labels[-1]}" if labels else "no data"
    ax.set_title(f"station {rep.station}: availability {period}")
    ax.legend(loc="lower left", fontsize="small")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def plot(rep: KpiReport, path: str) -> None:
    """figure() into a PNG at `path`."""
    save(figure(rep), path)
