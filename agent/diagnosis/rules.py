"""Rule files: what a fault is, when it is raised and cleared, how it is reported.

Shipped rules live in agent/diagnosis/rules/*.toml (one file per family), a site may add
its own directory ([diagnosis] rules_dir). Each file holds `[[rule]]` tables:

    [[rule]]
    id = "undervoltage"
    scope = "connector"               # connector | device | bus | station
    condition = "min(meter.voltage_l1, meter.voltage_l2, meter.voltage_l3) < cfg.undervoltage_v"
    raise_after_s = 5                 # or a threshold: "cfg.overcurrent_grace_s"
    clear_after_s = 10
    clear = "condition"               # condition | evidence | manual (see below)
    severity = "warning"              # critical | error | warning | info
    faulted = false                   # connector Faulted (true) or a warning
    confidence = 0.9
    explains = []                     # rule ids whose faults this one's cause explains
    derate_a = 16                     # optional: offer at most 16 A while raised (warnings)
    codes.ocpp16 = "UnderVoltage"     # OCPP 1.6 ChargePointErrorCode
    codes.mrec = "CX006"              # ChargeX MREC code, where one applies
    codes.component = "ElectricalFeed"  # OCPP 2.0.1 component and variable
    codes.variable = "ACVoltage"
    title = { en = "...", de = "..." }
    root_cause = { en = "... {connector} ...", de = "..." }
    driver_message = { en = "...", de = "..." }
    technician_steps = { en = ["...", "..."], de = ["...", "..."] }

Everything is checked when the files are loaded: unknown quantities and names, thresholds
of the wrong type, unknown codes, unknown placeholders, `explains` naming no rule or
forming a cycle, EVSE faults no rule (or two rules) handle. A bad file is refused with a
message naming the file and the rule.

How a raised fault may clear (`clear`):
- "condition" (the default): once the condition has been false for clear_after_s; right for
  faults of the supply or of communication, which are over when their symptom is.
- "evidence": the condition's end only latches the fault (stopping a session makes a
  hardware symptom disappear without repairing anything); it clears once `clear_evidence`
  (an expression in the same language and names as `condition`, e.g. "current flows with
  the contactor commanded closed") has held for clear_after_s.
- "manual": latched until a technician clears it (`evedge faults clear ID`, the API, the
  MQTT command, an OCPP Reset or ChangeAvailability Operative on its connector).

What a latched fault of a faulted rule does to new sessions (`latch`):
- "block" (the default): its connectors stay Faulted until it clears.
- "retry": after `retry_backoff_s` (default 30) a new session may try, at most `retries`
  times; a retry in which the condition comes back holds the connector again, and once the
  retries are used up the fault blocks as with "block".
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.diagnosis import codes as C
from agent.diagnosis.config import CONNECTOR_THRESHOLDS, STATION_THRESHOLDS
from agent.diagnosis.expr import Expr, ExprError, Kind, Ref, compile_expr
from drivers import quantities

RULES_DIR = Path(__file__).parent / "rules"
LANGUAGES = ("en", "de")

Scope = Literal["connector", "device", "bus", "station"]
Clear = Literal["condition", "evidence", "manual"]
Latch = Literal["block", "retry"]
DEFAULT_RETRY_BACKOFF_S = 30.0
Severity = Literal["critical", "error", "warning", "info"]
SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}

# Names each scope gives its conditions, beyond device readings (see context.py).
HEALTH_FIELDS: dict[str, Kind] = {
    "state": "str",  # ok | degraded | offline | unknown
    "seen": "bool",  # a health report has arrived
    "failing": "bool",  # the last poll failed
    "consecutive_failures": "num",
    "latency_ms": "num",
    # seconds the device has answered every request of every cycle (0: the last had an
    # error): window counters tell what happened, this tells that it is over
    "clean_s": "num",
    "polls": "num",  # polls in the health window
    "no_answer": "num",  # timeouts and gateway "no response" (0x0A/0x0B) in the window
    "frame_errors": "num",  # CRC / framing / garbage in the window
    "frame_error_rate": "num",  # frame errors per poll in the window
    **{f"exceptions_{c}": "num" for c in (1, 2, 3, 4, 6)},  # Modbus exceptions in the window
}
DERIVED_READINGS: dict[str, Kind] = {
    "fault": "str",  # canonical EVSE fault of the evse_error_code (profile table), or unmapped
    "code": "num",  # the raw vendor error code
    "code_text": "str",  # the vendor's wording of it
}
BUS_FIELDS: dict[str, Kind] = {
    "devices": "num",
    "failing": "num",
    "offline": "num",
    "answering": "num",
    "frame_errors": "num",
    "kind": "str",  # rtu | tcp
}
STATION_FIELDS: dict[str, Kind] = {
    "clock_synced": "bool",
    "disk_free_pct": "num",
    "disk_free_mb": "num",
    "cloud_configured": "bool",
    "cloud_offline_s": "num",
    "ocpp_tx_exhausted": "num",
    "billing_tamper": "num",
    "mqtt_billing_refused": "num",
    "records_unwritten": "num",
}
SESSION_FIELDS: dict[str, Kind] = {
    "active": "bool",  # a vehicle is plugged in (pilot B, C or D since it left A)
    "charging": "bool",  # ... and the pilot is in C or D
    # the agent switched charging off and read the switch back (False while it is on, or
    # where nobody controls the EVSE); charging_disabled_s: for how long (unknown if not)
    "charging_off": "bool",
    "charging_disabled_s": "num",
}
ROLES: dict[str, tuple[str, ...]] = {
    "connector": ("evse", "meter"),
    "device": ("device",),
    "bus": (),
    "station": (),
}
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "connector": frozenset({"connector", "evse", "meter", "code", "code_text", "manufacturer"}),
    "device": frozenset({"device", "bus", "kind"}),
    "bus": frozenset({"bus", "devices"}),
    "station": frozenset({"station"}),
}
_KINDS: dict[str, Kind] = {"float": "num", "int": "num", "str": "str", "bool": "bool"}


class RuleError(ValueError):
    """A rule file is invalid; the message names the file, the rule and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Texts(_Strict):
    """One text in every language evedge ships."""

    en: str = Field(min_length=1, max_length=500)
    de: str = Field(min_length=1, max_length=500)


class Steps(_Strict):
    """Ordered technician steps in every language; the same steps in each."""

    en: list[str] = Field(min_length=1, max_length=12)
    de: list[str] = Field(min_length=1, max_length=12)

    @model_validator(mode="after")
    def _same_length(self) -> Steps:
        if len(self.en) != len(self.de):
            raise ValueError(f"en has {len(self.en)} steps, de has {len(self.de)}")
        if any(not s.strip() for s in (*self.en, *self.de)):
            raise ValueError("empty step")
        return self


class Codes(_Strict):
    """How a fault is reported: OCPP 1.6 errorCode, MREC code, OCPP 2.0.1 component."""

    ocpp16: str
    mrec: str | None = None
    component: str
    variable: str

    @field_validator("ocpp16")
    @classmethod
    def _ocpp16(cls, v: str) -> str:
        if v not in C.OCPP16_ERROR_CODES or v == "NoError":
            known = ", ".join(sorted(C.OCPP16_ERROR_CODES - {"NoError"}))
            raise ValueError(f"unknown OCPP 1.6 errorCode {v!r}; one of {known}")
        return v

    @field_validator("mrec")
    @classmethod
    def _mrec(cls, v: str | None) -> str | None:
        if v is not None and v not in C.MREC_CODES:
            raise ValueError(f"unknown ChargeX MREC code {v!r}; CX001..CX026")
        return v

    @model_validator(mode="after")
    def _component(self) -> Codes:
        if (why := C.mrec_disagreement(self.ocpp16, self.mrec)) is not None:
            raise ValueError(why)
        variables = C.OCPP201_COMPONENTS.get(self.component)
        if variables is None:
            known = ", ".join(sorted(C.OCPP201_COMPONENTS))
            raise ValueError(f"unknown OCPP 2.0.1 component {self.component!r}; known: {known}")
        if self.variable not in variables:
            raise ValueError(
                f"component {self.component} has no variable {self.variable!r}; "
                f"known: {', '.join(sorted(variables))}"
            )
        return self


class Rule(_Strict):
    """One fault rule, validated; `expr` is its compiled condition."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{1,47}$")
    title: Texts
    scope: Scope
    applies_to: Literal["any", "meter", "evse"] = "any"
    condition: str | None = None
    evse_faults: list[str] = Field(
        default_factory=list, description="canonical EVSE faults this rule handles"
    )
    raise_after_s: float | str = 0.0
    clear_after_s: float | str = 5.0
    clear: Clear = "condition"
    clear_evidence: str | None = Field(
        default=None,
        min_length=1,
        description="clear = evidence: what shows the hardware works again (an expression)",
    )
    latch: Latch = "block"
    retries: int | None = Field(default=None, ge=1, le=20, description="latch = retry")
    retry_backoff_s: float = Field(default=DEFAULT_RETRY_BACKOFF_S, ge=0, le=86_400)
    detection_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="what the condition itself needs to see it "
        "(a look-back window), beyond raise_after_s: documents the rule's own time",
    )
    severity: Severity
    faulted: bool
    confidence: float = Field(ge=0, le=1)
    side: Literal["charger", "vehicle", "unknown", "track"] = "charger"
    explains: list[str] = Field(default_factory=list)
    derate_a: float | None = Field(
        default=None,
        ge=6,
        le=1000,
        description="while raised, the connector offers at most this current (A): a warning "
        "that derates instead of stopping (6 A is the least IEC 61851-1 allows)",
    )
    codes: Codes
    codes_by_kind: dict[Literal["meter", "evse"], Codes] = Field(default_factory=dict)
    root_cause: Texts
    driver_message: Texts
    technician_steps: Steps

    _expr: Expr | None = PrivateAttr(default=None)
    _evidence_expr: Expr | None = PrivateAttr(default=None)
    _file: str = PrivateAttr(default="")

    @field_validator("raise_after_s", "clear_after_s")
    @classmethod
    def _time(cls, v: float | str) -> float | str:
        if isinstance(v, str):
            name = v.removeprefix("cfg.")
            if not v.startswith("cfg.") or name not in STATION_THRESHOLDS:
                raise ValueError(f"must be seconds or a cfg threshold, got {v!r}")
        elif not 0 <= v <= 86_400:
            raise ValueError(f"must be 0..86400 s, got {v!r}")
        return v

    @field_validator("evse_faults")
    @classmethod
    def _evse_faults(cls, v: list[str]) -> list[str]:
        allowed = (set(quantities.EVSE_FAULTS) - C.EVSE_NOT_A_FAULT) | {C.UNMAPPED}
        for f in v:
            if f not in allowed:
                raise ValueError(f"unknown EVSE fault {f!r}; one of {', '.join(sorted(allowed))}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.condition is None and not self.evse_faults:
            raise ValueError("needs a condition, evse_faults, or both")
        if self.evse_faults and self.scope != "connector":
            raise ValueError("evse_faults: only a connector rule can handle EVSE faults")
        if self.applies_to != "any" and self.scope != "device":
            raise ValueError("applies_to: only for device rules")
        if self.codes_by_kind and self.scope != "device":
            raise ValueError("codes_by_kind: only for device rules")
        if self.derate_a is not None and (self.scope != "connector" or self.faulted):
            raise ValueError("derate_a: only for connector rules with faulted = false")
        for codes in (self.codes, *self.codes_by_kind.values()):
            if self.faulted and codes.ocpp16 in C.WARNING_ONLY:
                raise ValueError(f"codes: {codes.ocpp16} is a warning only; set faulted = false")
        if self.id in self.explains:
            raise ValueError("explains: a rule cannot explain itself")
        self._check_clear()
        allowed = PLACEHOLDERS[self.scope]
        for what, texts in (
            ("title", [self.title.en, self.title.de]),
            ("root_cause", [self.root_cause.en, self.root_cause.de]),
            ("driver_message", [self.driver_message.en, self.driver_message.de]),
            ("technician_steps", [*self.technician_steps.en, *self.technician_steps.de]),
        ):
            for text in texts:
                bad = _placeholders(text) - allowed
                if bad:
                    raise ValueError(
                        f"{what}: unknown placeholder {{{sorted(bad)[0]}}}; a {self.scope} "
                        f"rule may use {', '.join('{' + p + '}' for p in sorted(allowed))}"
                    )
        return self

    def _check_clear(self) -> None:
        if (self.clear == "evidence") != (self.clear_evidence is not None):
            raise ValueError(
                'clear_evidence: required with clear = "evidence" and only then'
                if self.clear == "evidence"
                else f'clear_evidence: only with clear = "evidence" (clear is {self.clear!r})'
            )
        given = self.model_fields_set & {"latch", "retries", "retry_backoff_s"}
        if given and self.clear == "condition":
            raise ValueError(
                f"{sorted(given)[0]}: only for a rule that latches (clear = evidence or manual)"
            )
        if given and not self.faulted:
            raise ValueError(
                f"{sorted(given)[0]}: only for faulted rules (a warning blocks nothing)"
            )
        if self.latch == "retry" and self.retries is None:
            raise ValueError('retries: required with latch = "retry" (how many new attempts)')
        if self.latch != "retry" and given & {"retries", "retry_backoff_s"}:
            raise ValueError(f'{sorted(given - {"latch"})[0]}: only with latch = "retry"')

    @property
    def latches(self) -> bool:
        """True if the condition's end only latches the fault (clear = evidence / manual)."""
        return self.clear != "condition"

    @property
    def evidence_expr(self) -> Expr | None:
        """The compiled clear_evidence (clear = evidence), else None."""
        return self._evidence_expr

    @property
    def expr(self) -> Expr:
        """The compiled condition (evse_faults folded in)."""
        assert self._expr is not None, "rule not loaded through load_rules"
        return self._expr

    @property
    def file(self) -> str:
        """The file the rule came from."""
        return self._file

    def codes_for(self, kind: str | None) -> Codes:
        """The codes to report for a device of `kind` (meter / evse)."""
        return self.codes_by_kind.get(kind, self.codes) if kind else self.codes  # type: ignore[call-overload]

    def texts(self, which: str, labels: Mapping[str, str]) -> dict[str, str]:
        """title / root_cause / driver_message per language, placeholders filled."""
        fill = _Labels(labels)
        return {lang: t.format_map(fill) for lang, t in getattr(self, which).model_dump().items()}

    def steps(self, labels: Mapping[str, str]) -> dict[str, list[str]]:
        """The technician steps per language, placeholders filled."""
        fill = _Labels(labels)
        return {
            lang: [s.format_map(fill) for s in steps]
            for lang, steps in self.technician_steps.model_dump().items()
        }

    def seconds(self, which: str, thresholds: Mapping[str, float]) -> float:
        """raise_after_s or clear_after_s in seconds (a cfg reference resolved)."""
        v = getattr(self, which)
        return float(thresholds[v.removeprefix("cfg.")] if isinstance(v, str) else v)


class _Labels(dict):
    """Placeholder values; one the scope cannot fill reads "-" rather than failing."""

    def __missing__(self, key: str) -> str:
        return "-"


def _placeholders(text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}
    except ValueError as e:
        return {f"(bad braces: {e})"}


class _ScopeNames:
    """Resolver of a scope's names for the expression compiler."""

    def __init__(self, scope: str):
        self.scope = scope
        self.roles = ROLES[scope]
        cfg = STATION_THRESHOLDS + (CONNECTOR_THRESHOLDS if scope == "connector" else ())
        self.cfg = frozenset(cfg)

    def kind(self, ref: Ref, reading: bool) -> Kind:
        parts = ref.parts
        root = parts[0]
        if root in self.roles:
            if len(parts) != 2:
                raise ExprError(f"{ref}: write {root}.<quantity>, e.g. {root}.voltage_l1")
            q = parts[1]
            if q in quantities.QUANTITIES:
                return _KINDS[quantities.QUANTITIES[q].kind]
            if q in DERIVED_READINGS and not reading:
                return DERIVED_READINGS[q]
            raise ExprError(f"{ref}: unknown quantity {q!r}")
        if reading:
            raise ExprError(f"{ref}: not a device reading ({', '.join(self.roles) or 'none'})")
        if root == "health" and self.roles:
            if len(parts) != 3 or parts[1] not in self.roles or parts[2] not in HEALTH_FIELDS:
                raise ExprError(
                    f"{ref}: write health.<{'|'.join(self.roles)}>.<field>; fields: "
                    f"{', '.join(HEALTH_FIELDS)}"
                )
            return HEALTH_FIELDS[parts[2]]
        tables = {"station": STATION_FIELDS}
        if self.scope == "bus":
            tables["bus"] = BUS_FIELDS
        if self.scope == "connector":
            tables["session"] = SESSION_FIELDS
        if root == "cfg":
            if len(parts) != 2 or parts[1] not in self.cfg:
                raise ExprError(f"{ref}: unknown threshold; known: {', '.join(sorted(self.cfg))}")
            return "num"
        if root in tables:
            fields = tables[root]
            if len(parts) != 2 or parts[1] not in fields:
                raise ExprError(f"{ref}: unknown field; {root} has {', '.join(fields)}")
            return fields[parts[1]]
        known = [*self.roles, *(["health"] if self.roles else []), "cfg", *tables]
        raise ExprError(f"{ref}: unknown name {root!r} in a {self.scope} rule; known: {known}")


class _RuleFile(_Strict):
    rule: list[dict] = Field(min_length=1)


def _format(file: str, rule_id: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(rule)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{file}: rule {rule_id!r}: {path}: {msg}")
    return "\n".join(lines)


def load_rule_file(path: Path) -> list[Rule]:
    """Load and check one rule file (names, codes, conditions); RuleError on any problem."""
    name = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RuleError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise RuleError(f"{name}: not valid TOML: {e}") from None
    try:
        raw = _RuleFile.model_validate(data).rule
    except ValidationError:
        raise RuleError(f"{name}: a rule file holds [[rule]] tables and nothing else") from None
    rules = []
    for i, entry in enumerate(raw):
        rid = str(entry.get("id", f"#{i + 1}"))
        try:
            rule = Rule.model_validate(entry)
        except ValidationError as e:
            raise RuleError(_format(name, rid, e)) from None
        text = rule.condition
        if rule.evse_faults:
            claim = f"evse.fault in ({', '.join(repr(f) for f in rule.evse_faults)},)"
            text = claim if text is None else f"({text}) or {claim}"
        names = _ScopeNames(rule.scope)
        try:
            rule._expr = compile_expr(text or "", names)
        except ExprError as e:
            raise RuleError(f"{name}: rule {rid!r}: condition: {e}") from None
        if rule.clear_evidence is not None:
            try:
                rule._evidence_expr = compile_expr(rule.clear_evidence, names)
            except ExprError as e:
                raise RuleError(f"{name}: rule {rid!r}: clear_evidence: {e}") from None
        rule._file = name
        rules.append(rule)
    return rules


def check_rule_set(rules: list[Rule]) -> dict[str, Rule]:
    """Cross-file checks: unique ids, `explains` targets exist and form no cycle, every
    canonical EVSE fault handled by exactly one rule. Returns the rules by id."""
    by_id: dict[str, Rule] = {}
    for r in rules:
        if r.id in by_id:
            raise RuleError(f"{r.file}: rule {r.id!r}: id already used in {by_id[r.id].file}")
        by_id[r.id] = r
    for r in rules:
        for target in r.explains:
            if target not in by_id:
                raise RuleError(f"{r.file}: rule {r.id!r}: explains: no rule {target!r}")
    _check_acyclic(by_id)
    claims: dict[str, Rule] = {}
    for r in rules:
        for f in r.evse_faults:
            if f in claims:
                raise RuleError(
                    f"{r.file}: rule {r.id!r}: evse_faults: {f!r} is already handled by rule "
                    f"{claims[f].id!r} ({claims[f].file})"
                )
            claims[f] = r
    faults = (set(quantities.EVSE_FAULTS) - C.EVSE_NOT_A_FAULT) | {C.UNMAPPED}
    missing = sorted(faults - set(claims))
    if missing:
        raise RuleError(f"no rule handles EVSE fault(s) {', '.join(missing)} (evse_faults)")
    return by_id


def _check_acyclic(by_id: dict[str, Rule]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(rid: str, path: list[str]) -> None:
        if state.get(rid) == 2:
            return
        if state.get(rid) == 1:
            cycle = [*path[path.index(rid) :], rid]
            r = by_id[path[-1]]
            raise RuleError(
                f"{r.file}: rule {r.id!r}: explains: cycle {' -> '.join(cycle)} "
                "(a cause cannot be explained by its own symptom)"
            )
        state[rid] = 1
        for target in by_id[rid].explains:
            visit(target, [*path, rid])
        state[rid] = 2

    for rid in by_id:
        visit(rid, [])


@cache
def load_rules(extra_dir: Path | None = None) -> dict[str, Rule]:
    """The shipped rules plus those of `extra_dir` (*.toml), checked as one set."""
    rules: list[Rule] = []
    for d in (RULES_DIR, extra_dir):
        if d is None:
            continue
        if not d.is_dir():
            raise RuleError(f"{d}: no such rules directory")
        for path in sorted(d.glob("*.toml")):
            rules.extend(load_rule_file(path))
    return check_rule_set(rules)


def explained_closure(rules: Mapping[str, Rule]) -> dict[str, frozenset[str]]:
    """For each rule, every rule it explains directly or through its symptoms."""
    out: dict[str, frozenset[str]] = {}

    def walk(rid: str) -> frozenset[str]:
        if rid not in out:
            found: set[str] = set()
            for t in rules[rid].explains:
                if t in rules:
                    found |= {t} | walk(t)
            out[rid] = frozenset(found)
        return out[rid]

    for rid in rules:
        walk(rid)
    return out
