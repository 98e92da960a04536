"""The driver message catalog: one TOML file per language under messages/, plus faults.toml
(what a driver can do about each fault rule). Data, validated when loaded.

A language file holds `[meta]` (language, name), `[format]` (decimal and thousands
separators, the money pattern, currency symbols) and the texts as nested tables, addressed by
dotted keys ("state.Charging.headline"). `KEYS` below is the contract with the code: every
language must have exactly these keys, each with exactly the placeholders listed, so a
missing German text or a `{hotline}` left out of one translation is refused at load, naming
the file and the key. `check_rules` adds the fault side: every diagnosis rule has advice in
faults.toml and a driver text in every shipped language.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.driver.config import SHIPPED_LANGUAGES
from agent.driver.numbers import NumberStyle
from agent.sessions.model import Status

MESSAGES_DIR = Path(__file__).parent / "messages"
ADVICE_FILE = "faults.toml"

# "Authorized": a card was accepted and the connector waits for the plug (status Available).
STATES: tuple[str, ...] = (*(s.value for s in Status), "Authorized")
# SessionEvent reasons of kind "rejected" the display explains; anything else is "other".
REJECT_REASONS = (
    "Invalid",
    "Blocked",
    "Expired",
    "Unknown",
    "PaymentDeclined",
    "Timeout",
    "MeterUnavailable",
    "other",
)


@dataclass(frozen=True)
class Action:
    """Something the driver can do about a fault; driver-fixable ones are offered first."""

    driver_fixable: bool
    placeholders: frozenset[str] = frozenset()


ACTIONS: dict[str, Action] = {
    "replug": Action(driver_fixable=True),
    "check_cable": Action(driver_fixable=True),
    "other_connector": Action(driver_fixable=False, placeholders=frozenset({"connector"})),
    "other_station": Action(driver_fixable=False),
    "wait": Action(driver_fixable=False),
}
ActionId = Literal["replug", "check_cable", "other_connector", "other_station", "wait"]

_NONE: frozenset[str] = frozenset()
KEYS: dict[str, frozenset[str]] = {
    **{f"state.{s}.{part}": _NONE for s in STATES for part in ("headline", "hint")},
    **{f"rejected.{r}": _NONE for r in REJECT_REASONS},
    **{f"action.{a}": spec.placeholders for a, spec in ACTIONS.items()},
    "session.energy": frozenset({"energy"}),
    "session.cost": frozenset({"cost"}),
    "price.title": _NONE,
    "price.energy": frozenset({"price"}),
    "price.time": frozenset({"price"}),
    "price.parking": frozenset({"price"}),
    "price.flat": frozenset({"price"}),
    "price.min": frozenset({"price"}),
    "price.max": frozenset({"price"}),
    "price.excl_vat": _NONE,
    "price.free": _NONE,
    "fault.actions": _NONE,
    "help.hotline": frozenset({"operator", "hotline"}),
    "help.contact": frozenset({"contact"}),
    "report.hint": _NONE,
    "report.received": frozenset({"ticket", "operator"}),
}


class CatalogError(ValueError):
    """The catalog is invalid; `problems` lists every problem, each naming file and key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Meta(_Strict):
    language: str = Field(pattern=r"^[a-z]{2}$")
    name: str = Field(min_length=1, description="the language's own name, for a switch button")


class Format(_Strict):
    decimal: str = Field(min_length=1, max_length=1)
    thousands: str = Field(max_length=1)
    money: str
    symbols: dict[str, str] = Field(default_factory=dict)

    @field_validator("money")
    @classmethod
    def _money(cls, v: str) -> str:
        if _placeholders(v) != {"amount", "currency"}:
            raise ValueError(f"must use exactly {{amount}} and {{currency}}, got {v!r}")
        return v


class Advice(_Strict):
    """What the display says a driver can do about one fault rule."""

    actions: list[ActionId] = Field(default_factory=list)
    show: bool = Field(default=True, description="false: not a driver's concern (not shown)")

    @property
    def driver_fixable(self) -> bool:
        return any(ACTIONS[a].driver_fixable for a in self.actions)


class _AdviceFile(_Strict):
    default: Advice
    rule: dict[str, Advice]


@dataclass(frozen=True)
class Language:
    """One loaded language file."""

    meta: Meta
    style: NumberStyle
    texts: dict[str, str]
    file: str


@dataclass(frozen=True)
class Catalog:
    """All languages, the fault advice, and lookups by language."""

    languages: tuple[str, ...]
    files: dict[str, Language]
    advice: dict[str, Advice]
    default_advice: Advice

    def check_lang(self, lang: str) -> str:
        """`lang` if the catalog has it; ValueError naming the languages it has."""
        if lang not in self.files:
            raise ValueError(
                f"unknown language {lang!r}; the catalog has {', '.join(self.languages)}"
            )
        return lang

    def text(self, lang: str, key: str, **params: Any) -> str:
        """The text of `key` in `lang`, placeholders filled."""
        return self.files[self.check_lang(lang)].texts[key].format(**params)

    def style(self, lang: str) -> NumberStyle:
        """How `lang` writes numbers and money."""
        return self.files[self.check_lang(lang)].style

    def advice_for(self, rule: str) -> Advice:
        """The advice for a fault rule (site rules without an entry get the default)."""
        return self.advice.get(rule, self.default_advice)


def _placeholders(text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        return {f"(bad braces: {e})"}


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            _flatten(v, key + ".", out)
        else:
            out[key] = v


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogError([f"{path.name}: cannot read: {e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogError([f"{path.name}: not valid TOML: {e}"]) from None


def _errors(file: str, e: ValidationError, prefix: str) -> list[str]:
    return [
        f"{file}: {prefix}{'.'.join(str(p) for p in err['loc'])}: "
        + (
            "unknown key"
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, ")
        )
        for err in e.errors()
    ]


def _section(file: str, model: type[_Strict], data: Any, name: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{file}: [{name}]: missing")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems += _errors(file, e, f"{name}.")
        return None


def _language(path: Path) -> tuple[Language | None, list[str]]:
    data = _read(path)
    file = path.name
    problems: list[str] = []
    meta = _section(file, Meta, data.pop("meta", None), "meta", problems)
    fmt = _section(file, Format, data.pop("format", None), "format", problems)
    if meta is not None and meta.language != path.stem:
        problems.append(
            f"{file}: meta.language: is {meta.language!r}, the file name says {path.stem!r}"
        )
    if fmt is not None and fmt.decimal == fmt.thousands:
        problems.append(f"{file}: format.thousands: must differ from the decimal separator")
    texts: dict[str, Any] = {}
    _flatten(data, "", texts)
    for key in sorted(KEYS.keys() - texts.keys()):
        problems.append(f"{file}: {key}: missing")
    for key in sorted(texts.keys() - KEYS.keys()):
        problems.append(f"{file}: {key}: unknown key (not used by the display)")
    for key, text in texts.items():
        if key not in KEYS:
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{file}: {key}: must be a non-empty string")
            continue
        got, want = _placeholders(text), set(KEYS[key])
        if got != want:
            extra, lacking = sorted(got - want), sorted(want - got)
            why = "; ".join(
                [f"unknown placeholder {{{p}}}" for p in extra]
                + [f"placeholder {{{p}}} missing" for p in lacking]
            )
            problems.append(f"{file}: {key}: {why} (expected {sorted(want) or 'none'})")
    if meta is None or fmt is None:
        return None, problems
    style = NumberStyle(fmt.decimal, fmt.thousands, fmt.money, dict(fmt.symbols))
    return Language(meta, style, {k: v for k, v in texts.items() if k in KEYS}, file), problems


def load_catalog(directory: Path = MESSAGES_DIR) -> Catalog:
    """Load and check every language file and the fault advice; CatalogError lists all
    problems found (each naming its file and key)."""
    problems: list[str] = []
    files: dict[str, Language] = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name == ADVICE_FILE:
            continue
        lang, found = _language(path)
        problems += found
        if lang is not None:
            files[lang.meta.language] = lang
    for lang in SHIPPED_LANGUAGES:
        if lang not in files and not any(p.startswith(f"{lang}.toml:") for p in problems):
            problems.append(f"{lang}.toml: missing: the station can be configured to use {lang}")
    advice: _AdviceFile | None = None
    try:
        advice = _AdviceFile.model_validate(_read(directory / ADVICE_FILE))
    except ValidationError as e:
        problems += _errors(ADVICE_FILE, e, "")
    if problems:
        raise CatalogError(problems)
    assert advice is not None
    order = [lang for lang in SHIPPED_LANGUAGES if lang in files]
    order += sorted(set(files) - set(order))
    return Catalog(tuple(order), files, dict(advice.rule), advice.default)


@cache
def default_catalog() -> Catalog:
    """The shipped catalog (loaded once)."""
    return load_catalog()


def check_rules(catalog: Catalog, rules: Mapping[str, Any]) -> list[str]:
    """Problems between the catalog and a fault rule set: a rule without advice in
    faults.toml, advice for no rule, or a rule with no driver text in some catalog language."""
    problems = [
        f"{ADVICE_FILE}: rule.{rid}: no advice for this fault rule (what can the driver do?)"
        for rid in sorted(rules.keys() - catalog.advice.keys())
    ]
    problems += [
        f"{ADVICE_FILE}: rule.{rid}: no fault rule has this id"
        for rid in sorted(catalog.advice.keys() - rules.keys())
    ]
    for rid, rule in sorted(rules.items()):
        texts = rule.driver_message.model_dump()
        for lang in catalog.languages:
            if not str(texts.get(lang) or "").strip():
                problems.append(
                    f"{rule.file or 'rules'}: {rid}: driver_message has no {lang!r} text"
                )
    return problems
