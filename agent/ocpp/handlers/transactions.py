"""OCPP 1.6 transactions on one connection: RemoteStart/StopTransaction, meter values on
demand, and the reconnect that gives parked transaction messages a new round.

What outlives a connection (the outbox, meter sampling, the online authorizer) is the
`TxService` (agent/ocpp/txservice.py) created by `setup` as `ctx.parts["transactions"]`.
Handlers answer first and act afterwards (`@after`): starting a session may send
Authorize.req, which the library's receive loop could not deliver while it waits inside a
handler.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from ocpp.routing import after, on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, RemoteStartStopStatus

from agent.ocpp.context import OcppContext
from agent.ocpp.handlers.base import OcppMixin
from agent.ocpp.txservice import TxService
from agent.sessions.connector import CommandRefused
from agent.sessions.model import IdToken, Status, mask

log = structlog.get_logger(__name__)

# A remote start without connectorId goes to the first connector in one of these.
_FREE = (Status.AVAILABLE, Status.PREPARING)
# A remote start for a named connector: also a reserved one (the engine checks the token).
_TARGETED = (*_FREE, Status.RESERVED)


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


class TransactionsMixin(OcppMixin):
    """RemoteStartTransaction, RemoteStopTransaction, `send_meter_values` (TriggerMessage)."""

    @classmethod
    def setup(cls, ctx: OcppContext) -> None:
        """Create the long-lived TxService (also `online_authorizer`, `outbox`)."""
        super().setup(ctx)
        TxService(ctx)

    @property
    def tx(self) -> TxService:
        """The long-lived transactions service."""
        return self.ctx.parts["transactions"]

    async def on_online(self) -> None:
        """Parked transaction messages get a new round of attempts on this connection."""
        await super().on_online()
        await asyncio.to_thread(self.tx.outbox.reconnected)

    async def send_meter_values(self, connector_id: int | None = None) -> None:
        """MeterValues now, context Trigger (TriggerMessage)."""
        await self.tx.send_meter_values(connector_id)

    # ------------------------------------------------------------------ remote start

    def _start_target(self, connector_id: int | None) -> int | None:
        engine = self.ctx.sessions
        if engine is None:
            return None
        if connector_id is not None:
            conn = engine.connectors.get(connector_id)
            ok = conn is not None and conn.session is None and conn.status in _TARGETED
            return connector_id if ok else None
        for cid in sorted(engine.connectors):
            conn = engine.connectors[cid]
            if conn.session is None and conn.status in _FREE:
                return cid
        return None

    @on(Action.remote_start_transaction)
    async def _on_remote_start(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict | None = None,
        **_: Any,
    ) -> call_result.RemoteStartTransaction:
        target = self._start_target(connector_id)
        why = None
        if target is None:
            why = "no free connector" if connector_id is None else f"connector {connector_id}"
        elif charging_profile is not None:
            smart = self.ctx.parts.get("smart_charging")
            if smart is None:
                why = "smart charging is not available"
            else:
                why = smart.set_remote_start_profile(target, charging_profile)
        status = RemoteStartStopStatus.rejected if why else RemoteStartStopStatus.accepted
        log.info(
            "ocpp.remote_start",
            connector=target or connector_id,
            id_tag=mask(id_tag),
            status=status.value,
            why=why,
        )
        return call_result.RemoteStartTransaction(status=status)

    @after(Action.remote_start_transaction)
    async def _after_remote_start(
        self, id_tag: str, connector_id: int | None = None, **_: Any
    ) -> None:
        target = self._start_target(connector_id)
        engine = self.ctx.sessions
        if target is None or engine is None:
            return
        token = IdToken(id_tag, "CENTRAL")
        keys = self.ctx.parts["config_keys"]

        async def start() -> None:
            try:
                if keys.get_bool("AuthorizeRemoteTxRequests"):
                    result = await engine.authorize(target, token)  # list, cache, Authorize.req
                else:
                    result = await engine.remote_start(target, token)
            except CommandRefused as e:
                log.warning("ocpp.remote_start_refused", connector=target, why=str(e))
                return
            log.info("ocpp.remote_start_done", connector=target, result=result)

        _spawn(start())

    # ------------------------------------------------------------------ remote stop

    async def _stop_target(self, transaction_id: int) -> int | None:
        """The connector whose running session is the CSMS's transaction `transaction_id`."""
        engine = self.ctx.sessions
        if engine is None or transaction_id < 0:
            return None
        found = await asyncio.to_thread(self.tx.outbox.session_of, transaction_id)
        if found is None:
            return None
        session_id, connector = found
        conn = engine.connectors.get(connector)
        if conn is None or conn.session is None or conn.session.id != session_id:
            return None
        return connector

    @on(Action.remote_stop_transaction)
    async def _on_remote_stop(
        self, transaction_id: int, **_: Any
    ) -> call_result.RemoteStopTransaction:
        target = await self._stop_target(transaction_id)
        status = RemoteStartStopStatus.accepted if target else RemoteStartStopStatus.rejected
        log.info(
            "ocpp.remote_stop", transaction_id=transaction_id, connector=target, status=status.value
        )
        return call_result.RemoteStopTransaction(status=status)

    @after(Action.remote_stop_transaction)
    async def _after_remote_stop(self, transaction_id: int, **_: Any) -> None:
        target = await self._stop_target(transaction_id)
        engine = self.ctx.sessions
        if target is None or engine is None:
            return

        async def stop() -> None:
            try:
                await engine.stop(target, by="remote")
            except CommandRefused as e:
                log.warning("ocpp.remote_stop_refused", connector=target, why=str(e))

        _spawn(stop())
