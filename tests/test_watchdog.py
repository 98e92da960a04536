"""The agent never hangs silently: watchdog pings stop when the loop, a poller or the bus stops.

A real `evedge run` process polls the simulated station with $NOTIFY_SOCKET pointing at a
datagram socket of the test, as systemd would; SIGSTOP freezes it. Inside the process, a
poller whose device call never returns and a bus consumer that stops taking events must stop
the pings too, and the log must say which part is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import structlog
from conftest import free_port, station_config

from agent.config import load_config
from agent.events import READINGS
from agent.runtime import Agent
from agent.sdnotify import Notifier
from agent.watchdog import Liveness, Watchdog
from hil.procs import start_agent, until, write_station
from hil.station import SimStation

PING_S = 0.1  # WATCHDOG_USEC / 2 in these tests


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket, read from the event loop."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def next(self, timeout: float = 10) -> dict[str, str]:
        """The next message as {KEY: value}."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    async def until(self, key: str, timeout: float = 10) -> dict[str, str]:
        """Skip messages up to the first one carrying `key`."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.next(timeout)
                if key in msg:
                    return msg

    def drain(self) -> list[dict[str, str]]:
        """Every message waiting now."""
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def close(self) -> None:
        self.sock.close()


async def test_agent_process_sends_ready_and_pings_and_stops_pinging_when_frozen(tmp_path):
    config = write_station(
        tmp_path, station_id="WDOG", meter_interval_s=0.2, evse_interval_s=0.2
    ).path
    sim = SimStation(load_config(config))
    await sim.start()
    listener = NotifyListener(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC=str(int(PING_S * 2e6)))
    proc = start_agent(config, tmp_path / "agent.log", env=env)
    try:
        ready = await listener.until("READY", timeout=30)
        assert ready["STATUS"] == "running: 2 devices on 2 links"  # one per TCP endpoint
        for _ in range(3):
            await listener.until("WATCHDOG")

        # A frozen process sends nothing: systemd's watchdog then kills it.
        proc.signal(signal.SIGSTOP)
        await asyncio.sleep(PING_S)  # a datagram already in flight
        listener.drain()
        await asyncio.sleep(10 * PING_S)
        assert listener.drain() == []
        proc.signal(signal.SIGCONT)
        await listener.until("WATCHDOG")

        # What systemd sends when the pings stop: the Python stacks land in the journal.
        proc.signal(signal.SIGABRT)
        assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGABRT
    finally:
        proc.kill9()
        listener.close()
        await sim.stop()
    text = (tmp_path / "agent.log").read_text()
    assert "watchdog.start" in text and "ping_interval_s=0.1" in text
    assert "Fatal Python error: Aborted" in text
    assert "Current thread" in text and "agent/cli/main.py" in text  # the main thread's stack


def _events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


async def test_stuck_poller_and_stuck_bus_consumer_stop_the_pings_and_are_named(tmp_path):
    mport, eport = free_port(), free_port()
    cfg = station_config(
        dict(name="meter1", profile="eastron-sdm630", unit=1, port=mport, interval_s=0.1),
        dict(name="evse1", profile="phoenix-ev-charge-control", unit=255, port=eport),
        extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n',
    )
    sim = SimStation(cfg)
    await sim.start()
    listener = NotifyListener(tmp_path / "notify.sock")
    agent = Agent(cfg)
    liveness = Liveness(agent.station.pollers, agent.bus, poll_stall_s=0.5, bus_stall_s=0.5)
    dog = Watchdog(liveness, Notifier(str(listener.path), watchdog_interval_s=PING_S))
    release = asyncio.Event()
    meter = agent.station.devices["meter1"]
    real_read_cycle = meter.read_cycle

    async def hangs_until_released():
        # A request whose timeout never fires: the poll loop of its link is stuck.
        await release.wait()
        return await real_read_cycle()

    with structlog.testing.capture_logs() as logs:
        await agent.start()
        task = asyncio.create_task(dog.run())
        try:
            # Default consumer names are the subscribing modules.
            assert "agent.store.writer" in {s.name for s in agent.bus.subscriptions()}
            for _ in range(3):
                await listener.until("WATCHDOG")

            # 1. A poller stuck in one device poll.
            meter.read_cycle = hangs_until_released
            await until(lambda: _events(logs, "watchdog.stuck"), 10, "watchdog.stuck")
            stuck = _events(logs, "watchdog.stuck")[0]
            link = f"tcp://127.0.0.1:{mport}"
            assert stuck["part"] == f"poller {link}"
            assert stuck["detail"] == "polling meter1 on bus lan"
            assert listener.drain()[-1] == {"STATUS": f"stuck: poller {link}"}
            await asyncio.sleep(5 * PING_S)
            assert not [m for m in listener.drain() if "WATCHDOG" in m]
            release.set()
            await listener.until("WATCHDOG")
            assert _events(logs, "watchdog.recovered")[0]["part"] == f"poller {link}"

            # 2. A bus consumer that stops taking events.
            wedged = agent.bus.subscribe(*READINGS, name="wedged-consumer")
            await until(
                lambda: len(_events(logs, "watchdog.stuck")) == 2, 10, "a second watchdog.stuck"
            )
            stuck = _events(logs, "watchdog.stuck")[1]
            assert stuck["part"] == "bus consumer wedged-consumer"
            assert "events waiting" in stuck["detail"]
            listener.drain()
            await asyncio.sleep(5 * PING_S)
            assert not [m for m in listener.drain() if "WATCHDOG" in m]
            wedged.close()
            await listener.until("WATCHDOG")

            # A consumer outside the agent's control (an API client) is not watched.
            ignored = agent.bus.subscribe(*READINGS, name="api-client", watch=False)
            await asyncio.sleep(1.0)
            assert len(_events(logs, "watchdog.stuck")) == 2
            ignored.close()
        finally:
            release.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await agent.stop()
            listener.close()
            await sim.stop()
