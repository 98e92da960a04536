"""What every OCPP handler mixin can reach, and how mixins plug into the charge point.

The charge point class (agent/ocpp/client.py) is composed of one mixin per feature profile:
core, transactions, smart charging, local list, remote trigger, diagnostics. Each mixin
lives in its own module under agent/ocpp/handlers/, carries its `@on(Action)` handlers and
may implement these cooperative hooks (always call `super()` first):

- `async def on_online(self) -> None` — after BootNotification was accepted, on every
  (re)connect: e.g. send StatusNotification for each connector, start draining the outbox.
- `async def on_offline(self) -> None` — the WebSocket closed.

and these sender methods, which TriggerMessage and the other mixins call by name:

- `send_boot_notification()`, `send_heartbeat()`, `send_status(connector_id)` (core)
- `send_meter_values(connector_id)` (transactions)
- `send_diagnostics_status()`, `send_firmware_status()` (diagnostics)

Sending: every sender goes through `self.ctx.link.call(payload)` (an `ocpp.v16.call.*`
dataclass; send no Decimals). Until the CSMS accepted BootNotification the link refuses
(OcppOffline) every call but BootNotification, except those passed `triggered=True` (sent
because the CSMS asked with TriggerMessage). The library routes an incoming CALL inline in
its receive loop: a handler must not await `link.call` (deadlock until the call timeout);
answer first and send from an `@after` hook or a spawned task.

Shared parts (`ctx.parts`), set by agent/ocpp/service.py before the first connection:

- "charge_point_id": str — the id in the URL and BootNotification.
- "config_keys": agent.ocpp.config_keys.ConfigKeys — typed getters, subscribe, add_readonly.
- "service": agent.ocpp.service.OcppService — `state()`, `schedule_reset(kind)`.
- "outbox" (transactions): read by `OcppService.state()` via `backlog()` if present.

`ctx.store` is a `agent.store.db.Store` opened for OCPP; `store.tx()` / `store.reading()`
give the connection for a feature's own tables.

State that must outlive one WebSocket connection (configuration keys, the outbox, charging
profiles, the local list) lives in the store and in `OcppContext`, never on the charge point
instance: a reconnect builds a new instance around the same context.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.bus import EventBus
    from agent.config import StationConfig
    from agent.sessions.engine import SessionEngine
    from agent.store.db import Store


class OcppOffline(Exception):
    """No WebSocket to the CSMS right now; the call was not sent."""


class OcppCallError(Exception):
    """The CSMS answered a call with CALLERROR (code and description in the message)."""

    def __init__(self, action: str, code: str, description: str):
        self.action, self.code, self.description = action, code, description
        super().__init__(f"{action}: CSMS answered CALLERROR {code}: {description}")


class OcppLink(Protocol):
    """The live connection as the senders see it (implemented by agent/ocpp/service.py)."""

    online: asyncio.Event

    async def call(
        self,
        payload: Any,
        *,
        triggered: bool = False,
        unique_id: str | None = None,
        validate: bool = True,
    ) -> Any:
        """Send one call; return the confirmation payload.

        `triggered`: sent in answer to TriggerMessage (allowed before the boot is accepted).
        `unique_id`: the OCPP message id to use (the transaction outbox re-sends a message
        under its own id, so a central system can tell a retry from a new message).
        `validate=False`: skip the library's JSON-schema check of the request and its
        answer (the outbox's MeterValues: our own stored entries, whose check grows with a
        batch's size and was the largest share of the agent's CPU per batched CALL; a
        payload the CSMS refuses comes back as CALLERROR and stays queued).

        Raises OcppOffline (not sent), OcppCallError (CALLERROR answer) or TimeoutError
        (sent, no answer within the call timeout). Never suppresses a CALLERROR.
        """
        ...


@dataclass
class OcppContext:
    """The charge point's long-lived collaborators, shared by every mixin and every connection."""

    cfg: StationConfig
    store: Store
    bus: EventBus
    link: OcppLink
    sessions: SessionEngine | None = None
    # Feature objects register themselves here by name (e.g. "config_keys", "outbox",
    # "smart_charging") so mixins of other profiles can reach them without import cycles.
    parts: dict[str, Any] = field(default_factory=dict)
