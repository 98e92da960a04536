"""The broker connection: one paho-mqtt client per connection, on a network thread we own.

TLS with CA verification (optional client certificate), username/password read from a file
kept private, keepalive, persistent session (MQTT 5: clean start false + session expiry;
3.1.1: clean session false), the `offline` Last Will set at every connect, and reconnect
with exponential backoff and full jitter. A fresh paho client per connection means nothing
is retransmitted behind the outbox's back: after a reconnect the publisher resends every
message the broker has not acknowledged, in order (duplicates carry the same msg_id).

Callbacks run on the network thread; `Handlers` must not block it.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.mqtt.config import MqttConfig, read_password

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Incoming:
    """A message the broker delivered to us (a command)."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


@dataclass
class Handlers:
    """What the connection reports, from its network thread. `gen` numbers connections."""

    birth: Callable[[], tuple[bytes, bytes]]  # (online payload, offline Last Will payload)
    up: Callable[[int, paho.Client], None]
    down: Callable[[int], None]
    acked: Callable[[int, int, bool], None]  # gen, mid, accepted by the broker
    message: Callable[[Incoming], None]


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [lo, min(hi, lo * 2**attempt)]."""
    return rng.uniform(lo, min(hi, lo * 2 ** min(attempt, 30)))


class Connection:
    """Connects, stays connected, reconnects; see the module docstring."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        status_topic: str,
        command_filter: str,
        handlers: Handlers,
    ):
        self.cfg = cfg
        self.client_id = client_id
        self.status_topic = status_topic
        self.command_filter = command_filter
        self.h = handlers
        # Read once: a bad password file fails the start with a clear message.
        self._password = read_password(cfg.password_file) if cfg.password_file else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._rng = random.Random()
        self.gen = 0
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self._was_up = False
        self._attempt_failed = False
        self._online = b""

    @property
    def thread(self) -> threading.Thread | None:
        """The network thread (None before start)."""
        return self._thread

    @property
    def v5(self) -> bool:
        """MQTT 5 (else 3.1.1)."""
        return self.cfg.protocol == "5"

    def start(self) -> None:
        """Start the network thread (it connects and keeps reconnecting until stop())."""
        self._thread = threading.Thread(target=self._run, name="mqtt-net", daemon=True)
        self._thread.start()

    def stop(self, offline_payload: bytes | None, timeout: float = 3.0) -> None:
        """Publish `offline` (retained) if connected, disconnect, join the thread."""
        self._stop.set()
        client = self._client
        if client is not None and self.connected and offline_payload is not None:
            info = client.publish(self.status_topic, offline_payload, qos=1, retain=True)
            # If the connection goes away meanwhile, the Last Will says offline instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        if client is not None:
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout + 2)

    # ------------------------------------------------------------------ network thread

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._make_client()
            try:
                client.connect(
                    self.cfg.host,
                    self.cfg.port,
                    keepalive=self.cfg.keepalive_s,
                    clean_start=False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=self._connect_properties(),
                )
                self._client = client
                client.loop_forever()
                if not self._was_up and not self._attempt_failed:
                    self._failed("the connection closed before the broker accepted it")
            except (OSError, ValueError) as e:  # refused, unreachable, TLS verification
                self._failed(str(e) or type(e).__name__)
            except Exception as e:  # a bug in a callback must not end the reconnect loop
                log.exception("mqtt.connection_error", error=str(e))
                self._failed(type(e).__name__)
            finally:
                self._client = None
                if self.connected:
                    self.connected = False
                    self.h.down(self.gen)
            if self._stop.is_set():
                break
            attempt = 0 if self._was_up else attempt + 1
            delay = backoff_delay(
                attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng
            )
            log.info("mqtt.reconnect_wait", delay_s=round(delay, 2), attempt=attempt)
            self._stop.wait(delay)

    def _failed(self, error: str) -> None:
        self.last_error = error
        self._was_up = False
        self._attempt_failed = True
        log.warning("mqtt.connect_failed", host=self.cfg.host, port=self.cfg.port, error=error)

    def _make_client(self) -> paho.Client:
        self._was_up = self._attempt_failed = False
        proto = paho.MQTTv5 if self.v5 else paho.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if self.v5 else False,
            protocol=proto,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(self.cfg.inflight_window)
        if self.cfg.tls:
            client.tls_set(
                ca_certs=str(self.cfg.ca_file) if self.cfg.ca_file else None,
                certfile=str(self.cfg.cert_file) if self.cfg.cert_file else None,
                keyfile=str(self.cfg.key_file) if self.cfg.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self._password)
        online, offline = self.h.birth()
        self._online = online
        client.will_set(self.status_topic, offline, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _connect_properties(self) -> Properties | None:
        if not self.v5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        return props

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            # Bad credentials or not authorized: keep retrying with backoff, say why.
            self._failed(f"broker refused the connection: {reason}")
            client.disconnect()
            return
        self.gen += 1
        self.connects += 1
        self.connected = True
        self._was_up = True
        self.last_error = None
        log.info(
            "mqtt.connected",
            host=self.cfg.host,
            port=self.cfg.port,
            protocol=self.cfg.protocol,
            tls=self.cfg.tls,
            session_present=bool(flags.session_present),
            connection=self.connects,
        )
        client.publish(self.status_topic, self._online, qos=1, retain=True)
        if self.v5:
            client.subscribe(self.command_filter, options=SubscribeOptions(qos=1, noLocal=True))
        else:
            client.subscribe(self.command_filter, qos=1)
        self.h.up(self.gen, client)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning("mqtt.disconnected", reason=str(reason))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        # A refusal (reason code >= 0x80) is logged, rate-limited, by the publisher.
        self.h.acked(self.gen, mid, not getattr(reason, "is_failure", False))

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        self.h.message(Incoming(msg.topic, bytes(msg.payload), response, corr))
