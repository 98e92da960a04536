"""The port for a process other than the running agent (a CLI command such as `evedge update
apply`): the same security log and, with [ocpp], the same durable OCPP outbox, from which the
running agent (or the next one to start) sends the SecurityEventNotification. The MQTT
stream is the agent's bus only: a CLI's events are not on it."""

from __future__ import annotations

from pathlib import Path

from agent.config import StationConfig
from agent.security.log import SecurityEvent, SecurityLog, Sink, log_path_for


def port_for(cfg: StationConfig) -> SecurityLog:
    """A `SecurityEvents` port writing where the agent of `cfg` does."""
    port = SecurityLog(log_path_for(cfg.store.path))
    if cfg.ocpp is not None:
        port.add_sink(_outbox_sink(cfg.store.path))
    return port


def _outbox_sink(store_path: Path) -> Sink:
    """Queue each event in the store's OCPP outbox, opened for that event only (a CLI must
    not hold the store open)."""
    from agent.ocpp.outbox import Outbox  # the ocpp stack only where [ocpp] is configured
    from agent.security.ocpp16 import outbox_sink

    def sink(ev: SecurityEvent) -> None:
        box = Outbox(store_path)
        try:
            outbox_sink(box)(ev)
        finally:
            box.close()

    return sink
