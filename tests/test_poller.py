"""LinkPoller + HealthTracker against the simulated station: TCP on loopback, RTU on a socat pair.

Every fault is injected into the real simulated device; the test watches what the agent
publishes on its bus: health states and counters, and that a failed device publishes no
reading stamped after it failed while the other devices keep publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime

import pytest
from conftest import free_port, station_config

from agent.bus import EventBus
from agent.config import StationConfig
from agent.events import READINGS, DeviceHealth, HealthState, Reading, utcnow
from agent.poller import HealthTracker, LinkPoller, PolledDevice
from agent.station import build_station
from drivers.device import Device
from drivers.profile import load_profile
from drivers.transport import Link, TcpSettings
from hil.serial_pair import SerialPair
from hil.station import SimStation

FAST = dict(interval_s=0.05, offline_after=2)


class Polling:
    """A station's pollers running on the test's loop, with every bus event recorded."""

    def __init__(self, cfg: StationConfig):
        self.bus = EventBus()
        self.station = build_station(cfg, self.bus)
        self.sub = self.bus.subscribe(*READINGS, DeviceHealth, maxsize=1_000_000)
        self.events: list[Reading | DeviceHealth] = []
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Polling:
        self._tasks = [asyncio.create_task(p.run()) for p in self.station.pollers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for t in self._tasks:  # a poller that died would hide behind the cancel
            assert t.cancelled(), t
        assert self.sub.dropped == 0

    def _drain(self) -> list[Reading | DeviceHealth]:
        while (ev := self.sub.get_nowait()) is not None:
            self.events.append(ev)
        return self.events

    def readings(self, device: str, since: datetime | None = None) -> list[Reading]:
        return [
            r
            for e in self._drain()
            if isinstance(e, READINGS) and e.device == device and (since is None or e.ts >= since)
            for r in e.samples()
        ]

    def healths(self, device: str, since: datetime | None = None) -> list[DeviceHealth]:
        return [
            e
            for e in self._drain()
            if isinstance(e, DeviceHealth)
            and e.device == device
            and (since is None or e.ts >= since)
        ]

    def health(self, device: str) -> DeviceHealth:
        return self.station.health[device].event()

    async def until(self, what, timeout_s: float = 3.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not what():
            if loop.time() > deadline:
                states = {n: h.event() for n, h in self.station.health.items()}
                raise AssertionError(f"timed out waiting; health: {states}")
            await asyncio.sleep(0.01)

    async def all_ok(self, *devices: str) -> None:
        await self.until(lambda: all(self.health(d).state == HealthState.OK for d in devices))
        await self.until(lambda: all(self.readings(d) for d in devices))


def sim_side(cfg: StationConfig, *absent: str) -> StationConfig:
    """The station the simulator serves: the agent's config without the `absent` devices."""
    return cfg.model_copy(update={"device": [d for d in cfg.device if d.name not in absent]})


# ------------------------------------------------------------------- one RS-485 bus


async def test_rtu_bus_two_devices_publish_and_an_unused_unit_goes_offline(serial_pair):
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, **FAST),
        dict(name="evse1", profile="phoenix-ev-charge-control", unit=2, **FAST),
        dict(name="ghost", profile="eastron-sdm630", unit=3, **FAST),
        rtu_port=serial_pair.agent_end,
        timeout_s=0.1,
    )
    sim = SimStation(sim_side(cfg, "ghost"), {"rs485": serial_pair.sim_end}, tick_s=None)
    async with sim, Polling(cfg) as p:
        assert len(p.station.pollers) == 1  # one task owns the line
        await p.all_ok("meter1", "evse1")
        await p.until(lambda: p.health("ghost").state == HealthState.OFFLINE)
        ghost = p.health("ghost")
        assert ghost.timeouts == ghost.consecutive_failures >= 2
        assert ghost.crc_errors == 0 and ghost.exceptions == {}
        assert p.readings("ghost") == []
        offline_at = utcnow()
        polls = {d: p.health(d).polls for d in ("meter1", "evse1")}
        await p.until(lambda: all(p.health(d).polls >= polls[d] + 3 for d in polls))
        for d in ("meter1", "evse1"):
            assert p.health(d).state == HealthState.OK
            assert p.readings(d, since=offline_at)
            assert {h.state for h in p.healths(d)} == {HealthState.OK}
        snap = sim.snapshot()["devices"]
        latest = {r.quantity: r.value for r in p.readings("meter1")}
        assert latest["energy_import_wh"] == snap["meter1"]["values"]["energy_import_wh"]
        latest = {r.quantity: r.value for r in p.readings("evse1")}
        assert latest["cp_state"] == snap["evse1"]["values"]["cp_state"] == "A"


# --------------------------------------------------------------------- bad input

TIMEOUTS, CRC = "timeouts", "crc_errors"

FAULTS = [
    pytest.param("tcp", {"kind": "no_response"}, TIMEOUTS, id="tcp-no_response"),
    pytest.param("rtu", {"kind": "no_response"}, TIMEOUTS, id="rtu-no_response"),
    pytest.param("tcp", {"kind": "garbage"}, CRC, id="tcp-garbage"),
    pytest.param("rtu", {"kind": "garbage"}, CRC, id="rtu-garbage"),
    pytest.param("rtu", {"kind": "crc_error"}, CRC, id="rtu-crc_error"),
    pytest.param("tcp", {"kind": "truncated"}, CRC, id="tcp-truncated"),
    pytest.param("rtu", {"kind": "truncated"}, CRC, id="rtu-truncated"),
    pytest.param("tcp", {"kind": "slow", "delay_s": 0.3}, TIMEOUTS, id="tcp-slow"),
    pytest.param("rtu", {"kind": "slow", "delay_s": 0.15}, TIMEOUTS, id="rtu-slow"),
    pytest.param("tcp", {"kind": "exception", "code": 4}, 4, id="tcp-exception04"),
    pytest.param("rtu", {"kind": "exception", "code": 4}, 4, id="rtu-exception04"),
]


@contextlib.asynccontextmanager
async def rig(kind: str, rtu_timeout_s: float = 0.3):
    """meter1 and meter2 on one link (a TCP endpoint, or the RS-485 bus), evse1 on its own
    TCP endpoint; all polled fast with 0.1 s timeouts (`rtu_timeout_s` on RS-485), offline
    after 2 failed polls."""
    eport = free_port()
    evse = dict(name="evse1", profile="phoenix-ev-charge-control", unit=255, port=eport, **FAST)
    if kind == "tcp":
        mport = free_port()
        cfg = station_config(
            dict(name="meter1", profile="eastron-sdm630", unit=1, port=mport, **FAST),
            dict(name="meter2", profile="eastron-sdm630", unit=2, port=mport, **FAST),
            evse,
            timeout_s=0.1,
        )
        async with SimStation(cfg, tick_s=None) as sim, Polling(cfg) as p:
            yield sim, p
        return
    async with SerialPair() as (agent_end, sim_end):
        cfg = station_config(
            dict(name="meter1", profile="eastron-sdm630", unit=1, **FAST),
            dict(name="meter2", profile="eastron-sdm630", unit=2, **FAST),
            evse,
            rtu_port=agent_end,
            timeout_s=rtu_timeout_s,
        )
        async with SimStation(cfg, {"rs485": sim_end}, tick_s=None) as sim, Polling(cfg) as p:
            yield sim, p


@pytest.mark.parametrize(("kind", "fault", "counter"), FAULTS)
async def test_bad_input_health_counters_no_stale_readings_and_recovery(kind, fault, counter):
    # Through socat on a loaded machine an answer can take over 0.1 s: a timeout there would
    # be counted where an exception or a CRC error is expected. A slow device is the case
    # where the answer must come in just after the timeout (before the next request).
    rtu_timeout_s = 0.1 if fault["kind"] == "slow" else 0.3
    async with rig(kind, rtu_timeout_s) as (sim, p):
        others = ("meter2", "evse1")
        await p.all_ok("meter1", *others)
        before = p.health("meter1")
        t_fault = utcnow()
        fid = sim.inject({**fault, "device": "meter1"})

        if counter == 4:  # the device answers, refusing: degraded, never offline
            await p.until(lambda: p.health("meter1").polls >= before.polls + 4)
            h = p.health("meter1")
            assert h.state == HealthState.DEGRADED
            assert h.exceptions[4] >= 4 and set(h.exceptions) == {4}
            assert h.consecutive_failures == 0
            assert (h.timeouts, h.crc_errors) == (before.timeouts, before.crc_errors)
            assert "exception 04" in h.last_error
            refused = [e for e in p.healths("meter1", since=t_fault) if e.exceptions]
            assert len(refused) >= 3
            assert h.last_good == refused[0].last_good  # nothing read since
            assert all(e.state != HealthState.OFFLINE for e in p.healths("meter1"))
        else:  # no valid answer: counted per failed poll, offline after offline_after polls
            await p.until(lambda: p.health("meter1").state == HealthState.OFFLINE)
            h = p.health("meter1")
            failed = [e for e in p.healths("meter1", since=t_fault) if e.consecutive_failures]
            assert [e.consecutive_failures for e in failed[:2]] == [1, 2]
            assert failed[0].state != HealthState.OFFLINE
            assert failed[1].state == HealthState.OFFLINE
            assert getattr(h, counter) - getattr(before, counter) == h.consecutive_failures
            other = TIMEOUTS if counter == CRC else CRC
            assert getattr(h, other) == getattr(before, other)
            assert h.exceptions == {}
            assert h.last_good < failed[0].ts
        # Nothing read after the fault was published; the others went on as before.
        assert p.readings("meter1", since=t_fault) == []
        t_check = utcnow()
        await p.until(lambda: all(p.readings(d, since=t_check) for d in others))
        for d in others:
            assert {e.state for e in p.healths(d)} == {HealthState.OK}, d

        # Recovery: clear the fault, the device is ok again with freshly stamped readings.
        t_clear = utcnow()
        sim.clear(fid)
        await p.until(lambda: p.health("meter1").state == HealthState.OK, timeout_s=5)
        await p.until(lambda: p.readings("meter1", since=t_clear))
        h = p.health("meter1")
        assert h.consecutive_failures == 0 and h.last_good >= t_clear
        fresh = {r.quantity: r for r in p.readings("meter1", since=t_clear)}
        assert (
            fresh["energy_import_wh"].value
            == (sim.snapshot()["devices"]["meter1"]["values"]["energy_import_wh"])
        )
        assert all(r.ts >= t_clear for r in fresh.values())


async def test_exception_02_on_one_value_keeps_the_others_publishing():
    port = free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=port, **FAST), timeout_s=0.1
    )
    async with SimStation(cfg, tick_s=None) as sim, Polling(cfg) as p:
        await p.all_ok("meter1")
        device = p.station.devices["meter1"]
        reg = next(r for r in device.profile.readable() if r.quantity == "frequency_hz")
        t_fault = utcnow()
        sim.inject(
            {
                "kind": "exception",
                "device": "meter1",
                "code": 2,
                "function": reg.function,
                "first": reg.address,
                "last": reg.address,
            }
        )
        await p.until(lambda: p.health("meter1").exceptions.get(2))
        h0 = p.health("meter1")
        await p.until(lambda: p.health("meter1").polls >= h0.polls + 3)
        h = p.health("meter1")
        assert h.state == HealthState.OK  # one refused value is the profile's, not a fault
        assert h.exceptions == h0.exceptions  # refused once, then no longer asked for
        assert any(s.address == reg.address for s in device.unsupported)
        after = p.readings("meter1", since=t_fault)
        quantities = {r.quantity for r in after}
        assert "frequency_hz" not in quantities
        assert {"voltage_l1", "energy_import_wh"} <= quantities
        assert any(e.state == HealthState.DEGRADED for e in p.healths("meter1", since=t_fault))


async def test_a_device_refusing_every_value_is_not_ok_and_is_asked_again():
    port = free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=port, **FAST), timeout_s=0.1
    )
    async with SimStation(cfg, tick_s=None) as sim, Polling(cfg) as p:
        await p.all_ok("meter1")
        t_fault = utcnow()
        fid = sim.inject({"kind": "exception", "device": "meter1", "code": 2})  # wrong model?
        await p.until(lambda: p.health("meter1").state == HealthState.OFFLINE)
        h = p.health("meter1")
        assert h.exceptions[2] > 0 and h.timeouts == 0
        assert "exception 02" in h.last_error
        assert p.readings("meter1", since=t_fault) == []
        assert p.station.devices["meter1"].layout  # not written off as "no values"
        t_clear = utcnow()
        sim.clear(fid)
        await p.until(lambda: p.health("meter1").state == HealthState.OK, timeout_s=5)
        await p.until(lambda: p.readings("meter1", since=t_clear))
        assert "voltage_l1" in {r.quantity for r in p.readings("meter1", since=t_clear)}


async def test_refused_identity_is_counted_and_read_once_the_device_allows_it():
    port = free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=port, **FAST), timeout_s=0.1
    )
    sim = SimStation(cfg, tick_s=None)
    serial = next(r for r in sim.devices["meter1"].profile.readable() if r.once)
    busy = {"kind": "exception", "device": "meter1", "code": 4, "function": serial.function}
    fid = sim.inject({**busy, "first": serial.address, "last": serial.address + serial.words - 1})
    async with sim, Polling(cfg) as p:
        await p.until(lambda: p.health("meter1").polls >= 3)
        h = p.health("meter1")
        assert h.state == HealthState.DEGRADED  # not ok: the device refuses a read
        assert h.exceptions[4] >= 3
        assert {r.quantity for r in p.readings("meter1")} >= {"voltage_l1", "energy_import_wh"}
        assert serial.quantity not in {r.quantity for r in p.readings("meter1")}
        sim.clear(fid)
        await p.until(lambda: any(r.quantity == serial.quantity for r in p.readings("meter1")))
        await p.until(lambda: p.health("meter1").state == HealthState.OK)
        got = next(r for r in p.readings("meter1") if r.quantity == serial.quantity)
        assert got.value == sim.snapshot()["devices"]["meter1"]["values"][serial.quantity]


async def test_wrong_unit_on_tcp_gateway_exception_goes_offline():
    port = free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=port, **FAST),
        dict(name="wrong", profile="eastron-sdm630", unit=9, port=port, **FAST),
        timeout_s=0.1,
    )
    async with SimStation(sim_side(cfg, "wrong"), tick_s=None), Polling(cfg) as p:
        await p.until(lambda: p.health("wrong").state == HealthState.OFFLINE)
        h = p.health("wrong")
        # Every poll got 0x0B GATEWAY TARGET DEVICE FAILED TO RESPOND and stopped there.
        assert h.exceptions == {11: h.consecutive_failures}
        assert "exception 11" in h.last_error
        assert h.timeouts == 0 and h.last_good is None
        assert p.readings("wrong") == []
        await p.all_ok("meter1")


async def test_serial_port_gone_goes_offline_and_recovers_at_the_same_path(tmp_path):
    path = tmp_path / "ttyEV0"
    pair = SerialPair(agent_link=path)
    agent_end, sim_end = pair.start()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, **FAST),
        rtu_port=agent_end,
        timeout_s=0.1,
    )
    sim = SimStation(cfg, {"rs485": sim_end}, tick_s=None)
    await sim.start()
    try:
        async with Polling(cfg) as p:
            await p.all_ok("meter1")
            t_gone = utcnow()
            pair.stop()  # the USB adapter is unplugged
            await sim.stop()
            assert not os.path.exists(path)
            await p.until(lambda: p.health("meter1").state == HealthState.OFFLINE)
            h = p.health("meter1")
            assert h.last_error.endswith(f"no serial port {path} (adapter unplugged?)")
            assert (h.timeouts, h.crc_errors, h.exceptions) == (0, 0, {})
            assert p.readings("meter1", since=t_gone) == []

            pair = SerialPair(agent_link=path)  # plugged back in: the same device path
            agent_end, sim_end = pair.start()
            sim = SimStation(cfg, {"rs485": sim_end}, tick_s=None)
            await sim.start()
            t_back = utcnow()
            await p.until(lambda: p.health("meter1").state == HealthState.OK, timeout_s=5)
            await p.until(lambda: p.readings("meter1", since=t_back))
    finally:
        await sim.stop()
        pair.stop()


class CancelOnAnswer(Link):
    """A link whose poller task is cancelled the moment an answer's bytes arrive."""

    victim: asyncio.Task | None = None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and self.victim is not None:
            self.victim.cancel()
        return super()._trace(sending, data)


async def test_a_poller_cancelled_as_an_answer_arrives_stops():
    # On Python 3.11 asyncio.wait_for (inside pymodbus) returns the answer and drops a cancel
    # that lands in the same loop step; the poller then polled on and agent.stop() hung.
    port = free_port()
    cfg = station_config(dict(name="meter1", profile="eastron-sdm630", unit=1, port=port))
    async with SimStation(cfg, tick_s=None):
        link = CancelOnAnswer(TcpSettings("127.0.0.1", port), timeout_s=0.2)
        device = Device("meter1", load_profile("eastron-sdm630"), link, 1, retries=0)
        polled = PolledDevice(device, 0.05, HealthTracker("meter1", "lan"))
        task = asyncio.create_task(LinkPoller(link, [polled], EventBus(), "lan").run())
        link.victim = task
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        assert task.cancelled() and link.requests == 1
