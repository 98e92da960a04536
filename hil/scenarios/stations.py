"""The stations the diagnosis scenarios run on, as station configs.

    tcp        SDM630 meter + Phoenix EV Charge Control on the LAN, one 22 kW connector
               (the demo station)
    reference  SDM630 + the simulator's reference controller (temperature, lock,
               contactor feedback, a code for every EVSE fault)
    abb        ABB B23 meter (it has "not available" markers) + Phoenix
    rtu        the tcp station plus two sub-meters on an RS-485 bus

Ports are free loopback ports (TCP) and the agent end of a serial pair (RTU).
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.config import StationConfig, parse_config
from hil import REFERENCE_EVSE
from hil.procs import free_port

STATIONS = ("tcp", "reference", "abb", "rtu")
EVSE_PROFILE = {
    "tcp": ("phoenix-ev-charge-control", 255),
    "reference": (REFERENCE_EVSE, 1),
    "abb": ("phoenix-ev-charge-control", 255),
    "rtu": ("phoenix-ev-charge-control", 255),
}


def station_config(name: str, **kwargs: object) -> StationConfig:
    """The validated config of station `name` (arguments as station_toml)."""
    return parse_config(station_toml(name, **kwargs), f"{name}.toml")  # type: ignore[arg-type]


def station_toml(
    name: str,
    *,
    rtu_port: str | None = None,
    store: str | None = None,
    timeout_s: float = 0.2,
    retries: int = 1,
    diagnosis: Mapping[str, object] | None = None,
    extra: str = "",
) -> str:
    """The config text of station `name` on free ports (`rtu_port` for the rtu station)."""
    if name not in STATIONS:
        raise ValueError(f"unknown scenario station {name!r}; one of {', '.join(STATIONS)}")
    meter = "abb-b23" if name == "abb" else "eastron-sdm630"
    evse, evse_unit = EVSE_PROFILE[name]
    text = f"""
[station]
id = "HIL-{name.upper()}"

[[bus]]
name = "lan"
kind = "tcp"
timeout_s = {timeout_s}
retries = {retries}

[[device]]
name = "meter1"
profile = "{meter}"
bus = "lan"
host = "127.0.0.1"
port = {free_port()}
unit = 1
interval_s = 1.0

[[device]]
name = "evse1"
profile = "{evse}"
bus = "lan"
host = "127.0.0.1"
port = {free_port()}
unit = {evse_unit}
interval_s = 0.5

[[connector]]
id = 1
evse = "evse1"
meter = "meter1"
max_current_a = 32
phases = 3
"""
    if name == "rtu":
        if rtu_port is None:
            raise ValueError("the rtu station needs rtu_port (the agent end of a serial pair)")
        text += f"""
[[bus]]
name = "rs485"
kind = "rtu"
port = "{rtu_port}"
baudrate = 38400
timeout_s = {timeout_s}
retries = {retries}

[[device]]
name = "meter2"
profile = "eastron-sdm630"
bus = "rs485"
unit = 2
interval_s = 1.0

[[device]]
name = "meter3"
profile = "eastron-sdm630"
bus = "rs485"
unit = 3
interval_s = 1.0
"""
    if store:
        text += f'\n[store]\npath = "{store}"\n'
    if diagnosis:
        text += "\n[diagnosis]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in diagnosis.items())
    return text + extra


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)
