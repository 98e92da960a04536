"""Which message a connector's display shows now, from what the bus told about it: the
session status and progress, the last refusal, the active faults, and the prices.

`ConnectorView` keeps those facts per connector (fed by `on_session` / `on_fault_*`);
`compose` turns one view into a `Screen` (catalog keys + values, no language yet) and
`to_message` renders a screen in every catalog language into a `DriverMessage`.

Faults: a fault that makes the connector Faulted replaces the state message; a warning adds
its explanation below it. Either way the rule's own driver_message explains it, followed by
what the driver can do (driver-fixable actions first: re-plug, check the cable; then another
connector of this station that works, else another station; then waiting) and the operator's
hotline. Faults the driver can fix themselves are listed before those they cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from agent.diagnosis.rules import SEVERITY_ORDER
from agent.driver.catalog import ACTIONS, REJECT_REASONS, Catalog
from agent.driver.config import DriverConfig
from agent.driver.screen import Energy, Joined, Localized, Money, Msg, Part, Power, render
from agent.events import DriverMessage, FaultRaised, SessionEvent
from agent.sessions.model import Status

# Before a session starts the driver sees the prices (AFIR).
PRICE_STATES = frozenset({"Available", "Authorized", "Preparing", "Reserved"})
# A session's figures stay on the display until the car leaves.
SESSION_STATUSES = frozenset(
    {Status.CHARGING, Status.SUSPENDED_EV, Status.SUSPENDED_EVSE, Status.FINISHING, Status.FAULTED}
)


@dataclass
class ConnectorView:
    """What the display of one connector knows (updated from bus events)."""

    connector: int
    status: str = Status.AVAILABLE.value
    session_id: str | None = None
    energy_wh: int | None = None
    power_w: float | None = None
    cost: Decimal | None = None
    currency: str | None = None
    authorized: bool = False  # a card was accepted, waiting for the plug
    rejected: str | None = None  # the last refusal's reason, until the status changes
    ticket: str | None = None  # a report just received, until the status changes
    faults: dict[str, FaultRaised] = field(default_factory=dict)

    def on_session(self, ev: SessionEvent) -> None:
        """Take a SessionEvent of this connector."""
        if ev.status != self.status:
            self.rejected = self.ticket = None
        self.status = ev.status
        if ev.kind == "authorized":
            self.authorized, self.rejected = True, None
        elif ev.kind == "rejected":
            self.authorized = False
            self.rejected = ev.reason if ev.reason in REJECT_REASONS else "other"
        elif ev.kind in ("started", "resumed", "progress", "stopped"):
            self.authorized = False
            self.session_id = ev.session_id
            self.energy_wh = ev.energy_wh
            self.power_w = None if ev.kind == "stopped" else ev.power_w
            self.cost = ev.cost_incl_vat if ev.cost_incl_vat is not None else ev.cost_excl_vat
            self.currency = ev.currency
        if ev.status not in SESSION_STATUSES:
            self.session_id = self.energy_wh = self.power_w = self.cost = self.currency = None
        if ev.status != Status.AVAILABLE:
            self.authorized = self.authorized and ev.status == Status.PREPARING

    def on_fault_raised(self, ev: FaultRaised) -> None:
        self.faults[ev.fault_id] = ev

    def on_fault_cleared(self, fault_id: str) -> None:
        self.faults.pop(fault_id, None)

    @property
    def usable(self) -> bool:
        """Could a driver charge here (what "use the other connector" may point to)?"""
        return self.status not in (Status.FAULTED, Status.UNAVAILABLE) and not any(
            f.faulted for f in self.faults.values()
        )


@dataclass(frozen=True)
class Screen:
    """A composed message, language-free."""

    connector: int
    status: str
    state: str
    level: str  # info | warning | error
    headline: Part
    lines: tuple[Part, ...]
    faults: tuple[str, ...]  # rule ids shown


def _fault_order(catalog: Catalog, f: FaultRaised) -> tuple:
    return (not catalog.advice_for(f.rule).driver_fixable, SEVERITY_ORDER.get(f.severity, 9), f.ts)


def _actions(catalog: Catalog, faults: list[FaultRaised], others: list[int]) -> list[Msg]:
    ids: list[str] = []
    for f in faults:
        ids += [a for a in catalog.advice_for(f.rule).actions if a not in ids]
    ids.sort(key=lambda a: not ACTIONS[a].driver_fixable)  # stable: data order otherwise
    out: list[Msg] = []
    for a in ids:
        if a == "other_connector":
            if others:
                out.append(
                    Msg("action.other_connector", {"connector": ", ".join(map(str, others))})
                )
                continue
            a = "other_station"
        if all(m.key != f"action.{a}" for m in out):
            out.append(Msg(f"action.{a}"))
    return out


def _help(cfg: DriverConfig) -> list[Part]:
    out: list[Part] = [Msg("help.hotline", {"operator": cfg.operator, "hotline": cfg.hotline})]
    if cfg.contact:
        out.append(Msg("help.contact", {"contact": cfg.contact}))
    return out


def _figures(view: ConnectorView) -> list[Part]:
    out: list[Part] = []
    if view.energy_wh is not None:
        out.append(Msg("session.energy", {"energy": Energy(view.energy_wh)}))
    if view.cost is not None and view.currency:
        out.append(Msg("session.cost", {"cost": Money(view.cost, view.currency)}))
    return out


def compose(
    view: ConnectorView,
    catalog: Catalog,
    cfg: DriverConfig,
    *,
    others: list[int],
    prices: list[Part],
) -> Screen:
    """The screen of one connector. `others`: the station's other connectors a driver could
    use now; `prices`: the price lines for a session starting now (pricing_text)."""
    shown = sorted(
        (f for f in view.faults.values() if catalog.advice_for(f.rule).show),
        key=lambda f: _fault_order(catalog, f),
    )
    faulted = [f for f in shown if f.faulted]
    warnings = [f for f in shown if not f.faulted]
    lines: list[Part] = []
    if faulted or view.status == Status.FAULTED:
        state, level = Status.FAULTED.value, "error"
        headline: Part = Msg("state.Faulted.headline")
        lines += [Localized(f.driver_message) for f in faulted] or [Msg("state.Faulted.hint")]
        lines += _figures(view)  # a session the fault stopped: what it came to
    else:
        state = view.status
        if state == Status.AVAILABLE and view.authorized:
            state = "Authorized"
        level = "warning" if warnings or view.rejected else "info"
        headline = Msg(f"state.{state}.headline")
        if state == Status.CHARGING:
            parts: list[Part] = [headline]
            if view.power_w is not None:
                parts.append(Power(view.power_w))
            if view.energy_wh is not None:
                parts.append(Energy(view.energy_wh))
            if view.cost is not None and view.currency:
                parts.append(Money(view.cost, view.currency))
            headline = Joined(tuple(parts))
        if view.rejected:
            lines.append(Msg(f"rejected.{view.rejected}"))
        lines.append(Msg(f"state.{state}.hint"))
        if state != Status.CHARGING:
            lines += _figures(view)
        if state in PRICE_STATES:
            lines += prices
    lines += [Localized(f.driver_message) for f in warnings]
    actions = _actions(catalog, faulted + warnings, others)
    if actions:
        lines += [Msg("fault.actions"), *actions]
    problem = bool(faulted or warnings or view.rejected) or state in ("Faulted", "Unavailable")
    if problem:
        lines += _help(cfg)
        if cfg.report_url:
            lines.append(Msg("report.hint"))
    if view.ticket:
        lines.append(Msg("report.received", {"ticket": view.ticket, "operator": cfg.operator}))
    rules = tuple(dict.fromkeys(f.rule for f in faulted + warnings))
    return Screen(view.connector, view.status, state, level, headline, tuple(lines), rules)


def to_message(
    screen: Screen,
    view: ConnectorView,
    catalog: Catalog,
    cfg: DriverConfig,
    *,
    report_url: str | None = None,
) -> DriverMessage:
    """The screen in every catalog language, with the raw figures, as a bus event."""
    return DriverMessage(
        connector=screen.connector,
        status=screen.status,
        state=screen.state,
        level=screen.level,
        lang=cfg.language,
        headline={lang: render(screen.headline, catalog, lang) for lang in catalog.languages},
        lines={
            lang: [render(p, catalog, lang) for p in screen.lines] for lang in catalog.languages
        },
        session_id=view.session_id,
        energy_wh=view.energy_wh,
        power_w=view.power_w,
        cost=view.cost,
        currency=view.currency,
        faults=list(screen.faults),
        report_url=report_url,
    )


def text_in(message: DriverMessage, lang: str) -> tuple[str, list[str]]:
    """(headline, lines) of a message in `lang` (ValueError for a language it lacks)."""
    if lang not in message.headline:
        have = ", ".join(message.headline)
        raise ValueError(f"unknown language {lang!r}; the message has {have}")
    return message.headline[lang], message.lines[lang]
