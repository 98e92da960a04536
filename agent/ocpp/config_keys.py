"""OCPP 1.6 configuration keys: the catalog (config_keys.toml), their values and their changes.

A key's value comes from, in order of precedence: what the CSMS set with ChangeConfiguration
(persisted in the store table `ocpp_config`, survives restarts), the config file
(`[ocpp] keys = {...}` plus the settings that map onto keys, see `file_values`), the catalog
default. Other parts read keys through `ctx.parts["config_keys"]`:

    keys = ctx.parts["config_keys"]
    keys.get_int("MeterValueSampleInterval"); keys.get_bool("LocalAuthorizeOffline")
    keys.get_list("MeterValuesSampledData")
    keys.subscribe("MeterValueSampleInterval", callback)   # callback(key, new value string)
    keys.add_readonly("MeterPublicKey1", lambda: "...")      # computed read-only keys
    keys.add_guard("SecurityProfile", check)                 # check(value) -> reason or None
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agent.events import utcnow
from agent.ocpp.metervalues import SUPPORTED_MEASURANDS
from agent.sessions.times import to_us

if TYPE_CHECKING:
    from agent.config import StationConfig
    from agent.store.db import Store

log = structlog.get_logger(__name__)

CATALOG_FILE = Path(__file__).with_name("config_keys.toml")
# Only measurands some device can feed: a CSMS asking for SoC gets Rejected, not silence.
MEASURANDS: tuple[str, ...] = SUPPORTED_MEASURANDS
MAX_VALUE_LEN = 500  # ChangeConfiguration.req value (CiString500)


class KeySpec(BaseModel):
    """One configuration key of the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=50)
    profile: str
    type: Literal["int", "bool", "csl", "option", "string"]
    access: Literal["R", "RW"]
    default: str
    dynamic: bool = False
    min: int | None = None
    max: int | None = None
    unit: str | None = None
    options: list[str] | Literal["measurands"] | None = None
    max_items: int | None = Field(default=None, ge=1)
    reboot: bool = False

    @property
    def readonly(self) -> bool:
        """The CSMS may not change it."""
        return self.access == "R"

    def allowed(self) -> tuple[str, ...] | None:
        """Members a csl/option value may use (None: any)."""
        if self.options == "measurands":
            return MEASURANDS
        return tuple(self.options) if self.options else None

    def normalize(self, value: str) -> str:
        """The value in canonical form; ValueError saying why it is invalid."""
        if len(value) > MAX_VALUE_LEN:
            raise ValueError(f"longer than {MAX_VALUE_LEN} characters")
        if self.type == "bool":
            low = value.strip().lower()
            if low not in ("true", "false"):
                raise ValueError(f"must be true or false, got {value!r}")
            return low
        if self.type == "int":
            try:
                n = int(value.strip())
            except ValueError:
                raise ValueError(f"must be an integer, got {value!r}") from None
            if self.min is not None and n < self.min:
                raise ValueError(f"must be >= {self.min}, got {n}")
            if self.max is not None and n > self.max:
                raise ValueError(f"must be <= {self.max}, got {n}")
            return str(n)
        allowed = self.allowed()
        if self.type == "option":
            if allowed and value not in allowed:
                raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
            return value
        if self.type == "csl":
            items = [v.strip() for v in value.split(",") if v.strip()]
            if self.max_items is not None and len(items) > self.max_items:
                raise ValueError(f"at most {self.max_items} items, got {len(items)}")
            bad = [v for v in items if allowed and v not in allowed]
            if bad:
                raise ValueError(f"unknown item(s) {', '.join(bad)}")
            return ",".join(items)
        return value


class _Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: list[KeySpec]


@cache
def catalog() -> dict[str, KeySpec]:
    """The catalog by key name (loaded once; a broken file raises at startup)."""
    data = tomllib.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    keys = _Catalog.model_validate(data).key
    out = {k.name: k for k in keys}
    if len(out) != len(keys):
        raise ValueError(f"{CATALOG_FILE.name}: duplicate key names")
    return out


def check_file_keys(values: dict[str, str]) -> list[str]:
    """Problems with `[ocpp] keys` of the config file (unknown, read-only, invalid value)."""
    problems = []
    for name, value in values.items():
        spec = catalog().get(name)
        if spec is None:
            problems.append(f"keys.{name}: not a configuration key evedge supports")
        elif spec.readonly or spec.dynamic:
            problems.append(f"keys.{name}: read-only, it cannot be set")
        else:
            try:
                spec.normalize(value)
            except ValueError as e:
                problems.append(f"keys.{name}: {e}")
    return problems


def file_values(cfg: StationConfig) -> dict[str, str]:
    """Key values the config file gives: settings that map onto keys, then `[ocpp] keys`."""
    out: dict[str, str] = {
        "AuthorizationCacheEnabled": _b(cfg.auth.cache_enabled),
        "AllowOfflineTxForUnknownId": _b(cfg.auth.allow_offline_unknown),
        "NumberOfConnectors": str(len(cfg.connector)),
    }
    if cfg.billing is not None:
        out["MeterValueSampleInterval"] = str(round(cfg.billing.sampling.interval_s))
    if cfg.ocpp is not None:
        out["HeartbeatInterval"] = str(cfg.ocpp.heartbeat_interval_s)
        out["SecurityProfile"] = str(cfg.ocpp.security_profile)
        out["WebSocketPingInterval"] = str(round(cfg.ocpp.ping_interval_s))
        out.update(cfg.ocpp.keys)
    return out


def _b(v: bool) -> str:
    return "true" if v else "false"


class ChangeStatus(StrEnum):
    """ChangeConfiguration.conf status."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"
    NOT_SUPPORTED = "NotSupported"


@dataclass(frozen=True)
class KeyValue:
    """One entry of GetConfiguration.conf's configurationKey list."""

    key: str
    readonly: bool
    value: str | None


Callback = Callable[[str, str], Any]


class ConfigKeys:
    """The charge point's configuration keys; see the module docstring."""

    def __init__(self, cfg: StationConfig, store: Store):
        self.store = store
        self._specs = catalog()
        self._file = {k: self._specs[k].normalize(v) for k, v in file_values(cfg).items()}
        self._set: dict[str, str] = {}
        self._readonly: dict[str, Callable[[], str]] = {}
        self._guards: dict[str, Callable[[str], str | None]] = {}
        self._subs: dict[str, list[Callback]] = {}

    def load(self) -> None:
        """Read the CSMS-set values from the store (blocking; call once at startup)."""
        with self.store.reading() as c:
            rows = c.execute("SELECT key, value FROM ocpp_config").fetchall()
        for key, value in rows:
            spec = self._specs.get(key)
            if spec is None or spec.readonly:
                log.warning("ocpp.config_key_ignored", key=key, reason="no longer supported")
                continue
            self._set[key] = value

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> str | None:
        """The value as OCPP string; None for a key evedge does not know."""
        if key in self._readonly:
            return self._readonly[key]()
        spec = self._specs.get(key)
        if spec is None:
            return None
        return self._set.get(key, self._file.get(key, spec.default))

    def _known(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(f"unknown configuration key {key!r}")
        return value

    def get_int(self, key: str) -> int:
        """An int key's value (KeyError for an unknown key)."""
        return int(self._known(key))

    def get_bool(self, key: str) -> bool:
        """A bool key's value."""
        return self._known(key) == "true"

    def get_list(self, key: str) -> list[str]:
        """A comma-separated-list key's members."""
        return [v for v in self._known(key).split(",") if v]

    def configuration(self, keys: list[str] | None) -> tuple[list[KeyValue], list[str]]:
        """GetConfiguration: (known keys with values, unknown key names); all keys if None."""
        names = keys if keys else [*self._specs, *self._readonly]
        known, unknown = [], []
        for name in names:
            value = self.get(name)
            if value is None:
                unknown.append(name)
                continue
            spec = self._specs.get(name)
            readonly = spec is None or spec.readonly
            known.append(KeyValue(name, readonly, value))
        return known, unknown

    # ------------------------------------------------------------------ extending

    def add_readonly(self, key: str, value: Callable[[], str]) -> None:
        """A computed read-only key (e.g. MeterPublicKey<connectorId>)."""
        self._readonly[key] = value

    def add_guard(self, key: str, check: Callable[[str], str | None]) -> None:
        """An extra check of a new value: `check(value)` returns why it is refused, or None."""
        self._guards[key] = check

    def subscribe(self, key: str, callback: Callback) -> None:
        """Call `callback(key, value)` (sync or async) after the key changed."""
        self._subs.setdefault(key, []).append(callback)

    # ------------------------------------------------------------------ changing

    async def change(self, key: str, value: str) -> ChangeStatus:
        """ChangeConfiguration: validate, persist, notify; the status to answer."""
        spec = self._specs.get(key)
        if spec is None and key not in self._readonly:
            log.info("ocpp.config_change", key=key[:50], status="NotSupported")
            return ChangeStatus.NOT_SUPPORTED
        if spec is None or spec.readonly:
            log.info("ocpp.config_change", key=key, status="Rejected", reason="read-only")
            return ChangeStatus.REJECTED
        try:
            norm = spec.normalize(value)
        except ValueError as e:
            log.info("ocpp.config_change", key=key, status="Rejected", reason=str(e)[:200])
            return ChangeStatus.REJECTED
        guard = self._guards.get(key)
        reason = guard(norm) if guard is not None else None
        if reason:
            log.warning("ocpp.config_change", key=key, status="Rejected", reason=reason)
            return ChangeStatus.REJECTED
        await asyncio.to_thread(self._persist, key, norm)
        self._set[key] = norm
        status = ChangeStatus.REBOOT_REQUIRED if spec.reboot else ChangeStatus.ACCEPTED
        log.info("ocpp.config_change", key=key, value=norm, status=status.value)
        for cb in self._subs.get(key, ()):
            try:
                out = cb(key, norm)
                if inspect.isawaitable(out):
                    await out
            except Exception:
                log.exception("ocpp.config_subscriber_failed", key=key)
        return status

    def _persist(self, key: str, value: str) -> None:
        with self.store.tx() as c:
            c.execute(
                "INSERT INTO ocpp_config (key, value, updated_ts) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_ts = excluded.updated_ts",
                (key, value, to_us(utcnow())),
            )
