"""Build the station's links, devices and pollers from its config."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.bus import EventBus
from agent.config import BusConfig, StationConfig
from agent.poller import HealthTracker, LinkPoller, PolledDevice
from drivers.device import Device
from drivers.profile import load_profile
from drivers.transport import Link, SerialSettings, TcpSettings


@dataclass
class Station:
    """The station's devices, grouped by the link that carries them."""

    cfg: StationConfig
    bus: EventBus
    pollers: list[LinkPoller] = field(default_factory=list)
    devices: dict[str, Device] = field(default_factory=dict)
    health: dict[str, HealthTracker] = field(default_factory=dict)


def make_link(bus: BusConfig, host: str | None = None, port: int = 502, name: str = "") -> Link:
    """A link for a bus: its serial port (rtu) or one TCP endpoint (tcp)."""
    delay = None if bus.inter_request_delay_ms is None else bus.inter_request_delay_ms / 1000
    if bus.kind == "rtu":
        assert bus.port is not None
        settings: SerialSettings | TcpSettings = SerialSettings(
            bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize
        )
    else:
        assert host is not None
        settings = TcpSettings(host, port)
    return Link(settings, timeout_s=bus.timeout_s, inter_request_delay_s=delay, name=name)


def build_station(cfg: StationConfig, bus: EventBus) -> Station:
    """One LinkPoller per serial bus and per TCP endpoint, each owning its devices."""
    station = Station(cfg, bus)
    groups: dict[tuple, list[PolledDevice]] = {}
    links: dict[tuple, Link] = {}
    for d in cfg.device:
        bcfg = cfg.bus_by_name(d.bus)
        key = (bcfg.name,) if bcfg.kind == "rtu" else (bcfg.name, d.host, d.port)
        if key not in links:
            links[key] = make_link(bcfg, d.host, d.port)
        link = links[key]
        device = Device(d.name, load_profile(d.profile), link, d.unit, retries=bcfg.retries)
        tracker = HealthTracker(d.name, bcfg.name, offline_after=d.offline_after)
        groups.setdefault(key, []).append(PolledDevice(device, d.interval_s, tracker))
        station.devices[d.name] = device
        station.health[d.name] = tracker
    for key, polled in groups.items():
        station.pollers.append(LinkPoller(links[key], polled, bus, key[0]))
    return station
