"""The root of every handler mixin: cooperative no-op hooks and the shared context.

Each mixin (core, transactions, ...) subclasses `OcppMixin`. Hooks chain through `super()`, so
every mixin's `on_online`/`on_offline` runs; always `await super().on_online()` first.
"""

from __future__ import annotations

from agent.ocpp.context import OcppContext


class OcppMixin:
    """Base of the handler mixins; `EvedgeChargePoint` sets `self.ctx` before any hook runs."""

    ctx: OcppContext

    @classmethod
    def setup(cls, ctx: OcppContext) -> None:
        """Once per service, before the first connection: create the profile's long-lived
        parts in `ctx.parts` (e.g. the outbox, the online authorizer). Call super() first."""

    async def on_online(self) -> None:
        """BootNotification accepted on this connection (every (re)connect)."""

    async def on_offline(self) -> None:
        """The WebSocket closed; the instance is discarded afterwards."""
