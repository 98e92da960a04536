"""The agent's main job: poll every device, publish on the bus, keep the store."""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import inspect
import signal
from typing import TYPE_CHECKING

import structlog

from agent.bus import EventBus
from agent.config import StationConfig
from agent.diagnosis.service import DiagnosisService
from agent.kpi.history import FaultHistory
from agent.ops import Ops
from agent.sdnotify import Notifier
from agent.security.bus import bus_sink
from agent.security.log import SecurityLog, log_path_for
from agent.station import Station, build_station
from agent.store.db import Store
from agent.store.space import configure_space
from agent.store.thinning import Deadband
from agent.store.writer import StoreWriter
from agent.tasks import cancel_and_wait, supervise
from agent.update.health import report_healthy
from agent.watchdog import Liveness, Watchdog

# The services of optional config sections ([ocpp], [mqtt], [api], [driver], [billing]) are
# imported only when their section is there: a daemon without OCPP or MQTT does not carry
# the ocpp/websockets/paho stacks in memory (issue 16: RSS on a small controller).
if TYPE_CHECKING:
    from agent.api.server import ApiServer
    from agent.driver.service import DriverService
    from agent.mqtt.service import MqttService
    from agent.ocpp.service import OcppService
    from agent.sessions.engine import SessionEngine

log = structlog.get_logger(__name__)

# On SIGTERM, services get this long in total to empty their outboxes; it stays well below
# the unit's TimeoutStopSec (30 s) so the store is committed and closed before SIGKILL.
STOP_FLUSH_BUDGET_S = 10.0


class Agent:
    """The running agent: station pollers plus the store writer, on one event bus."""

    def __init__(self, cfg: StationConfig, bus: EventBus | None = None):
        self.cfg = cfg
        self.bus = bus or EventBus()
        self.station: Station = build_station(cfg, self.bus)
        self.space = configure_space(
            cfg.store.path, cfg.store.min_free_disk_mb, cfg.store.reserve_mb
        )
        self.store = Store(cfg.store.path, telemetry=True)  # readings and health only
        self.space.at_start()  # the billing reserve; says so if the disk is short of room
        self.writer = StoreWriter(
            self.store,
            self.bus,
            max_rows=cfg.store.readings_max_rows,
            max_age_days=cfg.store.readings_max_age_days,
            # Flash wear: each commit rewrites every index page its rows touch (one per
            # device and quantity), so fewer, larger batches write far less.
            commit_interval_s=cfg.store.readings_commit_s,
            max_batch=20_000,
            retention=Deadband(
                pct=cfg.store.readings_deadband_pct,
                absolute=cfg.store.readings_deadband,
                keep_s=cfg.store.readings_keep_s,
            ),
        )
        # The security events port (issue 15): one log, handed to every service that detects
        # events; the services that carry them on (OCPP, MQTT) add themselves as sinks.
        self.security = SecurityLog(log_path_for(cfg.store.path))
        self.security.add_sink(bus_sink(self.bus))
        # OCPP (issue 5) comes first: constructing it runs each profile's setup, where the
        # transactions profile registers the online authorizer the session engine asks.
        self.ocpp: OcppService | None = None
        if cfg.ocpp:
            from agent.ocpp.service import OcppService

            self.ocpp = OcppService(cfg, self.bus, security=self.security)
        online = self.ocpp.ctx.parts.get("online_authorizer") if self.ocpp else None
        # Sessions and billing run only when the config has a [billing] section.
        self.sessions: SessionEngine | None = None
        if cfg.billing:
            from agent.sessions.engine import SessionEngine

            self.sessions = SessionEngine(
                cfg, self.bus, self.station.devices, online=online, security=self.security
            )
        if self.ocpp is not None and self.sessions is not None:
            self.ocpp.attach_sessions(self.sessions)
        profiles = {name: d.profile for name, d in self.station.devices.items()}
        self.diagnosis = (
            # The session engine switches the EVSEs: it knows when charging is off for sure
            # (welded contactor without feedback) and which vehicle charges (sides).
            DiagnosisService(cfg, self.bus, profiles, connectors=self.sessions)
            if cfg.diagnosis.enabled
            else None
        )
        if self.diagnosis is not None and self.ocpp is not None:  # Reset, ChangeAvailability
            self.ocpp.ctx.parts["clear_latched_faults"] = self.diagnosis.clear_for_reset
        outbox = self.ocpp.ctx.parts.get("outbox") if self.ocpp else None
        if self.diagnosis is not None and outbox is not None:  # rule ocpp_tx_undelivered
            self.diagnosis.facts.tx_exhausted = lambda: outbox.exhausted_now
        if self.diagnosis is not None and self.sessions is not None:  # rule store_cannot_bill
            conns = self.sessions.connectors.values()
            self.diagnosis.facts.records_unwritten = lambda: sum(
                c.unwritten is not None for c in conns
            )
        # Billing follows diagnosis: the faults during a session, for its record's review.
        self.fault_history: FaultHistory | None = None
        if self.sessions is not None:
            self.fault_history = FaultHistory(self.store.reading, self.bus)
            self.sessions.faults_during = self.fault_history
        if self.diagnosis is not None and self.sessions is not None:
            # rule billing_tamper_detected; rules with derate_a
            self.diagnosis.facts.billing_tamper = self.sessions.integrity.tamper_count
            self.sessions.derate_limits = self.diagnosis.derate_limits()
            self.sessions.restored_faults = self.diagnosis.restored_faults  # after a restart
        # Driver displays and problem reports (issue 7) run when the config has [driver].
        self.driver: DriverService | None = None
        if cfg.driver:
            from agent.driver.service import DriverService

            self.driver = DriverService(cfg, self.bus, self.sessions)
        self.ops = Ops(self)
        self.api: ApiServer | None = None
        if cfg.api:
            from agent.api.server import ApiServer

            self.api = ApiServer(cfg.api, self.ops)
        self.mqtt: MqttService | None = None
        if cfg.mqtt:
            from agent.mqtt.service import MqttService

            self.mqtt = MqttService(cfg, self.bus, self.ops, security=self.security)
        if self.diagnosis is not None and self.mqtt is not None:  # rule mqtt_billing_refused
            stats = self.mqtt.publisher.stats
            self.diagnosis.facts.mqtt_billing_refused = lambda: stats.refused_kept
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start the store writer and one poller task per link."""
        log.info(
            "agent.start",
            station=self.cfg.station.id,
            devices=len(self.cfg.device),
            links=len(self.station.pollers),
            store=str(self.cfg.store.path),
        )
        if self.api is not None:  # first: a second agent on the same station stops here
            await self.api.start()
        self.security.record("StartupOfTheDevice", f"agent started, station {self.cfg.station.id}")
        self._tasks.append(asyncio.create_task(self.writer.run(), name="store-writer"))
        for p in self.station.pollers:
            self._tasks.append(asyncio.create_task(p.run(), name=f"poll {p.link.name}"))
        if self.sessions is not None:
            self._tasks.append(asyncio.create_task(self.sessions.run(), name="sessions"))
        if self.ocpp is not None:
            from agent.ocpp.service import HardReset

            # Supervised: a failure reconnects after a back-off while metering and sessions go
            # on (a restart of the process would end a suspended session as PowerLoss). Only
            # a hard reset ends the agent (exit 75).
            ocpp = supervise(
                "ocpp",
                self.ocpp.run,
                fatal=(HardReset,),
                min_s=self.cfg.ocpp.reconnect_min_s,
                max_s=self.cfg.ocpp.reconnect_max_s,
                on_failure=self.ocpp.ctx.parts["wall"].caught,
            )
            self._tasks.append(asyncio.create_task(ocpp, name="ocpp"))
        if self.diagnosis is not None:
            self._tasks.append(asyncio.create_task(self.diagnosis.run(), name="diagnosis"))
        if self.driver is not None:
            self._tasks.append(asyncio.create_task(self.driver.run(), name="driver"))
        if self.mqtt is not None:
            # Supervised like OCPP; a failure is counted with the commands' (status: mqtt
            # commands.internal_errors) and logged with task="mqtt".
            m = self.cfg.mqtt
            mqtt = supervise(
                "mqtt",
                self.mqtt.run,
                min_s=m.reconnect_min_s,
                max_s=m.reconnect_max_s,
                on_failure=functools.partial(self.mqtt.commands.wall.caught, task="mqtt"),
            )
            self._tasks.append(asyncio.create_task(mqtt, name="mqtt"))

    async def flush(self, budget_s: float = STOP_FLUSH_BUDGET_S) -> None:
        """Let every service with an outbox send what it can, `budget_s` in all.

        Contract (duck typing): any attribute of the Agent with a coroutine method
        `flush(timeout: float) -> None` is called, all of them concurrently, while every task
        still runs. It sends queued messages until its outbox is empty or `timeout` seconds
        passed, drops nothing (what is left stays in the durable outbox for the next start)
        and returns; one that overruns is cancelled and logged.
        """
        flushers = {
            name: svc.flush
            for name, svc in vars(self).items()
            if inspect.iscoroutinefunction(getattr(svc, "flush", None))
        }

        async def one(name: str, flush) -> None:
            try:
                await asyncio.wait_for(flush(budget_s), budget_s)
            except TimeoutError:
                log.warning("agent.flush_timeout", service=name, budget_s=budget_s)
            except Exception:
                log.exception("agent.flush_failed", service=name)

        await asyncio.gather(*(one(n, f) for n, f in flushers.items()))

    async def stop(self) -> None:
        """Flush outboxes, stop pollers and services, let the writer commit, then close.

        Sessions need nothing here: every step is persisted as it happens, and an open
        session is resumed (or closed) by the recovery at the next start.
        """
        if self.api is not None:  # no commands while shutting down
            await self.api.stop()
        await self.flush()
        pollers, writer = self._tasks[1:], self._tasks[:1]
        for group in (pollers, writer):
            # A task that already ended (OCPP's HardReset) is reported by wait(), not here:
            # its exception must not cut the shutdown short.
            await cancel_and_wait(t for t in group if not t.done())
        self._tasks.clear()
        if self.sessions is not None:
            self.sessions.close()
        if self.ocpp is not None:
            self.ocpp.close()
        if self.mqtt is not None:  # after the tasks: publishes `offline`, then disconnects
            await self.mqtt.close()
        self.ops.close()
        if self.fault_history is not None:
            self.fault_history.close()
        self.store.close()
        log.info("agent.stop", written=self.writer.stats.written)

    async def wait(self) -> None:
        """Return when any task ends (a crash is re-raised; the OCPP and MQTT tasks restart
        themselves, OCPP ends only on a hard reset)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()


async def run_agent(cfg: StationConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop cleanly; talks to systemd (sd_notify) if it asks."""
    # systemd's watchdog kills with SIGABRT: leave the Python stacks of the hang in the log.
    faulthandler.enable()
    notifier = Notifier.from_env()
    # Before the start: a stop asked for while the store opens and sessions recover is
    # carried out right after it, cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg)
    await agent.start()
    watchdog = Watchdog(Liveness(agent.station.pollers, agent.bus), notifier)
    dog = asyncio.create_task(watchdog.run(), name="watchdog")
    notifier.ready(f"running: {len(cfg.device)} devices on {len(agent.station.pollers)} links")
    # A release on probation is kept once it says it is healthy (agent/update/probation.py).
    healthy = asyncio.create_task(report_healthy(agent.station.pollers, cfg.store.path))
    waiter = asyncio.create_task(agent.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        notifier.stopping("stopping: flushing outboxes, committing the store")
        waiter.cancel()
        stopper.cancel()
        await cancel_and_wait([dog, healthy])
        await agent.stop()
        notifier.close()
    if waiter.done() and not waiter.cancelled() and waiter.exception():
        raise waiter.exception()
