"""`evedge demo`: the whole agent against the simulated station, cars charging back to back.

The simulated station (hil/) serves the config's devices on loopback; the agent polls them
exactly as it polls hardware. A script plays the driver: plug in, present card DEMO-0042,
and later either let the car finish (battery full, it pauses, then is unplugged: parking
time is billed) or present the card again to stop — per connector, for as long as the demo
runs. The agent's session engine does the rest: authorizes the card, enables the EVSE
through the driver layer (verified by read-back), meters, prices, and writes a signed,
chained charge record for every session into the configured store.

The cloud side runs too (agent/cli/demo_cloud.py): a test CSMS the agent speaks OCPP 1.6J
with (transactions, meter values; midway through each transaction the CSMS caps the current
with SetChargingProfile, then clears it) and, when mosquitto is installed, an MQTT broker.
The live view shows both links, each connector's driver display, session and transaction,
and what the CSMS sees. `--json`: one JSON object per event instead (see `Feed`).

The simulator's control port (`[sim] control_port`, 15020) is served as with `evedge sim`:
`evedge simctl inject …` in a second terminal raises a fault the agent diagnoses, and the
live view's faults panel shows it with its root cause, first step and how it clears.

One demo per run directory (the store's directory, `.demo/`): a second one exits 3 with one
line before it touches anything there (`DemoRunning`).

Stopping (the duration ran out, Ctrl-C or SIGTERM) ends running sessions as a technician
would, lets the outboxes deliver, then stops the agent, the broker, the CSMS, the simulator,
and prints a summary with the commands to try next.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from rich.live import Live

from agent.cli.common import console, emit_json
from agent.cli.demo_cloud import Cloud, CsmsView, LimitScript, Own, prepare
from agent.cli.live import LiveState, render
from agent.config import ConnectorConfig, StationConfig
from agent.events import (
    ChargeRecordWritten,
    DeviceHealth,
    DeviceReadings,
    DriverMessage,
    FaultCleared,
    FaultLatch,
    FaultRaised,
    Reading,
    SessionEvent,
)
from agent.ops import store_status
from agent.runtime import Agent
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from agent.store.db import StoreError
from agent.tasks import cancel_and_wait
from hil.control import ControlServer
from hil.display import ConsoleDisplay
from hil.station import SimStation

DEMO_CARD = "DEMO-0042"
FULL_PARKING_S = 6.0  # how long a full car stays plugged in before its driver returns
SYNC_POLL_S = 1.0  # how often the OCPP/MQTT link state is looked at
FLUSH_S = 5.0  # at the end: how long the outboxes may take to deliver
EVENT_TYPES = {
    Reading: "reading",
    DeviceReadings: "reading",  # one JSON line per value, as single Readings print
    DeviceHealth: "health",
    SessionEvent: "session",
    ChargeRecordWritten: "record",
    DriverMessage: "driver",
    FaultRaised: "fault",
    FaultCleared: "fault_cleared",
    FaultLatch: "fault_latch",
}


class DemoRunning(Exception):
    """Another demo (or agent) already runs on this run directory."""


def claim(cfg: StationConfig, config_path: Path) -> int:
    """Hold the demo's run directory (the store's) for this process, before anything in it
    is written; DemoRunning if another demo holds it or an agent serves its API socket.
    Returns the descriptor that holds the lock (closing it releases it)."""
    run_dir = Path(cfg.store.path).parent
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DemoRunning(
            f"a demo is already running in {run_dir}/: stop it first, or watch it with "
            f"`evedge live -c {config_path}`"
        ) from None
    if cfg.api is not None and _serving(cfg.api.socket):
        os.close(fd)
        raise DemoRunning(f"an agent is already serving {cfg.api.socket}: stop it first")
    return fd


def _serving(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class DemoDriver:
    """Plays the driver on one connector, session after session."""

    def __init__(self, agent: Agent, sim: SimStation, connector: ConnectorConfig, state: LiveState):
        self.agent = agent
        self.sim = sim
        self.c = connector
        self.state = state
        self.sessions = 0

    def _say(self, text: str) -> None:
        self.state.note(f"connector {self.c.id}: {text}")

    async def _wait_status(self, want: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ev = self.state.sessions.get(self.c.id)
            if ev is not None and ev.status in want:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _card(self) -> str | None:
        engine = self.agent.sessions
        if engine is None:
            self._say("no [billing] section in the config: no session engine to take the card")
            return None
        try:
            return await engine.authorize(self.c.id, card_token(DEMO_CARD))
        except CommandRefused as e:
            self._say(f"card {DEMO_CARD} refused: {e}")
            return None

    async def run(self) -> None:
        """Sessions back to back until cancelled."""
        sim_cfg = self.agent.cfg.sim
        while True:
            await asyncio.sleep(2)
            self.sim.plug_in(self.c.id)
            self._say("vehicle plugged in")
            await self._wait_status({"Preparing"}, 5)
            result = await self._card()
            if result is not None:
                self._say(f"card {DEMO_CARD} presented: {result}")
            await self._wait_status({"Charging"}, 5)
            await asyncio.sleep(sim_cfg.plugged_s)
            self.sessions += 1
            if self.sessions % 2:
                self.sim.ev_suspend(self.c.id, True)
                self._say("battery full: the car stops charging (parking time starts)")
                await asyncio.sleep(FULL_PARKING_S)
            else:
                result = await self._card()
                self._say(f"card {DEMO_CARD} presented again: {result}")
                await self._wait_status({"Finishing", "Available"}, 10)
                await asyncio.sleep(1)
            self.sim.unplug(self.c.id)
            self._say("vehicle unplugged")
            await self._wait_status({"Available"}, 10)
            await asyncio.sleep(sim_cfg.pause_s)


def _record_note(state: LiveState, ev: ChargeRecordWritten) -> None:
    total = ev.total_incl_vat if ev.total_incl_vat is not None else ev.total_excl_vat
    cost = "not priced" if total is None else f"{total} {ev.currency}"
    flag = " — flagged for review" if ev.review else ""
    state.note(
        f"connector {ev.connector}: record {ev.record_id} signed and chained: "
        f"{ev.energy_wh:,} Wh, {cost} ({ev.stop_reason}){flag}"
    )


class Feed:
    """What the demo shows, from the bus, the agent's sync services and the CSMS, into the
    live state; with `as_json` also printed, one JSON object per event, by "type":

    - reading | health | session | record | driver: the bus events, all their fields;
    - ocpp | mqtt, "event": "link": the service's state (as in `evedge status --json`) when
      the link changes (connected, boot status);
    - ocpp, "event": "transaction": the CSMS acknowledged a session's StartTransaction
      (connector, session_id, transaction_id);
    - csms: a CALL the CSMS received ("action", "payload"), or one it sent
      ("direction": "to_charge_point", "action", "status");
    - demo: what the script does ("message").
    """

    def __init__(self, agent: Agent, state: LiveState, view: CsmsView | None, as_json: bool):
        self.agent, self.state, self.view, self.as_json = agent, state, view, as_json
        self.sub = agent.bus.subscribe(*EVENT_TYPES)
        self._links: dict[str, tuple[Any, ...]] = {}
        self._unacked: dict[str, int] = {}  # session id -> connector, until it has its tx id
        self._next_sync = 0.0
        self.records = 0  # charge records written
        if as_json:
            state.listeners.append(lambda text: emit_json({"type": "demo", "message": text}))

    def close(self) -> None:
        """Release the bus subscription."""
        self.sub.close()

    def tell(self, text: str, obj: dict[str, Any]) -> None:
        """A note in the live view, or `obj` as a JSON line."""
        if self.as_json:
            emit_json(obj)
        else:
            self.state.note(text)

    async def run(self, live: Live | None) -> None:
        """Step and redraw until cancelled."""
        while True:
            await self.step()
            if live is not None:
                live.update(render(self.state))
            await asyncio.sleep(0.1 if live is None else 0.25)

    async def step(self, *, poll_now: bool = False) -> None:
        """Take what happened since the last step."""
        while (ev := self.sub.get_nowait()) is not None:
            self._event(ev)
        if self.view is not None:
            for r in self.view.new_calls():
                self._csms_call(r.action, r.payload)
            for cid, tx in self.view.by_connector.items():
                self.state.csms[cid] = tx.line()
        if poll_now or time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + SYNC_POLL_S
            await self._poll_sync()

    def _event(self, ev: Any) -> None:
        self.state.feed(ev)
        if isinstance(ev, ChargeRecordWritten):
            self.records += 1
        if isinstance(ev, SessionEvent):
            if ev.kind == "started" and ev.session_id is not None:
                self._unacked[ev.session_id] = ev.connector
            elif ev.session_id is None:
                self.state.transactions.pop(ev.connector, None)
        if self.as_json and isinstance(ev, DeviceReadings):
            for r in ev.samples():
                emit_json({"type": "reading", **r.reading().model_dump(mode="json")})
        elif self.as_json:
            emit_json({"type": EVENT_TYPES[type(ev)], **ev.model_dump(mode="json")})
        elif isinstance(ev, ChargeRecordWritten):
            _record_note(self.state, ev)

    def _csms_call(self, action: str, payload: dict[str, Any]) -> None:
        if self.as_json:
            emit_json({"type": "csms", "action": action, "payload": payload})
        elif action == "StopTransaction":
            self.state.note(
                f"CSMS: StopTransaction for tx {payload.get('transactionId')} "
                f"({payload.get('reason', 'Local')}), meter {payload.get('meterStop', 0):,} Wh"
            )

    async def _poll_sync(self) -> None:
        for name, label in (("ocpp", "OCPP"), ("mqtt", "MQTT")):
            svc = getattr(self.agent, name, None)
            if svc is None:
                continue
            st = await asyncio.to_thread(svc.state)
            self.state.sync[name] = st
            link = (st.get("connected"), st.get("boot_status"))
            if name not in self._links and not link[0] and not st.get("last_error"):
                continue  # still connecting: nothing to tell yet
            if link != self._links.get(name):
                self._links[name] = link
                where = st.get("url") or st.get("broker")
                text = f"{label}: {'connected to' if link[0] else 'not connected to'} {where}"
                if link[1]:
                    text += f", boot {link[1]}"
                self.tell(text, {"type": name, "event": "link", **st})
        await self._poll_transactions()

    async def _poll_transactions(self) -> None:
        ocpp = self.agent.ocpp
        outbox = None if ocpp is None else ocpp.ctx.parts.get("outbox")
        if outbox is None:
            return
        for sid, cid in list(self._unacked.items()):
            tx = await asyncio.to_thread(outbox.transaction_id, sid)
            if tx is None:
                continue
            del self._unacked[sid]
            self.state.acknowledged.append(tx)
            current = self.state.sessions.get(cid)
            if current is not None and current.session_id == sid:
                self.state.transactions[cid] = tx
            self.tell(
                f"connector {cid}: OCPP StartTransaction acknowledged, transaction id {tx}",
                {
                    "type": "ocpp",
                    "event": "transaction",
                    "connector": cid,
                    "session_id": sid,
                    "transaction_id": tx,
                },
            )


async def run_demo(
    cfg: StationConfig,
    duration: float | None = None,
    as_json: bool = False,
    config_path: Path = Path("config/demo.toml"),
) -> None:
    """Start the cloud side, the simulator and the agent, drive sessions, show them live (or
    as JSON lines) until `duration` s passed, Ctrl-C or SIGTERM; then stop in order.
    DemoRunning (before anything is written) if another demo runs on the same directory."""
    lock = claim(cfg, config_path)
    try:
        await _run_claimed(cfg, duration, as_json, config_path)
    finally:
        os.close(lock)


async def _run_claimed(
    cfg: StationConfig, duration: float | None, as_json: bool, config_path: Path
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def first_signal() -> None:  # a second Ctrl-C interrupts at once
        stop.set()
        for s in signals:
            loop.remove_signal_handler(s)

    for s in signals:
        loop.add_signal_handler(s, first_signal)
    try:
        async with contextlib.AsyncExitStack() as stack:
            summary = await _run(cfg, stack, duration, as_json, stop, config_path)
    finally:
        for s in signals:
            loop.remove_signal_handler(s)
    summary.show()


class Summary:
    """What the demo did and what to try next, printed once everything stopped."""

    def __init__(self, cfg: StationConfig, feed: Feed, config_path: Path, as_json: bool):
        self.cfg, self.feed, self.config_path, self.as_json = cfg, feed, config_path, as_json

    def show(self) -> None:
        """Print it (with --json: one {"type": "summary"} object)."""
        try:
            backlog = store_status(self.cfg).backlog
        except StoreError as e:
            backlog = {"unknown": 0}
            console.print(f"the store could not be read for the summary: {e}", markup=False)
        if self.as_json:
            emit_json({"type": "summary", "records": self.feed.records, "backlog": backlog})
            return
        for line in self.feed.state.log:
            console.print(line, highlight=False, markup=False)
        waiting = ", ".join(f"{k} {v}" for k, v in backlog.items() if v) or "none"
        c = f" -c {self.config_path}"
        records = f"{self.feed.records} charge record{'s' if self.feed.records != 1 else ''}"
        lines = [
            f"demo stopped: {records} written; left to deliver: {waiting}",
            "try next — sessions and prices, the records' signatures, a usage plot, faults:",
            f"  evedge sessions list{c}",
            f"  evedge billing verify{c}",
            f"  evedge report --plot usage.png{c}",
            f"  evedge faults --history{c}",
            "and during the next demo, in a second terminal, a fault to diagnose:",
            f"  evedge simctl inject evse_error_code --connector 1 --set code=12{c}",
        ]
        for line in lines:  # not wrapped: a command stays one line to copy
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def _say(as_json: bool):
    if as_json:
        return lambda text: emit_json({"type": "demo", "message": text})
    return lambda text: console.print(text, highlight=False)


async def _run(
    cfg: StationConfig,
    stack: contextlib.AsyncExitStack,
    duration: float | None,
    as_json: bool,
    stop: asyncio.Event,
    config_path: Path,
) -> Summary:
    say = _say(as_json)
    run_dir = Path(cfg.store.path).parent
    cloud: Cloud = await prepare(cfg, run_dir, say, Own.of(cfg, say))
    stack.push_async_callback(cloud.close)
    cfg = cloud.cfg
    view = None
    if cloud.csms is not None and cfg.ocpp is not None:
        view = CsmsView(cloud.csms, cfg.ocpp.charge_point_id or cfg.station.id)
    sim = SimStation(cfg)
    await sim.start()
    stack.push_async_callback(sim.stop)
    control = ControlServer(sim, cfg.sim.control_port)  # `evedge simctl`
    await control.start()
    stack.push_async_callback(control.stop)
    agent = Agent(cfg)
    state = LiveState(cfg)
    if cloud.mqtt_skipped is not None:
        state.sync_skipped["mqtt"] = cloud.mqtt_skipped
    if cfg.ocpp is None:
        state.sync_skipped["ocpp"] = "no [ocpp] section in the config"
    feed = Feed(agent, state, view, as_json)
    if agent.driver is not None:  # the simulated display: `watch cat .demo/display.txt`
        agent.driver.add_display(ConsoleDisplay(path=cfg.store.path.parent / "display.txt"))
    await agent.start()
    stack.push_async_callback(agent.stop)
    actors = [
        asyncio.create_task(DemoDriver(agent, sim, c, state).run(), name=f"demo connector {c.id}")
        for c in cfg.connector
    ]
    if view is not None:
        script = LimitScript(view, lambda text, obj: feed.tell(text, {"type": "csms", **obj}))
        actors.append(asyncio.create_task(script.run(), name="demo csms script"))
    with contextlib.ExitStack() as screen:
        live = None
        if not as_json:
            live = screen.enter_context(
                # The alternate screen: each refresh replaces the whole view (no stale
                # lines); the summary with the last events is printed after it.
                Live(
                    render(state),
                    console=console,
                    refresh_per_second=4,
                    screen=console.is_terminal,
                )
            )
        pump = asyncio.create_task(feed.run(live), name="demo feed")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
            state.note("stopping: ending the running sessions, delivering what is queued")
            await cancel_and_wait(actors)
            await _close_sessions(agent)
            await agent.flush(FLUSH_S)
        finally:
            await cancel_and_wait([pump])
            await feed.step(poll_now=True)
            feed.close()
            if live is not None:
                live.update(render(state))
    return Summary(cfg, feed, config_path, as_json)


async def _close_sessions(agent: Agent) -> None:
    """End running sessions as a technician would, so the demo leaves only complete records
    (the simulator goes away with the demo; a restart could not resume them)."""
    engine = agent.sessions
    if engine is None:
        return
    for cid, conn in engine.connectors.items():
        if conn.session is not None:
            with contextlib.suppress(CommandRefused, TimeoutError):
                await asyncio.wait_for(engine.stop(cid, by="cli"), 15)
