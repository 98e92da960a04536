"""A real mosquitto broker for the MQTT tests, certificates for TLS/mTLS, and a backend.

`Broker` runs mosquitto (hil/broker.py) on a free loopback port with persistent sessions on
disk, so a restart keeps what subscribers have not received yet. `make_pki`
writes a CA, a server certificate for 127.0.0.1 and a client certificate with
`cryptography`. `Backend` is the cloud side: a paho client with a persistent session that
records every message under the station's topics and sends commands.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hil.broker import Mosquitto, ServerTls

# ---------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: the agent must refuse the broker with it


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = name if issuer is None else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]
    )  # fmt: skip
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    signer = key if issuer is None else issuer[1]
    return b.sign(signer, hashes.SHA256())


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, srv_key, cli_key = _key(), _key(), _key(), _key()
    files = {}
    for name, cert in {
        "ca.pem": _cert("evedge test CA", ca_key, None, ca=True),
        "other-ca.pem": _cert("someone else's CA", other_key, None, ca=True),
        "server.pem": _cert("127.0.0.1", srv_key, ("evedge test CA", ca_key), san=True),
        "client.pem": _cert("TEST", cli_key, ("evedge test CA", ca_key)),
    }.items():
        (d / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[name] = d / name
    _write_key(srv_key, d / "server.key")
    _write_key(cli_key, d / "client.key")
    return Pki(
        files["ca.pem"],
        files["server.pem"],
        d / "server.key",
        files["client.pem"],
        d / "client.key",
        files["other-ca.pem"],
    )


# ---------------------------------------------------------------------- the broker


class Broker(Mosquitto):
    """mosquitto (hil/broker.py) on 127.0.0.1:<free port> with persistent sessions on disk;
    `tls`: "none" | "tls" | "mtls" with the certificates of `pki`; `users`: name -> password;
    `acl`: mosquitto's acl_file."""

    def __init__(
        self,
        d: Path,
        *,
        tls: str = "none",
        pki: Pki | None = None,
        users: dict[str, str] | None = None,
        acl: Path | None = None,
    ):
        server_tls = None
        if tls != "none":
            assert pki is not None
            server_tls = ServerTls(pki.ca, pki.server_cert, pki.server_key, tls == "mtls")
        super().__init__(d, persistence=True, tls=server_tls, users=users, acl=acl)
        self.tls = tls
        self.pki = pki


# ---------------------------------------------------------------------- the cloud side


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None

    def json(self) -> dict[str, Any]:
        return json.loads(self.payload)


class Backend:
    """The operator's backend: records every message under `<prefix>/#`, sends commands."""

    def __init__(
        self,
        broker: Broker,
        prefix: str = "evedge/v1",
        *,
        client_id: str = "backend",
        protocol: str = "5",
        tls_ca: Path | None = None,
    ):
        self.broker = broker
        self.prefix = prefix
        self.v5 = protocol == "5"
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self.v5 else False,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        if broker.pki is not None and broker.tls == "mtls":
            self.client.tls_set(
                ca_certs=str(broker.pki.ca),
                certfile=str(broker.pki.client_cert),
                keyfile=str(broker.pki.client_key),
            )
        if broker.users:
            user = next(iter(broker.users))
            self.client.username_pw_set(user, broker.users[user])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def connect(self) -> Backend:
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(
            "127.0.0.1",
            self.broker.port,
            clean_start=False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()
        assert self._subscribed.wait(10), "backend did not subscribe"
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _u, _f, reason, _p) -> None:
        if not reason.is_failure:
            client.subscribe(f"{self.prefix}/#", 1)

    def _on_message(self, _c, _u, msg) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, corr))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def on(self, suffix: str) -> list[Received]:
        """Messages received on `<prefix>/<station>/<suffix>` (any station)."""
        return [m for m in self.snapshot() if m.topic.split("/", 3)[-1] == suffix]

    def wait(self, pred: Callable[[list[Received]], bool], timeout: float = 20, what="") -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or pred}")
            time.sleep(0.02)

    def command(
        self,
        station: str,
        name: str,
        payload: dict | bytes | None = None,
        *,
        args: dict | None = None,
        ttl_s: float = 60,
        response: str | None = None,
    ) -> tuple[str, bytes]:
        """Publish command `name`; returns (its id, correlation data). `payload` overrides
        the generated request (bytes are sent as they are)."""
        cid = f"cmd-{uuid.uuid4().hex[:16]}"
        if payload is None:
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_s)
            payload = {"id": cid, "expires": expires.isoformat(), "args": args or {}}
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        corr = os.urandom(8)
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            # The station replies only under its own reply/ tree (agent/mqtt/commands.py).
            props.ResponseTopic = response or f"{self.prefix}/{station}/reply/backend"
            props.CorrelationData = corr
        topic = f"{self.prefix}/{station}/cmd/{name}"
        self.client.publish(topic, body, qos=1, properties=props).wait_for_publish(5)
        return cid, corr
