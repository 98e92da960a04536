"""The simulated station: every device of a config, its physics, its servers, its faults.

    sim = SimStation(cfg)              # TCP devices at their configured host/port
    await sim.start()
    sim.plug_in(1)                     # a car arrives at connector 1
    fid = sim.inject({"kind": "no_response", "device": "meter1"})
    sim.clear(fid)
    await sim.stop()

A tick task (10 Hz by default) advances the model in real time; with `tick_s=None` the
caller drives it with `step(dt)`, which is how tests make time pass without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel
from pymodbus.constants import ExcCodes

from agent.config import ConnectorConfig, DeviceConfig, StationConfig
from drivers.codec import DecodeError, Value
from drivers.profile import OcmfSigning, Profile, load_profile
from hil import faults as F
from hil.image import DeviceImage
from hil.models import (
    BASE_LOAD_A,
    BASE_POWER_FACTOR,
    EV,
    EV_POWER_FACTOR,
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    Evse,
    EvseFaultFlags,
    Meter,
    Noise,
    Supply,
    charge_step,
    electrical_values,
)
from hil.server import RoutingContext, ServedDevice, SimRtuServer, SimTcpServer, start_server
from hil.signing_meter import SimSigningMeter, meter_key

log = logging.getLogger(__name__)

ENERGY_QUANTITIES = frozenset(
    {
        "energy_import_wh",
        "energy_export_wh",
        "energy_total_wh",
        "energy_session_wh",
        "energy_import_l1_wh",
        "energy_import_l2_wh",
        "energy_import_l3_wh",
        "reactive_energy_import_varh",
        "reactive_energy_export_varh",
    }
)
# A corrupted counter shifts the totals; the per-phase and reactive registers are separate.
OFFSET_QUANTITIES = ("energy_import_wh", "energy_total_wh", "energy_session_wh")
PP_CODINGS_A = (13, 20, 32, 63)  # IEC 61851-1 PP resistor codings

# Vendor words for mapped state registers, best first; the first one a profile's map
# knows is served (exact match, then substring). Unknown vocabularies are left alone.
CHARGER_WORDS: dict[str, tuple[str, ...]] = {
    "error": ("error", "fault", "faulted"),
    "charging": ("charging",),
    "suspended_ev": ("suspended_ev", "suspended", "ready"),  # offered, the car pauses
    "suspended_evse": ("suspended_evse", "not_ready", "waiting", "suspended"),  # not offered
    "connected": ("connected", "plugged", "occupied", "not_ready"),  # car does not request
    "idle": ("available", "idle", "not_connected", "unplugged", "not_ready"),
}
CABLE_WORDS: dict[str, tuple[str, ...]] = {
    "locked": ("plugged_station_ev_locked", "ev_locked", "plugged_locked", "locked", "plugged"),
    "unlocked": ("plugged_station_ev", "plugged_ev", "plugged", "connected"),
    "unplugged": ("unplugged", "no_cable", "none", "disconnected", "not_connected"),
}
LOCK_WORDS: dict[str, tuple[str, ...]] = {
    "locked": ("locked",),
    "failed": ("error", "fault", "failed", "unlocked"),
    "unlocked": ("unlocked", "open", "released"),
}
# IEC 61851 states some controllers fold together (Bender: one code for E and F).
CP_FALLBACK = {"E": "F", "F": "E"}
SIM_FIRMWARE = "1.0-sim"  # MF of a simulated signing meter


class SimError(ValueError):
    """A control request the station cannot carry out; the message says why."""


@dataclass
class SimDevice:
    """One simulated device: config, profile, register image and its own meter readings."""

    cfg: DeviceConfig
    profile: Profile
    image: DeviceImage
    meter: Meter
    connector: int | None  # the connector whose flow it measures, if any
    supply: Supply  # the supply it sees (its connector's, or its own)
    connectors: list[int] = field(default_factory=list)  # all whose flow it measures
    electrical: dict[str, float] = field(default_factory=dict)
    session_start_wh: int = 0
    session_wh: int = 0
    warned: set[str] = field(default_factory=set)
    published: list[str] = field(default_factory=list)  # quantities the model writes, in order
    noise_v: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # reading factors
    noise_i: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    answers_left: int = 0  # answers guaranteed after a one-off lost answer (noise)

    @property
    def name(self) -> str:
        """The device name from the config."""
        return self.cfg.name


@dataclass
class SimConnector:
    """One charging point: the car, the EVSE logic, the supply, and the devices on it."""

    cfg: ConnectorConfig
    ev: EV
    evse: Evse
    supply: Supply
    devices: list[str]
    voltages: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    currents: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    frequency_hz: float = 0.0
    noise_a: float = 0.0
    # Communication failsafe (Keba 5018, Bender 132): once the agent sets a timeout, the
    # controller drops to the failsafe current when no write arrives within it.
    failsafe_timeout_s: float = 0.0
    failsafe_current_a: float = 0.0
    last_write_s: float = 0.0


class SimStation:
    """Images, models and Modbus servers for every device of `cfg`.

    `serial_ports` maps an rtu bus name to the simulator's end of a serial pair (TCP
    devices are served at their configured host/port). `wire_timing` delays RTU answers
    by their time on the wire at the bus baud rate. `seed` makes noise and serials
    reproducible. `tick_s` is the model period in real time (None: call step() yourself).
    `strict_addresses` overrides the per-profile default (strict when max_gap is 0).
    `noise` adds realistic measurement noise, answer jitter and one-off lost answers.
    """

    def __init__(
        self,
        cfg: StationConfig,
        serial_ports: dict[str, str] | None = None,
        wire_timing: bool = False,
        seed: int = 0,
        *,
        tick_s: float | None = 0.1,
        strict_addresses: bool | None = None,
        noise: Noise | None = None,
    ):
        self.cfg = cfg
        self.serial_ports = dict(serial_ports or {})
        self.wire_timing = wire_timing
        self.seed = seed
        self.tick_s = tick_s
        self.time_s = 0.0
        self.faults = F.FaultSet()
        self.noise = noise or Noise()
        self._rng = random.Random(f"{seed}:station")
        self._noise_rng = random.Random(f"{seed}:noise")
        self.answers_lost = 0  # one-off lost answers the noise caused so far
        self._servers: list[SimTcpServer | SimRtuServer] = []
        self._tick_task: asyncio.Task[None] | None = None

        self.connectors: dict[int, SimConnector] = {}
        supply_of: dict[str, Supply] = {}  # device -> the supply its connector(s) share
        for c in cfg.connector:
            members = [n for n in (c.evse, c.meter) if n]
            # Connectors behind one shared device hang off one supply.
            supply = next((supply_of[n] for n in members if n in supply_of), None) or Supply(
                cfg.sim.voltage_v, random.Random(f"{seed}:connector:{c.id}")
            )
            supply_of.update(dict.fromkeys(members, supply))
            evse = Evse(hw_max_current_a=c.max_current_a, phases=c.phases)
            evse_profile = load_profile(cfg.device_by_name(c.evse).profile) if c.evse else None
            writes = (
                {r.quantity for r in evse_profile.registers if r.writable}
                if evse_profile
                else set()
            )
            # A controller the agent can switch starts switched off; a dumb charger (or
            # one with no enable flag) is on and offers what it can.
            evse.enabled = "charging_enabled" not in writes
            evse.offered_current_a = 0.0 if "offered_current_a" in writes else c.max_current_a
            # Only a controller with a contactor register has an auxiliary contact to see a
            # welded (or stuck-open) contactor by; the others cannot tell, nor report it.
            evse.contactor_feedback = evse_profile is not None and any(
                r.quantity == "contactor_closed" for r in evse_profile.readable()
            )
            self.connectors[c.id] = SimConnector(c, EV(), evse, supply, members)

        where: dict[str, list[int]] = {}
        for c in cfg.connector:
            for n in (c.evse, c.meter):
                if n:
                    where.setdefault(n, []).append(c.id)
        self.devices: dict[str, SimDevice] = {}
        for d in cfg.device:
            profile = load_profile(d.profile)
            cids = where.get(d.name, [])
            cid = cids[0] if cids else None
            supply = (
                self.connectors[cid].supply
                if cid is not None
                else Supply(cfg.sim.voltage_v, random.Random(f"{seed}:supply:{d.name}"))
            )
            strict = (
                strict_addresses if strict_addresses is not None else profile.limits.max_gap == 0
            )
            limit = profile.limits.max_registers
            image = DeviceImage(
                profile,
                strict_addresses=strict,
                max_request=limit if limit < 125 else None,
                single_value_reads=profile.limits.single_value_reads,
            )
            dev = SimDevice(d, profile, image, self._initial_meter(d.name), cid, supply, cids)
            dev.published = [q for q in image.owned_quantities() if q not in image.views]
            image.on_write = lambda q, v, dev=dev: self._on_write(dev, q, v)
            self._set_identity(dev)
            if profile.signing is not None:
                image.extension = self._signing_meter(dev, profile.signing)
            self.devices[d.name] = dev
        self.step(0.0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every Modbus server and the tick task; RuntimeError if one can't listen."""
        comm = lambda name: self.faults.on_device(name, F.COMM_FAULTS)  # noqa: E731
        tcp: dict[tuple[str, int], list[ServedDevice]] = {}
        rtu: dict[str, list[ServedDevice]] = {}
        for dev in self.devices.values():
            served = ServedDevice(dev.name, dev.cfg.unit, dev.image)
            bus = self.cfg.bus_by_name(dev.cfg.bus)
            if bus.kind == "tcp":
                group = tcp.setdefault((dev.cfg.host or "127.0.0.1", dev.cfg.port), [])
            else:
                group = rtu.setdefault(bus.name, [])
            if any(s.unit == served.unit for s in group):
                raise SimError(f"{dev.name}: unit {served.unit} is served twice on one endpoint")
            group.append(served)
        for name in rtu:
            if name not in self.serial_ports:
                raise SimError(
                    f"rtu bus {name!r} needs a serial port for the simulator: pass "
                    f"serial_ports={{{name!r}: path}} (the sim end of a hil.serial_pair.SerialPair)"
                )
        try:
            for (host, port), served in tcp.items():
                ctx = RoutingContext(served, comm, rtu=False, noise=self._answer_noise)
                srv = SimTcpServer(ctx, host, port, self.seed)
                self._servers.append(srv)
                await start_server(srv, f"tcp {host}:{port}")
            for name, served in rtu.items():
                bus = self.cfg.bus_by_name(name)
                srv = SimRtuServer(
                    RoutingContext(served, comm, rtu=True, noise=self._answer_noise),
                    self.serial_ports[name],
                    baudrate=bus.baudrate,
                    parity=bus.parity,
                    stopbits=bus.stopbits,
                    bytesize=bus.bytesize,
                    wire_timing=self.wire_timing,
                    seed=self.seed,
                )
                self._servers.append(srv)
                await start_server(srv, f"serial {self.serial_ports[name]} (bus {name})")
        except BaseException:
            await self.stop()
            raise
        if self.tick_s is not None:
            self._tick_task = asyncio.create_task(self._ticker(self.tick_s), name="sim tick")

    async def stop(self) -> None:
        """Stop the tick task and every server; safe to call twice."""
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        servers, self._servers = self._servers, []
        for srv in servers:
            await srv.shutdown()

    async def __aenter__(self) -> SimStation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _ticker(self, period: float) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            try:
                self.step(now - last)
            except Exception:  # keep serving; a model bug shows in the log, not as silence
                log.exception("simulator tick failed")
            last = now

    # --------------------------------------------------------------------- model

    def step(self, dt: float) -> None:
        """Advance the model by `dt` seconds (0: re-derive state without time passing)
        and publish every device's values into its register image."""
        dt = max(0.0, dt)
        self.time_s += dt
        self._apply_faults()
        advanced: set[int] = set()
        for conn in self.connectors.values():
            if dt > 0:
                if id(conn.supply) not in advanced:  # a shared supply moves once per tick
                    conn.supply.advance()
                    advanced.add(id(conn.supply))
                conn.noise_a = self._rng.uniform(-0.03, 0.03)
            expired = (
                conn.failsafe_timeout_s > 0
                and self.time_s - conn.last_write_s > conn.failsafe_timeout_s
            )
            conn.evse.limit_a = conn.failsafe_current_a if expired else None
            volts = conn.supply.voltages(conn.currents)
            conn.currents = charge_step(conn.evse, conn.ev, volts, dt, conn.noise_a)
            conn.voltages = conn.supply.voltages(conn.currents)
            conn.frequency_hz = conn.supply.frequency(conn.voltages)
        for dev in self.devices.values():
            if dev.connectors:
                flows = [self.connectors[c] for c in dev.connectors]
                amps = [round(sum(f.currents[k] for f in flows), 2) for k in range(3)]
                volts = dev.supply.voltages(amps)
                hz, pf = dev.supply.frequency(volts), EV_POWER_FACTOR
            else:
                if dt > 0:
                    dev.supply.advance()
                load = BASE_LOAD_A if dev.profile.kind == "meter" else (0.0, 0.0, 0.0)
                volts = dev.supply.voltages(list(load))
                amps = [a if v > 0 else 0.0 for a, v in zip(load, volts, strict=True)]
                hz, pf = dev.supply.frequency(volts), BASE_POWER_FACTOR
            volts, amps = self._noisy(dev, volts, amps, dt)
            dev.electrical = electrical_values(volts, amps, pf, hz)
            dev.meter.integrate(dev.electrical, dt)
            if dev.connector is not None and self.connectors[dev.connector].ev.plugged:
                dev.session_wh = dev.meter.import_wh - dev.session_start_wh
            self._publish(dev)

    def _noisy(
        self, dev: SimDevice, volts: list[float], amps: list[float], dt: float
    ) -> tuple[list[float], list[float]]:
        """The device's own reading of voltages and currents (noise redrawn per tick)."""
        n = self.noise
        if not (n.voltage_pct or n.current_ripple_pct):
            return volts, amps
        if dt > 0:
            rng = self._noise_rng
            dev.noise_v = [1 + rng.uniform(-1, 1) * n.voltage_pct / 100 for _ in range(3)]
            dev.noise_i = [1 + rng.uniform(-1, 1) * n.current_ripple_pct / 100 for _ in range(3)]
        return (
            [round(v * f, 1) for v, f in zip(volts, dev.noise_v, strict=True)],
            [round(a * f, 2) for a, f in zip(amps, dev.noise_i, strict=True)],
        )

    def _answer_noise(self, name: str) -> tuple[bool, float]:
        """(lose this answer, extra delay s) for one request to device `name`."""
        n, dev = self.noise, self.devices[name]
        rng = self._noise_rng
        delay = rng.uniform(0, n.jitter_s) if n.jitter_s else 0.0
        if dev.answers_left > 0:
            dev.answers_left -= 1
            return False, delay
        if n.drop_rate and rng.random() < n.drop_rate:
            dev.answers_left = n.recover_requests  # one-off: it recovers at once
            self.answers_lost += 1
            return True, delay
        return False, delay

    def _apply_faults(self) -> None:
        """Rebuild the fault flags of every EVSE and supply from the active faults."""
        supplies: dict[int, tuple[Supply, list[F.ActiveFault]]] = {}
        for cid, conn in self.connectors.items():
            flags = EvseFaultFlags()
            for f in self.faults.on_connector(cid, F.EVSE_FAULT_KINDS):
                req = f.request
                match req.kind:
                    case "cp_state_e":
                        flags.pilot_short = True
                    case "cp_state_f":
                        flags.unavailable = True
                    case "welded_contactor":
                        flags.welded = True
                        flags.ev_keeps_drawing = req.ev_keeps_drawing
                    case "contactor_stuck_open":
                        flags.stuck_open = True
                    case "over_temperature":
                        flags.over_temperature_c = req.temperature_c
                    case "rcd_trip":
                        flags.rcd_trip = True
                    case "lock_failure":
                        flags.lock_failure = True
                    case "diode_fault":
                        flags.diode_fault = True
                    case "ev_overcurrent":
                        flags.ev_overcurrent_a = req.current_a
            conn.evse.faults = flags
            entry = supplies.setdefault(id(conn.supply), (conn.supply, []))
            entry[1].extend(self.faults.on_connector(cid, F.SUPPLY_FAULTS))
        for dev in self.devices.values():
            if dev.connector is None:
                supplies[id(dev.supply)] = (
                    dev.supply,
                    self.faults.on_device(dev.name, F.SUPPLY_FAULTS),
                )
        for supply, active in supplies.values():
            self._apply_supply(supply, active)

    @staticmethod
    def _apply_supply(supply: Supply, active: list[F.ActiveFault]) -> None:
        sf = supply.faults
        sf.lost.clear()
        sf.offset_v[:] = [0.0, 0.0, 0.0]
        sf.outage = False
        sf.offset_hz = 0.0
        for f in {id(f): f for f in active}.values():  # once, even if two connectors share it
            req = f.request
            phases = [req.phase - 1] if getattr(req, "phase", None) else [0, 1, 2]
            if req.kind == "supply_outage":
                sf.outage = True
            elif req.kind == "frequency_deviation":
                sf.offset_hz += req.hz
            elif req.kind == "voltage_loss":
                sf.lost.update(phases)
            else:
                sign = -1.0 if req.kind == "voltage_sag" else 1.0
                for k in phases:
                    sf.offset_v[k] += sign * req.volts

    # ------------------------------------------------------------- publishing

    def _energies(self, dev: SimDevice, skip: str | None = None) -> dict[str, int]:
        """The energy registers' values: true counters, then this device's energy faults."""
        values: dict[str, int] = dict(dev.meter.energy_values())
        values["energy_session_wh"] = dev.session_wh
        for f in self.faults.on_device(dev.name, F.ENERGY_FAULTS):
            if f.id == skip:
                continue
            req = f.request
            if req.kind == "energy_frozen":
                values.update(f.captured.get(dev.name, {}))
            else:
                delta = req.wh if req.kind == "energy_jump" else -req.wh
                for q in OFFSET_QUANTITIES:
                    values[q] = max(0, values[q] + delta)
        return values

    def _device_values(self, dev: SimDevice) -> dict[str, Value]:
        values: dict[str, Value] = dict(dev.electrical)
        values.update(self._energies(dev))
        conn = self.connectors.get(dev.connector) if dev.connector is not None else None
        if conn is not None and dev.name == conn.cfg.evse:
            evse, ev = conn.evse, conn.ev
            code = F.vendor_error_code(dev.profile, evse.error)
            if code is None:  # no vendor code for it: the register shows no error
                code = F.vendor_error_code(dev.profile, "none") or 0
            for f in self.faults.on_connector(conn.cfg.id, frozenset({"evse_error_code"})):
                code = f.request.code  # forced raw vendor code, the newest wins
            pp = next((a for a in PP_CODINGS_A if a >= conn.cfg.max_current_a), 63)
            values.update(
                {
                    "cp_state": evse.cp_state,
                    "contactor_closed": evse.contactor_closed,
                    "charging_enabled": evse.enabled,
                    "offered_current_a": evse.offered_current_a,
                    "max_hw_current_a": conn.cfg.max_current_a,
                    "cable_max_current_a": float(pp) if ev.plugged else 0.0,
                    "evse_error_code": code,
                    "temperature_c": evse.reported_temperature_c,
                    "failsafe_timeout_s": conn.failsafe_timeout_s,
                    "failsafe_current_a": conn.failsafe_current_a,
                }
            )
            if evse.error != "none":
                state = "error"
            elif evse.contactor_closed and evse.draw_a > 0:
                state = "charging"
            elif ev.plugged and evse.pwm_on():
                state = "suspended_ev"
            elif ev.plugged:
                state = "suspended_evse" if ev.wants_charge() else "connected"
            else:
                state = "idle"
            lock = "unlocked"
            if ev.plugged:
                lock = "failed" if evse.faults.lock_failure else "locked"
            cable = "unplugged"
            if ev.plugged:
                cable = "unlocked" if evse.faults.lock_failure else "locked"
            words = {
                "charger_state": CHARGER_WORDS[state],
                "cable_state": CABLE_WORDS[cable],
                "lock_state": LOCK_WORDS[lock],
            }
            for q, candidates in words.items():
                word = self._pick_word(dev, q, candidates)
                if word is not None:
                    values[q] = word
        elif dev.profile.kind == "evse":
            values.update({"cp_state": "A", "contactor_closed": False, "temperature_c": 25.0})
        return values

    @staticmethod
    def _pick_word(dev: SimDevice, quantity: str, candidates: tuple[str, ...]) -> str | None:
        regs = [r for r in dev.image.quantities & {quantity} for r in dev.image.registers(r)]
        words = [w for r in regs if r.map for w in r.map.values()]
        if not words:
            return None
        lowered = {w.lower(): w for w in words}
        for c in candidates:
            if c in lowered:
                return lowered[c]
        for c in candidates:
            for lw, w in lowered.items():
                if c in lw:
                    return w
        return None

    def _publish(self, dev: SimDevice) -> None:
        values = self._device_values(dev)
        for q in dev.published:
            if q not in values:
                continue
            try:
                try:
                    dev.image.set(q, values[q])
                except DecodeError:
                    if q != "cp_state" or values[q] not in CP_FALLBACK:
                        raise
                    dev.image.set(q, CP_FALLBACK[str(values[q])])
            except DecodeError as e:
                # A state this device cannot express (e.g. no code for state E): keep the
                # last value, say so once.
                if q not in dev.warned:
                    dev.warned.add(q)
                    log.info("%s: cannot show %s=%r: %s", dev.name, q, values[q], e)
        for f in self.faults.on_device(dev.name, F.VALUE_FAULTS):
            dev.image.set_not_available(f.request.quantity)

    def _initial_meter(self, name: str) -> Meter:
        """A meter that has been in service a while: a seeded, plausible starting count."""
        rng = random.Random(f"{self.seed}:meter:{name}")
        total = rng.randint(50_000, 5_000_000)
        third = total // 3
        return Meter(import_wh=total, phase_wh=[third, third, total - 2 * third])

    def _set_identity(self, dev: SimDevice) -> None:
        """Serial, model and firmware: seeded, and only values the register holds whole."""
        crc = zlib.crc32(f"{self.seed}:{dev.name}".encode())
        candidates: dict[str, list[str]] = {
            "serial_number": [str(10_000_000 + crc % 89_999_999), str(crc % 60_000)],
            "model": [
                dev.profile.model,
                dev.profile.model.split(" ")[0],
                str(300_000 + crc % 100_000),
                str(crc % 1000),
            ],
            "firmware_version": ["1.4.2", "1.42", "142"],
        }
        for q, options in candidates.items():
            if q not in dev.image.quantities:
                continue
            reg = dev.image.registers(q)[0]
            fits = [v for v in options if reg.type != "ascii" or len(v) <= reg.words * 2]
            for value in fits or options[:1]:
                try:
                    dev.image.set(q, value)
                    break
                except (DecodeError, ValueError):  # ValueError: not ASCII, not a number
                    continue

    def _signing_meter(self, dev: SimDevice, spec: OcmfSigning) -> SimSigningMeter:
        """The OCMF signing registers of a signing meter: it signs its own import register."""
        ident = {"MV": dev.profile.manufacturer, "MM": dev.profile.model, "MF": SIM_FIRMWARE}
        return SimSigningMeter(
            spec,
            key=meter_key(self.seed, dev.name),
            identity=lambda: {**ident, "MS": str(dev.image.get("serial_number"))},
            energy_wh=lambda: int(self._energies(dev)["energy_import_wh"]),
        )

    def _on_write(self, dev: SimDevice, quantity: str, value: Value) -> ExcCodes | None:
        """A Modbus write reached a device: validate it and act on the model."""
        conn = self.connectors.get(dev.connector) if dev.connector is not None else None
        evse = conn.evse if conn is not None and conn.cfg.evse == dev.name else None
        if conn is not None and evse is not None:
            conn.last_write_s = self.time_s  # any write feeds the failsafe watchdog
        if quantity == "offered_current_a":
            amps = float(value)
            if amps != 0 and not MIN_CURRENT_A <= amps <= MAX_CURRENT_A:
                return ExcCodes.ILLEGAL_VALUE  # IEC 61851: 0 (stop) or 6..80 A
            if evse is not None and conn is not None:
                # Like a real controller, it limits the setpoint to its hardware rating.
                evse.offered_current_a = min(amps, conn.cfg.max_current_a)
        elif quantity == "charging_enabled" and evse is not None:
            evse.enabled = bool(value)
        elif quantity == "connector_unlock" and evse is not None and evse.faults.lock_failure:
            return ExcCodes.DEVICE_FAILURE  # the lock actuator does not move
        elif quantity == "failsafe_timeout_s" and conn is not None and evse is not None:
            conn.failsafe_timeout_s = float(value)
        elif quantity == "failsafe_current_a" and conn is not None and evse is not None:
            conn.failsafe_current_a = float(value)
        self.step(0.0)
        return None

    # ---------------------------------------------------------------- controls

    def _connector(self, connector_id: int) -> SimConnector:
        try:
            return self.connectors[connector_id]
        except KeyError:
            known = ", ".join(str(c) for c in self.connectors) or "none"
            raise SimError(f"no connector {connector_id}; connectors: {known}") from None

    def plug_in(
        self, connector_id: int, ev_max_current_a: float | None = None, phases: int | None = None
    ) -> None:
        """A car arrives: plugged, requesting, drawing up to its max on its phases."""
        conn = self._connector(connector_id)
        if conn.ev.plugged:
            raise SimError(f"connector {connector_id} already has a car; unplug it first")
        max_a = ev_max_current_a if ev_max_current_a is not None else self.cfg.sim.ev_max_current_a
        n = phases if phases is not None else self.cfg.sim.ev_phases
        if n not in (1, 3):
            raise SimError(f"phases must be 1 or 3, got {n}")
        if not max_a > 0:
            raise SimError(f"ev_max_current_a must be > 0, got {max_a}")
        conn.ev = EV(max_current_a=float(max_a), phases=n, plugged=True)
        for name in conn.devices:
            dev = self.devices[name]
            dev.session_start_wh = dev.meter.import_wh
            dev.session_wh = 0
        self.step(0.0)

    def unplug(self, connector_id: int) -> None:
        """The car leaves (unplugging an empty connector is an error)."""
        conn = self._connector(connector_id)
        if not conn.ev.plugged:
            raise SimError(f"connector {connector_id} has no car")
        conn.ev = EV(max_current_a=conn.ev.max_current_a, phases=conn.ev.phases)
        self.step(0.0)

    def ev_suspend(self, connector_id: int, suspended: bool) -> None:
        """The car pauses (True) or resumes (False) charging on its own (C <-> B)."""
        conn = self._connector(connector_id)
        if not conn.ev.plugged:
            raise SimError(f"connector {connector_id} has no car")
        conn.ev.suspended = bool(suspended)
        self.step(0.0)

    def inject(self, fault_request: BaseModel | dict[str, Any]) -> str:
        """Inject a fault (a hil.faults request model or dict); returns its id.

        FaultError if the request is invalid or cannot apply to its target.
        """
        req = (
            fault_request if isinstance(fault_request, BaseModel) else F.parse_fault(fault_request)
        )
        if not isinstance(req, F._Fault):
            raise F.FaultError(f"not a fault request: {req!r}")
        devices, cid = self._resolve(req)
        fault = F.ActiveFault(self.faults.new_id(), req, tuple(devices), cid, self.time_s)
        if req.kind == "energy_frozen":
            for name in devices:
                dev = self.devices[name]
                frozen = self._energies(dev)
                fault.captured[name] = {q: frozen[q] for q in ENERGY_QUANTITIES if q in frozen}
        self.faults.add(fault)
        self.step(0.0)
        return fault.id

    def clear(self, fault_id: str | None = None) -> list[str]:
        """Clear one fault by id, or all of them (None or 'all'); returns the ids cleared."""
        if fault_id is None or fault_id == "all":
            gone = [f.id for f in self.faults.clear()]
        else:
            gone = [self.faults.remove(fault_id).id]
        self.step(0.0)
        return gone

    def _resolve(self, req: Any) -> tuple[list[str], int | None]:
        """The devices and connector a fault request acts on, or FaultError saying why not."""
        kind = req.kind
        dev: SimDevice | None = None
        if req.device is not None:
            dev = self.devices.get(req.device)
            if dev is None:
                known = ", ".join(self.devices) or "none"
                raise F.FaultError(f"{kind}: no device {req.device!r}; devices: {known}")
            cid = dev.connector
        else:
            cid = req.connector
            if cid not in self.connectors:
                known = ", ".join(str(c) for c in self.connectors) or "none"
                raise F.FaultError(f"{kind}: no connector {cid}; connectors: {known}")
        conn = self.connectors.get(cid) if cid is not None else None

        if kind in F.COMM_FAULTS:
            devices = [dev.name] if dev is not None else list(conn.devices if conn else [])
            if kind == "crc_error":
                tcp = [
                    n
                    for n in devices
                    if self.cfg.bus_by_name(self.devices[n].cfg.bus).kind == "tcp"
                ]
                if tcp:
                    raise F.FaultError(
                        f"crc_error: {', '.join(tcp)} on Modbus TCP, which has no CRC; "
                        "use garbage or truncated"
                    )
            return devices, cid
        if kind in F.SUPPLY_FAULTS:
            if conn is not None:
                return list(conn.devices), cid
            assert dev is not None
            return [dev.name], None
        if kind in F.VALUE_FAULTS:
            if dev is None:
                raise F.FaultError(f"{kind}: target a device, not a connector")
            regs = [r for r in dev.profile.readable() if r.quantity == req.quantity]
            if not regs:
                raise F.FaultError(f"{kind}: {dev.name} has no readable {req.quantity}")
            if not regs[0].not_available:
                raise F.FaultError(
                    f"{kind}: profile {dev.profile.name} has no 'not available' marker for "
                    f"{req.quantity}"
                )
            return [dev.name], cid
        if kind in F.ENERGY_FAULTS:
            if dev is not None:
                devices = [dev.name]
            else:
                assert conn is not None
                devices = [conn.cfg.meter or conn.cfg.evse or ""]
            for name in devices:
                if not self.devices[name].image.quantities & ENERGY_QUANTITIES:
                    raise F.FaultError(f"{kind}: {name} has no energy register")
            return devices, cid
        # EVSE faults act on a connector's charging logic.
        if conn is None:
            raise F.FaultError(f"{kind}: {req.target} is on no connector; EVSE faults need one")
        if dev is not None and dev.name != conn.cfg.evse:
            raise F.FaultError(
                f"{kind}: {dev.name} is not an EVSE; target connector {cid} or its EVSE"
            )
        return list(conn.devices), cid

    def snapshot(self) -> dict[str, Any]:
        """Every device's canonical values (as a poller decodes them), every connector's
        state, and the active faults: JSON-ready except for int connector keys."""
        devices = {
            name: {
                "profile": dev.profile.name,
                "kind": dev.profile.kind,
                "bus": dev.cfg.bus,
                "unit": dev.cfg.unit,
                "connector": dev.connector,
                "values": dev.image.values(),
            }
            for name, dev in self.devices.items()
        }
        connectors = {
            cid: {
                "cp_state": c.evse.cp_state,
                "ev": asdict(c.ev),
                "evse": {
                    "enabled": c.evse.enabled,
                    "offered_current_a": c.evse.offered_current_a,
                    "contactor_commanded": c.evse.contactor_commanded,
                    "contactor_closed": c.evse.contactor_closed,
                    "temperature_c": c.evse.reported_temperature_c,
                    "error": c.evse.error,
                    "failsafe": c.evse.limit_a is not None,
                },
                "voltages_v": list(c.voltages),
                "currents_a": list(c.currents),
            }
            for cid, c in self.connectors.items()
        }
        return {
            "time_s": round(self.time_s, 3),
            "devices": devices,
            "connectors": connectors,
            "faults": [f.describe() for f in self.faults.active()],
        }
