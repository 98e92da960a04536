"""Station configuration: one TOML file, validated by pydantic.

Errors name the file, the field path and the problem, e.g.
`station.toml: device[2].unit: must be 1..247 on an RTU bus, got 300`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.api.config import ApiConfig
from agent.diagnosis.config import DiagnosisConfig
from agent.driver.config import DriverConfig
from agent.kpi.config import KpiConfig
from agent.mqtt.config import MqttConfig
from agent.ocpp.config import OcppConfig
from agent.sessions.config import AuthConfig, BillingConfig, SessionsConfig
from agent.update.config import UpdateConfig
from drivers import tomlfile
from drivers.profile import ProfileError, load_profile

check_file_path = tomlfile.check_path


class ConfigError(ValueError):
    """The station config is invalid; `problems` lists every (path, message) found."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {path}: {msg}" for path, msg in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationInfo(_Section):
    id: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")
    name: str = ""


class BusConfig(_Section):
    """A Modbus line: an RS-485 port (rtu) or the LAN (tcp)."""

    name: str = Field(min_length=1)
    kind: Literal["rtu", "tcp"]
    port: str | None = Field(default=None, description="serial device, rtu only")
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=10)
    inter_request_delay_ms: float | None = Field(
        default=None, ge=0, description="gap between requests; default 3.5 characters (RTU)"
    )


class DeviceConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    profile: str
    bus: str
    unit: int = Field(ge=0, le=255)
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    interval_s: float = Field(default=1.0, gt=0, le=3600)
    offline_after: int = Field(default=3, ge=1, description="consecutive failed polls")


class ConnectorConfig(_Section):
    id: int = Field(ge=1, le=99)
    evse: str | None = None
    meter: str | None = None
    max_current_a: float = Field(default=32, ge=6, le=80)
    phases: Literal[1, 3] = 3


class StoreConfig(_Section):
    path: Path = Path("/var/lib/evedge/evedge.db")
    readings_max_rows: int = Field(default=500_000, ge=1000, description="readings ring size")
    readings_max_age_days: float = Field(default=14, gt=0)
    min_free_disk_mb: float = Field(
        default=50, ge=0, le=1e6, description="below this free, telemetry stops: room for billing"
    )
    reserve_mb: float = Field(
        default=8, ge=0, le=1e4, description="billing reserve file, released when the disk fills"
    )
    readings_commit_s: float = Field(
        default=1, gt=0, le=60, description="readings ring: one commit per this many seconds"
    )
    readings_keep_s: float = Field(
        default=60,
        ge=0,
        le=3600,
        description="readings ring: a value within its deadband is stored again after this"
        " many seconds (0: store every reading)",
    )
    readings_deadband_pct: float = Field(
        default=1.0, ge=0, le=100, description="readings ring: relative deadband, % of the value"
    )
    readings_deadband: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"*_wh": 10.0, "*_varh": 10.0},
        description="readings ring: absolute deadband by quantity or pattern (in its unit),"
        " instead of the %",
    )

    @field_validator("path")
    @classmethod
    def _usable_path(cls, v: Path) -> Path:
        return Path(check_file_path(str(v)))


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class SimConfig(_Section):
    """The simulated station (hil/) behind `evedge demo` and `evedge sim`."""

    control_port: int = Field(default=15020, ge=1, le=65535)
    ev_max_current_a: float = Field(default=32, gt=0)
    ev_phases: Literal[1, 3] = 3
    plugged_s: float = Field(default=40, gt=0, description="demo: how long each car charges")
    pause_s: float = Field(default=8, ge=0, description="demo: gap between cars")
    voltage_v: float = Field(default=230.0, gt=0)


class StationConfig(_Section):
    station: StationInfo
    bus: list[BusConfig] = Field(default_factory=list)
    device: list[DeviceConfig] = Field(default_factory=list)
    connector: list[ConnectorConfig] = Field(default_factory=list)
    store: StoreConfig = StoreConfig()
    log: LogConfig = LogConfig()
    sim: SimConfig = SimConfig()
    billing: BillingConfig | None = None  # absent: no session engine (polling only)
    sessions: SessionsConfig = SessionsConfig()
    auth: AuthConfig = AuthConfig()
    diagnosis: DiagnosisConfig = Field(default_factory=DiagnosisConfig)
    driver: DriverConfig | None = None  # absent: no driver display service
    api: ApiConfig | None = None  # absent: no local API (the CLI reads the store)
    ocpp: OcppConfig | None = None  # absent: no OCPP connection
    mqtt: MqttConfig | None = None  # absent: no MQTT cloud sync
    kpi: KpiConfig = Field(default_factory=KpiConfig)  # availability KPIs (agent/kpi)
    update: UpdateConfig = Field(default_factory=UpdateConfig)  # signed self-update

    def bus_by_name(self, name: str) -> BusConfig:
        return next(b for b in self.bus if b.name == name)

    def device_by_name(self, name: str) -> DeviceConfig:
        return next(d for d in self.device if d.name == name)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _short(value: object, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error names a bad value, never pastes it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    ctx = err.get("ctx", {})
    got = _short(err.get("input"))
    bounds = {"greater_than_equal": "ge", "less_than_equal": "le", "greater_than": "gt"}
    if kind in bounds and not isinstance(got, dict):
        return f"{msg.lower()}, got {got}"
    if kind == "missing":
        return "required"
    if ctx and "expected" in ctx:
        return f"must be {ctx['expected']}, got {got}"
    return msg.removeprefix("Value error, ")


def _cross_check(cfg: StationConfig) -> list[tuple[str, str]]:
    """Checks that span sections: names, references, profile kinds, addressing."""
    problems: list[tuple[str, str]] = []
    buses = {}
    for i, b in enumerate(cfg.bus):
        if b.name in buses:
            problems.append((f"bus[{i}].name", f"duplicate bus name {b.name!r}"))
        buses[b.name] = b
        if b.kind == "rtu" and not b.port:
            problems.append((f"bus[{i}].port", "required for an rtu bus (e.g. /dev/ttyUSB0)"))
        if b.kind == "tcp" and b.port:
            problems.append(
                (f"bus[{i}].port", "a tcp bus has no serial port; set host/port per device")
            )
    kinds: dict[str, str] = {}
    rtu_units: dict[tuple[str, int], str] = {}
    for i, d in enumerate(cfg.device):
        where = f"device[{i}]"
        if d.name in kinds:
            problems.append((f"{where}.name", f"duplicate device name {d.name!r}"))
        try:
            kinds[d.name] = load_profile(d.profile).kind
        except ProfileError as e:
            problems.append((f"{where}.profile", str(e)))
            kinds[d.name] = "?"
        bus = buses.get(d.bus)
        if bus is None:
            problems.append((f"{where}.bus", f"no bus named {d.bus!r}; have {sorted(buses)}"))
            continue
        if bus.kind == "rtu":
            if not 1 <= d.unit <= 247:
                problems.append((f"{where}.unit", f"must be 1..247 on an RTU bus, got {d.unit}"))
            if d.host:
                problems.append((f"{where}.host", "a device on an rtu bus has no host"))
            other = rtu_units.setdefault((d.bus, d.unit), d.name)
            if other != d.name:
                problems.append(
                    (f"{where}.unit", f"unit {d.unit} already used by {other} on {d.bus}")
                )
        elif not d.host:
            problems.append((f"{where}.host", "required for a device on a tcp bus"))
    ids = set()
    for i, c in enumerate(cfg.connector):
        where = f"connector[{i}]"
        if c.id in ids:
            problems.append((f"{where}.id", f"duplicate connector id {c.id}"))
        ids.add(c.id)
        if not c.evse and not c.meter:
            problems.append((where, "needs an evse, a meter, or both"))
        for role in ("evse", "meter"):
            name = getattr(c, role)
            if name is None:
                continue
            if name not in kinds:
                problems.append((f"{where}.{role}", f"no device named {name!r}"))
            elif kinds[name] not in (role, "?"):
                what = {"evse": "an EVSE controller", "meter": "a meter"}
                problems.append(
                    (f"{where}.{role}", f"{name} is {what[kinds[name]]}, not {what[role]}")
                )
    return problems


def _nul_strings(value: object, loc: tuple) -> list[tuple]:
    """Locations of strings holding a NUL (legal in TOML escapes, never meaningful here,
    and fatal to any path or name passed to the OS)."""
    if isinstance(value, str):
        return [loc] if "\x00" in value else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nul_strings(v, (*loc, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nul_strings(v, (*loc, i))]
    return []


def parse_config(text: str, file: str = "station.toml") -> StationConfig:
    """Parse and validate config text; raises ConfigError naming `file`."""
    try:
        data = tomlfile.loads(text, file)
    except tomlfile.TomlFileError as e:
        raise ConfigError(file, [("(syntax)", str(e).removeprefix(f"{file}: "))]) from None
    try:
        nul = [(_path(loc), "contains a NUL byte") for loc in _nul_strings(data, ())]
        if nul:
            raise ConfigError(file, nul)
        cfg = StationConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            file, [(_path(err["loc"]), _message(err)) for err in e.errors()]
        ) from None
    except RecursionError:
        raise ConfigError(file, [("(top)", "values nested too deeply")]) from None
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(file, problems)
    return cfg


def load_config(path: str | Path) -> StationConfig:
    """Load and validate a station config file."""
    p = Path(path)
    try:
        text = tomlfile.read_text(p)
    except tomlfile.TomlFileError as e:
        raise ConfigError(p.name, [("(file)", str(e))]) from None
    return parse_config(text, p.name)
