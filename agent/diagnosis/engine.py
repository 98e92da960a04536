"""The diagnosis engine: rules x scopes, hysteresis, root cause and suppression.

Every rule runs once per matching scope instance (each connector, device, bus, or the
station). An instance is raised when its condition has been true for `raise_after_s` and
cleared when it has been false for `clear_after_s`; unknown (missing evidence) changes
nothing, so a fault neither appears nor disappears on a gap in the data. An instance
raised again within FLAP_WINDOW_S of its last clear waits twice as long to clear (up to
8x): an intermittent fault stays one fault instead of flapping.

Root cause: rule A `explains` rule B (transitively). When A is active on a scope that
shares a device with B's scope, B is suppressed (no FaultRaised of its own), and an
already raised B is cleared with reason "explained". A due symptom waits while one of its
explainers is already true but not yet due, so the cause is raised first. When the cause
clears, a symptom it held back starts over on data its devices report after that moment:
at the end of a bus outage a device the poller has not asked again yet still shows the
outage's failures, which are not a fault of its own. The raised
fault lists the symptoms it explains; they raise its confidence.

Latching (rules with clear = evidence / manual, see rules.py): when such a fault's
condition has been false for clear_after_s the fault is not cleared but latched (FaultLatch
"latched"): stopping the session made the symptom go, not the defect. It clears when the
rule's clear_evidence has held for clear_after_s (reason "evidence") or when a technician
clears it (`clear_manual`, reason "manual"). With latch = retry, a latched fault frees its
connectors for a new attempt after retry_backoff_s (FaultLatch "retry"), at most `retries`
times; the condition coming back during the attempt holds them again (FaultLatch "active").

The engine is pure: no I/O, no event loop. `ingest()` bus events, `evaluate()` to get the
FaultRaised / FaultCleared events of this moment; the service publishes and stores them.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from agent.config import StationConfig
from agent.diagnosis import codes as C
from agent.diagnosis.config import DiagnosisConfig
from agent.diagnosis.context import (
    DeviceState,
    Scope,
    ScopeEnv,
    build_scopes,
    device_states,
)
from agent.diagnosis.expr import Expr, Value
from agent.diagnosis.facts import ConnectorFacts, NoConnectorFacts, StationFacts, disabled_for_s
from agent.diagnosis.rules import Rule, explained_closure
from agent.diagnosis.sides import ConnectorSessions
from agent.events import (
    READINGS,
    DeviceHealth,
    Event,
    FaultCleared,
    FaultCodes,
    FaultLatch,
    FaultRaised,
    Symptom,
    utcnow,
)
from drivers.profile import Profile

log = structlog.get_logger(__name__)

FLAP_WINDOW_S = 600.0
MAX_EVIDENCE = 24
CONFIDENCE_PER_SYMPTOM = 0.05

Status = Literal["idle", "active", "suppressed"]
LatchState = Literal["latched", "retry"]


@dataclass(eq=False)
class Instance:
    """One rule on one scope: its condition's last value, timers and fault state."""

    rule: Rule
    scope: Scope
    device_kind: str | None
    raise_after: float
    clear_after: float
    retries: int = 0  # latch = retry: attempts allowed, and the back-off before each (s)
    retry_backoff: float = 0.0
    value: Value = None
    true_since: float | None = None
    false_since: float | None = None
    status: Status = "idle"
    raised: FaultRaised | None = None
    root: Instance | None = None
    env: ScopeEnv | None = None
    raises: deque[float] = field(default_factory=deque)
    # Latching (rule.clear != "condition"): None while the condition holds or has not yet
    # been false for clear_after; retries used; when the next retry is allowed; since when
    # the clear evidence has held.
    latch: LatchState | None = None
    attempts: int = 0
    retry_at: float | None = None
    evidence_since: float | None = None
    evidence_env: ScopeEnv | None = None
    # Released by its cause at this engine time: the condition counts again once every
    # device of the scope has reported after it (see the module docstring).
    fresh_after: float | None = None
    # When a value of the last evaluation changes by time alone (ScopeEnv.wake).
    wake_at: float | None = None
    expr: Expr = field(init=False)
    evidence_expr: Expr | None = field(init=False)

    def __post_init__(self) -> None:
        # Resolved once (the rule's are pydantic properties): evaluated on every batch.
        self.expr = self.rule.expr
        self.evidence_expr = self.rule.evidence_expr

    def reset(self) -> None:
        """Back to idle: the fault is over (or handed to its root cause)."""
        self.status, self.root, self.fresh_after = "idle", None, None
        self.latch, self.attempts, self.retry_at = None, 0, None
        self.evidence_since, self.evidence_env = None, None

    def latch_due(self, now: float) -> bool:
        """The condition has been false long enough for a latching fault to latch."""
        return (
            self.latch is None
            and self.value is False
            and self.false_since is not None
            and now - self.false_since >= self.effective_clear_after()
        )

    def back(self, now: float) -> bool:
        """The condition has been true for raise_after_s again."""
        return (
            self.value is True
            and self.true_since is not None
            and now - self.true_since >= self.raise_after
        )

    def track_evidence(self, value: Value, now: float) -> None:
        """Record the clear evidence's value: it must hold without a gap (unknown resets)."""
        if value is True and self.value is not True:
            self.evidence_since = self.evidence_since if self.evidence_since is not None else now
        else:
            self.evidence_since = None

    @property
    def key(self) -> tuple[str, str]:
        return self.rule.id, self.scope.key

    def effective_clear_after(self) -> float:
        """clear_after_s, doubled per re-raise within the flap window (max 8x)."""
        return self.clear_after * 2 ** min(max(len(self.raises) - 1, 0), 3)

    def track(self, value: Value, now: float) -> None:
        """Record the condition's value; unknown leaves the timers alone."""
        self.value = value
        if value is True:
            self.false_since = None
            self.true_since = self.true_since if self.true_since is not None else now
        elif value is False:
            self.true_since = None
            self.false_since = self.false_since if self.false_since is not None else now


def _ordered(rules: Mapping[str, Rule]) -> list[str]:
    """Rule ids with every cause before the symptoms it explains."""
    out: list[str] = []
    seen: set[str] = set()
    explainers = {rid: [r for r in rules.values() if rid in r.explains] for rid in rules}

    def visit(rid: str) -> None:
        if rid in seen:
            return
        seen.add(rid)
        for r in explainers[rid]:
            visit(r.id)
        out.append(rid)

    for rid in rules:
        visit(rid)
    return out


class DiagnosisEngine:
    """Evaluates every rule on every scope of a station; see the module docstring."""

    def __init__(
        self,
        cfg: StationConfig,
        rules: Mapping[str, Rule],
        profiles: Mapping[str, Profile],
        facts: StationFacts | None = None,
        clock: Callable[[], datetime] = utcnow,
        dcfg: DiagnosisConfig | None = None,
        connectors: ConnectorFacts | None = None,
    ):
        self.cfg = cfg
        self.connectors = connectors or NoConnectorFacts()
        self.dcfg = dcfg or getattr(cfg, "diagnosis", None) or DiagnosisConfig()
        self.rules = {rid: r for rid, r in rules.items() if self._enabled(rid)}
        self.clock = clock
        self.facts = facts or StationFacts()
        thresholds = self.dcfg.thresholds()
        keep: dict[str, float] = {}
        for r in self.rules.values():
            exprs = (r.expr, r.evidence_expr) if r.evidence_expr else (r.expr,)
            for ref, seconds in (w for e in exprs for w in e.windows.items()):
                q = ref.parts[1]
                keep[q] = max(keep.get(q, 0.0), seconds * 1.5 + 5)
        kinds = {name: p.kind for name, p in profiles.items()}
        self.devices: dict[str, DeviceState] = device_states(cfg, self.dcfg, dict(profiles), keep)
        self.scopes = build_scopes(cfg, self.dcfg, kinds)
        self.bus_kinds = {b.name: b.kind for b in cfg.bus}
        self.closure = explained_closure(self.rules)
        self.sessions = {c.id: ConnectorSessions() for c in cfg.connector}
        self._evse_of: dict[str, list[int]] = {}
        for c in cfg.connector:
            if c.evse:
                self._evse_of.setdefault(c.evse, []).append(c.id)
        self.instances: list[Instance] = []
        for rid in _ordered(self.rules):
            rule = self.rules[rid]
            tuning = self.dcfg.rule.get(rid)
            for scope in self.scopes:
                if scope.kind != rule.scope:
                    continue
                kind = kinds.get(scope.role("device") or "") if scope.kind == "device" else None
                if rule.applies_to != "any" and kind != rule.applies_to:
                    continue
                raise_after = rule.seconds("raise_after_s", thresholds)
                clear_after = rule.seconds("clear_after_s", thresholds)
                retries = float(rule.retries or 0) if rule.latch == "retry" else 0.0
                backoff = rule.retry_backoff_s
                if tuning is not None:
                    raise_after = _pick(tuning.raise_after_s, raise_after)
                    clear_after = _pick(tuning.clear_after_s, clear_after)
                    retries = _pick(tuning.retries, retries)
                    backoff = _pick(tuning.retry_backoff_s, backoff)
                self.instances.append(
                    Instance(rule, scope, kind, raise_after, clear_after, int(retries), backoff)
                )
        self._by_key = {i.key: i for i in self.instances}

    def _enabled(self, rid: str) -> bool:
        tuning = self.dcfg.rule.get(rid)
        return tuning is None or tuning.enabled

    # ------------------------------------------------------------------------ input

    def ingest(self, event: Event) -> None:
        """Take one bus event (Readings and DeviceHealth; others are ignored)."""
        now = self.clock().timestamp()
        if isinstance(event, READINGS):  # a Reading, or a device cycle's DeviceReadings
            dev = self.devices.get(event.device)
            if dev is None:
                return
            for r in event.samples():
                dev.ingest_reading(r, now)
                if r.quantity == "cp_state" and isinstance(r.value, str):
                    for cid in self._evse_of.get(r.device, ()):
                        self._plug_event(cid, self.sessions[cid].on_cp(r.value))
        elif isinstance(event, DeviceHealth):
            dev = self.devices.get(event.device)
            if dev is not None:
                dev.ingest_health(event, now)

    def ingest_many(self, events: Iterable[Event]) -> None:
        """ingest() each event in order."""
        for e in events:
            self.ingest(e)

    def note_vehicle(self, connector: int, vehicle: str) -> None:
        """Name the vehicle of the connector's current plug-in session (sharper sides)."""
        self.sessions[connector].note_vehicle(vehicle)

    def _session_facts(self, now_dt: datetime) -> dict[int, dict[str, Value]]:
        """`session.*` of every connector now (and the vehicle its plug-in session had)."""
        out: dict[int, dict[str, Value]] = {}
        for cid, s in self.sessions.items():
            vehicle = self.connectors.vehicle(cid)
            if vehicle is not None:
                s.note_vehicle(vehicle)
            off_s = disabled_for_s(self.connectors, cid, now_dt)
            out[cid] = {
                "charging": s.charging(),
                "charging_off": off_s is not None,
                "charging_disabled_s": off_s,
            }
        return out

    def _plug_event(self, cid: int, what: str | None) -> None:
        if what != "started":
            return
        # A tracked fault still active when the next vehicle plugs in counts for it too.
        for inst in self.instances:
            if inst.rule.side == "track" and cid in inst.scope.connectors and inst.status != "idle":
                self.sessions[cid].mark(inst.rule.id)

    # ------------------------------------------------------------------- evaluation

    def evaluate(self) -> list[Event]:
        """Run every instance now; returns the FaultRaised / FaultCleared of this moment."""
        now_dt = self.clock()
        now = now_dt.timestamp()
        facts = self.facts.snapshot(now_dt)
        session = self._session_facts(now_dt)
        for inst in self.instances:
            env = ScopeEnv(inst.scope, self.devices, self.bus_kinds, facts, session, now)
            value = inst.expr(env)
            if inst.fresh_after is not None:
                if not self._reported_since(inst.scope, inst.fresh_after):
                    value = None  # stale: what it shows is its cause's doing
                else:
                    inst.fresh_after = None
            inst.track(value, now)
            inst.env, inst.wake_at = env, env.wake
            evidence = inst.evidence_expr
            if inst.latch is not None and evidence is not None:
                ev_env = ScopeEnv(inst.scope, self.devices, self.bus_kinds, facts, session, now)
                inst.track_evidence(evidence(ev_env), now)
                inst.evidence_env = ev_env
                if ev_env.wake is not None:
                    inst.wake_at = min(ev_env.wake, inst.wake_at or ev_env.wake)
        out: list[Event] = []
        for inst in self.instances:
            if inst.status == "active" and inst.rule.latches:
                out.extend(self._latch_step(inst, now_dt))
            elif (
                inst.status != "idle"
                and inst.value is False
                and inst.false_since is not None
                and now - inst.false_since >= inst.effective_clear_after()
            ):
                if inst.status == "active":
                    out.append(self._cleared(inst, now_dt, "resolved"))
                inst.reset()
        for inst in self.instances:  # causes before their symptoms
            if inst.status == "active":
                continue
            due = (
                inst.value is True
                and inst.true_since is not None
                and now - inst.true_since >= inst.raise_after
            )
            if not due and inst.status == "idle":
                continue
            root = self._explainer(inst, active=True)
            if inst.status == "suppressed":
                if root is not None:
                    inst.root = root
                    continue
                inst.status, inst.root = "idle", None
                inst.true_since, inst.fresh_after = None, now
                continue
            if not due:
                continue
            if root is not None:
                inst.status, inst.root = "suppressed", root
                log.debug(
                    "fault.suppressed",
                    rule=inst.rule.id,
                    scope=inst.scope.key,
                    by=root.raised.fault_id if root.raised else None,
                )
                continue
            if self._explainer(inst, active=False) is not None:
                continue  # its cause is about to be raised: let it go first
            out.extend(self._raise(inst, now_dt))
        return out

    def next_due(self) -> float | None:
        """Seconds until a pending fault's raise_after (or an active one's clear_after)
        runs out, so the caller can evaluate right then; None if nothing is pending."""
        now = self.clock().timestamp()
        due: list[float] = []
        for i in self.instances:
            if i.status == "idle" and i.value is True and i.true_since is not None:
                due.append(i.true_since + i.raise_after)
            elif i.latch is not None:
                if i.value is True and i.true_since is not None:
                    due.append(i.true_since + i.raise_after)
                if i.evidence_since is not None:
                    due.append(i.evidence_since + i.clear_after)
                if i.retry_at is not None:
                    due.append(i.retry_at)
            elif i.status != "idle" and i.value is False and i.false_since is not None:
                due.append(i.false_since + i.effective_clear_after())
        return max(0.0, min(due) - now) if due else None

    def next_wake(self) -> float | None:
        """Seconds until the service should evaluate again: next_due(), or earlier when a
        condition changes by time alone (a look-back window's edge, a not-available time
        reached) between two readings. None: only new data can change anything."""
        now = self.clock().timestamp()
        due = self.next_due()
        wakes = [i.wake_at - now for i in self.instances if i.wake_at is not None]
        if due is not None:
            wakes.append(due)
        return max(0.0, min(wakes)) if wakes else None

    # -------------------------------------------------------------------- latching

    def _latch_step(self, inst: Instance, now_dt: datetime) -> list[Event]:
        """One evaluation of an active fault whose rule latches (see the module docstring)."""
        now = now_dt.timestamp()
        rule = inst.rule
        if inst.latch is None:
            if not inst.latch_due(now):
                return []
            inst.latch, inst.evidence_since = "latched", None
            if inst.attempts < inst.retries:
                inst.retry_at = now + inst.retry_backoff
            return [self._latch_event(inst, now_dt)]
        if inst.back(now):  # the defect shows again
            if inst.latch == "retry":
                inst.attempts += 1
            inst.latch, inst.retry_at, inst.evidence_since = None, None, None
            return [self._latch_event(inst, now_dt)]
        if inst.evidence_since is not None and now - inst.evidence_since >= inst.clear_after:
            env = inst.evidence_env
            shown = ", ".join(f"{e.name} = {e.value}" for e in env.evidence_list()) if env else ""
            detail = f"{rule.clear_evidence} held for {inst.clear_after:g} s ({shown})"
            cleared = self._cleared(inst, now_dt, "evidence", detail=detail)
            inst.reset()
            return [cleared]
        if inst.latch == "latched" and inst.retry_at is not None and now >= inst.retry_at:
            inst.latch, inst.retry_at = "retry", None
            return [self._latch_event(inst, now_dt)]
        return []

    def _latch_event(self, inst: Instance, now_dt: datetime) -> FaultLatch:
        raised = inst.raised
        assert raised is not None
        state = inst.latch or "active"
        retry_at = None if inst.retry_at is None else datetime.fromtimestamp(inst.retry_at, UTC)
        log.info(
            "fault.latch",
            fault_id=raised.fault_id,
            rule=raised.rule,
            scope=raised.scope,
            state=state,
            attempts=inst.attempts,
            retries=inst.retries,
            retry_at=retry_at.isoformat() if retry_at else None,
            clear=inst.rule.clear,
        )
        return FaultLatch(
            ts=now_dt,
            fault_id=raised.fault_id,
            rule=raised.rule,
            scope=raised.scope,
            connectors=raised.connectors,
            state=state,
            faulted=raised.faulted,
            title=raised.title,
            attempts=inst.attempts,
            retries=inst.retries,
            retry_at=retry_at,
        )

    def clear_manual(self, fault_id: str, by: str, note: str = "") -> FaultCleared:
        """A technician clears an active fault (any rule; one whose condition still holds is
        raised again after its raise_after_s). KeyError if no active fault has this id."""
        for inst in self.instances:
            if inst.status == "active" and inst.raised and inst.raised.fault_id == fault_id:
                cleared = self._cleared(inst, self.clock(), "manual", by=by, note=note)
                inst.reset()
                return cleared
        raise KeyError(fault_id)

    def latched_manual(self, connector: int | None = None) -> list[str]:
        """Ids of the latched faults that only a technician clears (clear = manual), on
        `connector` (None: all): what an OCPP Reset / ChangeAvailability Operative clears."""
        return [
            i.raised.fault_id
            for i in self.instances
            if i.latch is not None
            and i.raised is not None
            and i.rule.clear == "manual"
            and (connector is None or connector in i.raised.connectors)
        ]

    def _reported_since(self, scope: Scope, t: float) -> bool:
        """Every device of `scope` has sent a health report after engine time `t`."""
        return all(
            d.health_t > t for name in scope.devices if (d := self.devices.get(name)) is not None
        )

    def _explainer(self, inst: Instance, active: bool) -> Instance | None:
        """An active explainer of `inst` (active=True), or a pending one (False)."""
        for other in self.instances:
            if other is inst or inst.rule.id not in self.closure.get(other.rule.id, ()):
                continue
            if not other.scope.related(inst.scope):
                continue
            if active and other.status == "active":
                return other
            if not active and other.status == "idle" and other.value is True:
                return other
        return None

    def _symptoms(self, inst: Instance) -> list[Instance]:
        """Instances `inst` explains that show now (true, raised or suppressed)."""
        explained = self.closure.get(inst.rule.id, frozenset())
        return [
            o
            for o in self.instances
            if o is not inst
            and o.rule.id in explained
            and o.scope.related(inst.scope)
            and (o.value is True or o.status != "idle")
        ]

    def _raise(self, inst: Instance, now_dt: datetime) -> list[Event]:
        rule, scope, env = inst.rule, inst.scope, inst.env
        assert env is not None
        now = now_dt.timestamp()
        inst.raises.append(now)
        while inst.raises and inst.raises[0] < now - FLAP_WINDOW_S:
            inst.raises.popleft()
        symptoms = self._symptoms(inst)
        labels = env.labels()
        side, basis = rule.side, ""
        if rule.side == "track":
            (cid,) = scope.connectors
            sessions = self.sessions[cid]
            elsewhere = [s for c, s in self.sessions.items() if c != cid]
            side, basis = sessions.verdict(rule.id, elsewhere)
            sessions.mark(rule.id)
        elif rule.side != "unknown":
            basis = "fixed by the rule"
        connectors = sorted({c for i in (inst, *symptoms) for c in i.scope.connectors})
        devices = sorted({d for i in (inst, *symptoms) for d in _affected(i.scope)})
        raised = FaultRaised(
            ts=now_dt,
            fault_id=f"{now_dt:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
            rule=rule.id,
            scope=scope.key,
            title=rule.texts("title", labels),
            root_cause=rule.texts("root_cause", labels),
            severity=rule.severity,
            connectors=connectors,
            devices=devices,
            evidence=env.evidence_list()[:MAX_EVIDENCE],
            confidence=_confidence(rule.confidence, len(symptoms)),
            codes=self._codes(inst, labels),
            faulted=_faulted(rule, symptoms),
            driver_message=rule.texts("driver_message", labels),
            technician_steps=rule.steps(labels),
            explains=[
                Symptom(rule=s.rule.id, scope=s.scope.key, title=s.rule.title.en) for s in symptoms
            ],
            side=side if side in ("charger", "vehicle") else "unknown",
            side_basis=basis,
            clear=rule.clear,
            clear_evidence=rule.clear_evidence,
            latch=rule.latch if rule.latches else None,
            retries=inst.retries,
        )
        inst.status, inst.raised, inst.root = "active", raised, None
        log.warning(
            "fault.raised",
            fault_id=raised.fault_id,
            rule=rule.id,
            scope=scope.key,
            connectors=connectors,
            devices=devices,
            error_code=raised.codes.error_code,
            vendor_error_code=raised.codes.vendor_error_code,
            faulted=raised.faulted,
            side=raised.side,
            explains=[f"{s.rule.id}@{s.scope.key}" for s in symptoms],
            root_cause=raised.root_cause["en"],
        )
        out: list[Event] = [raised]
        for s in symptoms:
            if s.status == "active":
                out.append(self._cleared(s, now_dt, "explained", explained_by=raised.fault_id))
            s.reset()
            s.status, s.root = "suppressed", inst
        return out

    def _codes(self, inst: Instance, labels: Mapping[str, str]) -> FaultCodes:
        codes = inst.rule.codes_for(inst.device_kind)
        env = inst.env
        decoded = None
        if inst.rule.evse_faults and env is not None:
            got = env.evidence.get(f"{inst.scope.role('evse')}.fault")
            if got is not None and got[0] in inst.rule.evse_faults:
                decoded = labels.get("code", "-"), labels.get("code_text", "-")
        if codes.mrec:
            vendor_id, vendor_code = C.MREC_VENDOR_ID, codes.mrec
        elif decoded:
            vendor_id, vendor_code = labels.get("manufacturer", C.EVEDGE_VENDOR_ID), decoded[0]
        else:
            vendor_id, vendor_code = C.EVEDGE_VENDOR_ID, inst.rule.id
        info = f"{decoded[0]}: {decoded[1]}" if decoded else inst.rule.title.en
        return FaultCodes(
            error_code=codes.ocpp16,
            vendor_id=C.truncate(vendor_id, C.VENDOR_ID_MAX),
            vendor_error_code=C.truncate(vendor_code, C.VENDOR_ERROR_CODE_MAX),
            info=C.truncate(info, C.INFO_MAX),
            mrec=codes.mrec,
            component=codes.component,
            variable=codes.variable,
        )

    def _cleared(
        self,
        inst: Instance,
        now_dt: datetime,
        reason: str,
        explained_by: str | None = None,
        detail: str = "",
        by: str | None = None,
        note: str = "",
    ) -> FaultCleared:
        raised = inst.raised
        assert raised is not None
        cleared = FaultCleared(
            ts=now_dt,
            fault_id=raised.fault_id,
            rule=raised.rule,
            scope=raised.scope,
            connectors=raised.connectors,
            devices=raised.devices,
            raised_ts=raised.ts,
            reason=reason,
            explained_by=explained_by,
            detail=detail,
            by=by,
            note=note,
        )
        log.info(
            "fault.cleared",
            fault_id=raised.fault_id,
            rule=raised.rule,
            scope=raised.scope,
            reason=reason,
            explained_by=explained_by,
            by=by,
            duration_s=round((now_dt - raised.ts).total_seconds(), 1),
        )
        inst.raised = None
        return cleared

    # --------------------------------------------------------------------- restart

    def restore(
        self, active: Iterable[FaultRaised], latches: Mapping[str, FaultLatch] | None = None
    ) -> list[FaultCleared]:
        """Take the faults active before a restart: they stay raised (same fault id) until
        the data says otherwise. Faults whose rule or scope no longer exists are retired.
        `latches`: the last FaultLatch of each (by fault id); a latched fault stays latched,
        with its retries used, and a retry waits its back-off again (a restart is no repair)."""
        retired: list[FaultCleared] = []
        now_dt = self.clock()
        latches = latches or {}
        for raised in active:
            inst = self._by_key.get((raised.rule, raised.scope))
            if inst is None:
                retired.append(
                    FaultCleared(
                        ts=now_dt,
                        fault_id=raised.fault_id,
                        rule=raised.rule,
                        scope=raised.scope,
                        connectors=raised.connectors,
                        devices=raised.devices,
                        raised_ts=raised.ts,
                        reason="retired",
                        detail="rule disabled or removed, or scope no longer configured",
                    )
                )
                continue
            inst.status, inst.raised = "active", raised
            inst.raises.append(raised.ts.timestamp())
            latch = latches.get(raised.fault_id)
            if latch is not None and inst.rule.latches:
                inst.attempts = latch.attempts
                if latch.state != "active":
                    inst.latch = "latched"
                    if inst.attempts < inst.retries:
                        inst.retry_at = now_dt.timestamp() + inst.retry_backoff
            log.info(
                "fault.restored", fault_id=raised.fault_id, rule=raised.rule, scope=raised.scope
            )
        return retired

    def active(self) -> list[FaultRaised]:
        """The faults raised and not cleared, causes first."""
        return [i.raised for i in self.instances if i.status == "active" and i.raised]

    def suppressed(self) -> list[tuple[str, str, str]]:
        """(rule, scope, root fault id) of every symptom held back by a root cause."""
        return [
            (i.rule.id, i.scope.key, i.root.raised.fault_id)
            for i in self.instances
            if i.status == "suppressed" and i.root is not None and i.root.raised is not None
        ]

    def instance(self, rule: str, scope: str) -> Instance | None:
        """The instance of `rule` on `scope` (e.g. 'connector:1'), if it exists."""
        return self._by_key.get((rule, scope))

    def now(self) -> datetime:
        """The engine's clock."""
        return self.clock()


def _affected(scope: Scope) -> frozenset[str]:
    # The station scope "contains" every device but affects none in particular.
    return frozenset() if scope.kind == "station" else scope.devices


def _faulted(rule: Rule, symptoms: list[Instance]) -> bool:
    """The cause's faulted, or a symptom's: the connector shows what the incident does to it.
    A warning-only cause (a vehicle-side pilot problem) keeps the connector out of Faulted
    though the EVSE's reaction it explains (state F) would be Faulted on its own."""
    if rule.codes.ocpp16 in C.WARNING_ONLY:
        return False
    return rule.faulted or any(s.rule.faulted for s in symptoms)


def _confidence(base: float, symptoms: int) -> float:
    # Each symptom the cause explains is one more independent observation agreeing with it.
    return round(min(0.99, base + CONFIDENCE_PER_SYMPTOM * symptoms), 2)


def _pick(override: float | None, default: float) -> float:
    return default if override is None else override
