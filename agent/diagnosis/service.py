"""The diagnosis service: the engine as a bus consumer, with persistence and a 1 s tick.

Readings and device health come in from the bus. The engine runs on every batch of
events, at the moment a pending fault's raise/clear time runs out or a condition turns by
time alone (a look-back window's edge, a not-available time reached: engine.next_wake),
and on a 1 s tick when the bus is quiet (time alone can raise or clear a fault).
Its FaultRaised / FaultLatch / FaultCleared go out on the bus and into the store. A
technician's clear (`clear_fault`, `clear_for_reset`) goes the same way. At start the faults
still active in the store are handed back to the engine: re-evaluated, not forgotten, and
not published again; `restored_faults()` hands them to consumers that act on a raise (the
session engine's derating and Faulted connectors).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from agent.bus import EventBus
from agent.config import StationConfig
from agent.diagnosis.config import DiagnosisConfig
from agent.diagnosis.engine import DiagnosisEngine
from agent.diagnosis.facts import CloudStatus, ConnectorFacts, StationFacts
from agent.diagnosis.rules import Rule, load_rules
from agent.diagnosis.store import FaultLog
from agent.events import (
    READINGS,
    DeviceHealth,
    Event,
    FaultCleared,
    FaultRaised,
    utcnow,
)
from drivers.profile import Profile

log = structlog.get_logger(__name__)


def diagnosis_config(cfg: StationConfig) -> DiagnosisConfig:
    """The station's [diagnosis] section (defaults when it has none)."""
    return getattr(cfg, "diagnosis", None) or DiagnosisConfig()


class DiagnosisService:
    """Run the engine on the bus; see the module docstring."""

    def __init__(
        self,
        cfg: StationConfig,
        bus: EventBus,
        profiles: Mapping[str, Profile],
        *,
        facts: StationFacts | None = None,
        rules: Mapping[str, Rule] | None = None,
        fault_log: FaultLog | None = None,
        tick_s: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        connectors: ConnectorFacts | None = None,
    ):
        dcfg = diagnosis_config(cfg)
        self.cloud = CloudStatus(configured=bool(dcfg.cloud_endpoints))
        self.facts = facts or StationFacts.for_store(cfg.store.path, self.cloud)
        self.engine = DiagnosisEngine(
            cfg, rules or load_rules(dcfg.rules_dir), profiles, self.facts, clock, dcfg, connectors
        )
        self.bus = bus
        self.dcfg = dcfg
        self.tick_s = tick_s
        self.store_path = cfg.store.path
        self.log = fault_log  # opened in run(): an agent built but never started holds nothing
        # Subscribe now: nothing published before run() starts is missed.
        self._sub = bus.subscribe(*READINGS, DeviceHealth, maxsize=20_000)
        self.raised = 0
        self.cleared = 0
        self._restored = asyncio.Event()  # set once run() restored the store's faults
        self._restored_faults: list[FaultRaised] = []

    def derate_limits(self) -> dict[str, float]:
        """Rule id -> the current (A) its raised fault derates a connector to (derate_a)."""
        return {rid: r.derate_a for rid, r in self.engine.rules.items() if r.derate_a}

    async def restored_faults(self) -> list[FaultRaised]:
        """The faults raised before a restart and still active at start (waits until run()
        restored them). They are not published again: a later FaultCleared ends them."""
        await self._restored.wait()
        return list(self._restored_faults)

    async def run(self) -> None:
        """Diagnose until cancelled."""
        probe = None
        try:
            if self.log is None:
                self.log = await asyncio.to_thread(FaultLog, self.store_path)
            await self._restore()
            self._restored.set()
            if self.dcfg.cloud_endpoints and self.facts.cloud is self.cloud:
                probe = asyncio.create_task(self._probe_cloud(), name="diagnosis cloud probe")
            while True:
                # Wake on the next event, the tick, the moment a pending fault is due or a
                # condition turns by time alone, whichever comes first: raise/clear times
                # are kept to the millisecond.
                due = self.engine.next_wake()
                wait = self.tick_s if due is None else min(self.tick_s, due + 0.001)
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel
                    # that meets an arriving event, and the agent's stop waits for ever.
                    async with asyncio.timeout(wait):
                        first = await self._sub.get()
                except TimeoutError:
                    first = None
                batch = [first] if first is not None else []
                while (ev := self._sub.get_nowait()) is not None:
                    batch.append(ev)
                self.engine.ingest_many(batch)
                await self._emit(self.engine.evaluate())
        finally:
            self._restored.set()  # whoever waits for the restore must not wait forever
            if probe is not None:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
            self._sub.close()
            if self.log is not None:
                self.log.close()

    async def _restore(self) -> None:
        assert self.log is not None
        records = await asyncio.to_thread(self.log.active)
        latches = {r.raised.fault_id: r.latch for r in records if r.latch is not None}
        retired = self.engine.restore([r.raised for r in records], latches)
        gone = {c.fault_id for c in retired}
        self._restored_faults = [r.raised for r in records if r.raised.fault_id not in gone]
        if records:
            log.info("diagnosis.restored", active=len(records) - len(retired), retired=len(retired))
        await self._emit(list(retired))

    async def clear_fault(self, fault_id: str, by: str, note: str = "") -> FaultCleared:
        """A technician clears an active fault (recorded with who, when and the note).
        KeyError if no fault with this id is active."""
        await self._restored.wait()  # a fault restored from the store is clearable too
        cleared = self.engine.clear_manual(fault_id, by, note)
        await self._emit([cleared])
        return cleared

    async def clear_for_reset(
        self, connector: int | None, by: str, note: str = ""
    ) -> list[FaultCleared]:
        """Clear the latched faults that only a technician clears (clear = manual) on
        `connector` (None: every connector): an OCPP Reset or ChangeAvailability Operative."""
        await self._restored.wait()
        cleared = [
            self.engine.clear_manual(fid, by, note) for fid in self.engine.latched_manual(connector)
        ]
        await self._emit(list(cleared))
        return cleared

    async def _emit(self, events: list[Event]) -> None:
        if not events:
            return
        for e in events:
            if isinstance(e, FaultRaised):
                self.raised += 1
            elif isinstance(e, FaultCleared):
                self.cleared += 1
        self.bus.publish_many(events)
        assert self.log is not None
        try:
            await asyncio.to_thread(self.log.record_many, events)  # type: ignore[arg-type]
        except Exception as e:  # the bus has them; a full disk must not stop diagnosis
            log.error(
                "diagnosis.store_failed", path=str(self.log.path), error=str(e), events=len(events)
            )

    async def _probe_cloud(self) -> None:
        """Until a sync client reports contacts itself: TCP-connect to the endpoints."""
        while True:
            for endpoint in self.dcfg.cloud_endpoints:
                if await reachable(endpoint):
                    self.cloud.last_contact = utcnow()
                    break
            await asyncio.sleep(self.dcfg.cloud_probe_interval_s)


async def reachable(endpoint: str, timeout_s: float = 5.0) -> bool:
    """True if a TCP connection to host:port opens within `timeout_s`."""
    host, _, port = endpoint.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
