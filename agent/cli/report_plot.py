"""`evedge report --plot`: energy (bars) and revenue (line) per period into a PNG — titled
with the station and the period, a legend, the VAT basis of the revenue stated, both axes
from zero, and with `--by` one bar series per connector or token (stacked)."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from agent.kpi.render import pyplot, save
from agent.sessions.report import ReportRow


def _revenue(r: ReportRow) -> tuple[Decimal, bool]:
    """The row's revenue and whether it includes VAT."""
    if r.revenue_incl_vat is not None:
        return r.revenue_incl_vat, True
    return r.revenue_excl_vat, False


def plot_usage(rows: list[ReportRow], path: str, station: str, by: str | None) -> None:
    """Draw the report `rows` to a PNG at `path` (PlotError without matplotlib)."""
    save(usage_figure(rows, station, by), path)


def usage_figure(rows: list[ReportRow], station: str, by: str | None):
    """The report `rows` as a matplotlib Figure (see the module docstring)."""
    plt = pyplot()
    labels = list(dict.fromkeys(r.period for r in rows))
    groups = list(dict.fromkeys(r.group or "" for r in rows))
    energy: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    with_vat = True
    for r in rows:
        energy[r.group or ""][r.period] += r.energy_wh / 1000
        amount, incl = _revenue(r)
        revenue[r.period] += amount
        with_vat = with_vat and incl
    currency = next((r.currency for r in rows if r.currency), "")
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.4), 4.5))
    bottom = [0.0] * len(labels)
    for g in groups:
        heights = [energy[g][k] for k in labels]
        name = f"energy, {by} {g}" if by else "energy"
        ax.bar(labels, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("energy (kWh)")
    ax.set_ylim(bottom=0)
    ax.tick_params(axis="x", rotation=60)
    ax2 = ax.twinx()
    vat = "incl. VAT" if with_vat else "excl. VAT"
    ax2.plot(labels, [float(revenue[k]) for k in labels], color="black", marker="o",
             label=f"revenue ({vat})")  # fmt: skip
    ax2.set_ylabel(f"revenue, {currency} {vat}".replace(",  ", ", "))
    ax2.set_ylim(bottom=0)
    period = f"{labels[0]} to {labels[-1]}" if labels else "no data"
    split = f", per {by}" if by else ""
    ax.set_title(f"station {station}: energy and revenue {period}{split}")
    handles = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig
