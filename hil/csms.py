"""A small OCPP 1.6J central system (CSMS) for tests and demos, built on the `ocpp` library.

    csms = TestCsms()                          # 127.0.0.1, a free port (or port=N)
    await csms.start()                         # -> the port; csms.url = "ws://127.0.0.1:N"
    csms.boot_status = "Pending"               # answers are plain attributes, change any time
    got = await csms.wait_for("StatusNotification", cp_id="CP1", where={"connectorId": 1})
    result = await csms.call("CP1", call.ChangeConfiguration(key="HeartbeatInterval", value="5"))
    await csms.stop(); await csms.start()      # an outage: same port again
    await csms.stop()

Charge points connect to `<url>/<charge point id>` with subprotocol `ocpp1.6`.

API (stable; the OCPP tests of issue 5 and `python -m hil.csms` use it):

- `TestCsms(host="127.0.0.1", port=0, *, ssl=None, credentials=None)`: `ssl` is a server
  `ssl.SSLContext` (set `verify_mode = CERT_REQUIRED` on it for security profile 3);
  `credentials` maps charge point id -> password and turns on HTTP Basic auth (profile 1/2):
  a missing or wrong `Authorization` header is refused with HTTP 401 and recorded in
  `auth_failures` (charge point id, reason).
- `start() -> int` (port), `stop()` (closes every connection), `url`, `port`, `running`.
- Answers (attributes): `boot_status` ("Accepted" | "Pending" | "Rejected"), `boot_interval`
  (s), `auth_status` (per idTag dict; `default_auth_status` otherwise), `next_transaction_id`
  (counter, incremented per StartTransaction), `data_transfer_status`, `silent` (True: record
  calls but never answer, for timeout tests), `answer_delay_s` (answer every call that
  late: a round-trip time for benchmarks).
- `responders[action] = fn(cp_id, payload) -> dict | None`: a custom answer (camelCase payload
  dict) for any action; raise an `ocpp.exceptions.OCPPError` to answer CALLERROR; return
  None to fall back to the built-in answer.
- Records: `received[cp_id]` is the list of `Received(action, payload, time, unique_id)` of every
  CALL the charge point sent, in arrival order (payload as sent: camelCase JSON);
  `actions(cp_id)` the action names; `connections` counts accepted WebSocket connections per
  charge point; `subprotocols[cp_id]` the negotiated subprotocol of the latest connection.
- `await wait_for(action, cp_id=None, where=None, count=1, timeout=10) -> Received`: the
  `count`-th matching CALL (`where`: payload items that must be equal), recorded or future.
- `await wait_connected(cp_id, timeout=10)`, `connected(cp_id) -> bool`,
  `await disconnect(cp_id)` (close the WebSocket from the CSMS side), `hang(cp_id, seconds)`
  (read nothing from that connection for a while: pings go unanswered).
- `await call(cp_id, payload, timeout=10, validate=True)`: send a CSMS -> CP call (an
  `ocpp.v16.call.*` dataclass); returns the `call_result` dataclass, raises the CALLERROR as
  an OCPPError; `validate=False` skips the schema check of the request and its answer.
- `await send_raw(cp_id, frame, timeout=10) -> list`: send a frame exactly as given (str, or
  bytes as a binary frame; bad-input and fuzz tests) and return the charge point's next
  CALLRESULT/CALLERROR as parsed JSON; TimeoutError if none came. One at a time per charge
  point, and not while a `call()` to it is waiting. `await send_only(cp_id, frame)`: send a
  frame that expects no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import ssl as ssl_mod
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, MessageType, unpack
from ocpp.v16 import ChargePoint as _CentralSide
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

SUBPROTOCOL = "ocpp1.6"
Responder = Callable[[str, dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class Received:
    """One CALL the CSMS received."""

    action: str
    payload: dict[str, Any]
    time: float
    unique_id: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Peer(_CentralSide):
    """The central-system side of one charge point connection."""

    def __init__(self, csms: TestCsms, cp_id: str, connection: ServerConnection):
        super().__init__(cp_id, connection, response_timeout=10)
        self.csms = csms
        self.raw_reply: asyncio.Future[list] | None = None  # a send_raw() waiting

    async def route_message(self, raw_msg: Any) -> None:
        try:
            msg = unpack(raw_msg)
        except OCPPError:
            return
        if msg.message_type_id != MessageType.Call:
            if self.raw_reply is not None and not self.raw_reply.done():
                self.raw_reply.set_result(json.loads(raw_msg))
                return
            await super().route_message(raw_msg)
            return
        await self.csms._record(self.id, msg)
        if self.csms.silent:
            return
        if self.csms.answer_delay_s:
            await asyncio.sleep(self.csms.answer_delay_s)
        try:
            answer = self.csms._answer(self.id, msg.action, msg.payload)
            if answer is None:
                raise _unknown(msg.action)
            reply = msg.create_call_result(answer).to_json()
        except OCPPError as e:
            reply = msg.create_call_error(e).to_json()
        with contextlib.suppress(ConnectionClosed):
            await self._send(reply)


def _unknown(action: str) -> OCPPError:
    return OcppNotImplemented(details={"cause": f"test CSMS has no answer for {action}"})


class TestCsms:
    """See the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_mod.SSLContext | None = None,
        credentials: dict[str, str] | None = None,
    ):
        self.host, self.port, self.ssl, self.credentials = host, port, ssl, credentials
        self.boot_status = "Accepted"
        self.boot_interval = 300
        self.auth_status: dict[str, str] = {}
        self.default_auth_status = "Accepted"
        self.next_transaction_id = 1
        self.data_transfer_status = "Accepted"
        self.silent = False
        self.answer_delay_s = 0.0
        self.responders: dict[str, Responder] = {}
        self.received: dict[str, list[Received]] = {}
        self.connections: dict[str, int] = {}
        self.subprotocols: dict[str, str | None] = {}
        self.auth_failures: list[tuple[str, str]] = []
        self._peers: dict[str, _Peer] = {}
        self._server: Server | None = None
        self._changed = asyncio.Condition()
        self._hung: list[tuple[asyncio.TimerHandle, asyncio.Transport]] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL; charge points append `/<id>`."""
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    async def start(self) -> int:
        """Listen (again on the same port after a stop); return the port."""
        self._server = await serve(
            self._serve,
            self.host,
            self.port,
            subprotocols=[SUBPROTOCOL],
            process_request=self._check_auth,
            ssl=self.ssl,
            ping_interval=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is None:
            return
        for resume, transport in self._hung:  # a hung connection must see its close now
            resume.cancel()
            if not transport.is_closing():
                transport.resume_reading()
        self._hung.clear()
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        self._peers.clear()
        await self._notify()

    # ------------------------------------------------------------------ connections

    def _check_auth(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.credentials is None:
            return None
        cp_id = request.path.rstrip("/").rsplit("/", 1)[-1]
        header = request.headers.get("Authorization", "")
        reason = "no Authorization header"
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if user != cp_id:
                reason = "user is not the charge point id"
            elif self.credentials.get(cp_id) != password:
                reason = "wrong password"
            else:
                return None
        self.auth_failures.append((cp_id, reason))
        return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")

    async def _serve(self, connection: ServerConnection) -> None:
        cp_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1]
        self.subprotocols[cp_id] = connection.subprotocol
        if connection.subprotocol != SUBPROTOCOL:
            await connection.close(1002, "subprotocol ocpp1.6 required")
            return
        peer = _Peer(self, cp_id, connection)
        self._peers[cp_id] = peer
        self.connections[cp_id] = self.connections.get(cp_id, 0) + 1
        await self._notify()
        try:
            await peer.start()
        except ConnectionClosed:
            pass
        finally:
            if self._peers.get(cp_id) is peer:
                del self._peers[cp_id]
            await self._notify()

    def connected(self, cp_id: str) -> bool:
        """Is the charge point connected now?"""
        return cp_id in self._peers

    async def wait_connected(self, cp_id: str, timeout: float = 10) -> None:
        """Wait until the charge point is connected."""
        await self._wait(lambda: self.connected(cp_id), timeout)

    async def disconnect(self, cp_id: str) -> None:
        """Close the charge point's WebSocket from this side."""
        peer = self._peers.get(cp_id)
        if peer is not None:
            await peer._connection.close()

    def hang(self, cp_id: str, seconds: float) -> None:
        """Stop reading the charge point's connection for `seconds` (no pongs, no answers):
        a CSMS that hangs, or a path that silently drops packets."""
        peer = self._peers.get(cp_id)
        if peer is None:
            raise ConnectionError(f"charge point {cp_id} is not connected")
        transport = peer._connection.transport
        transport.pause_reading()
        resume = asyncio.get_running_loop().call_later(seconds, transport.resume_reading)
        self._hung.append((resume, transport))

    async def call(
        self, cp_id: str, payload: Any, timeout: float = 10, *, validate: bool = True
    ) -> Any:
        """Send a CSMS -> charge point call; return its result, raise its CALLERROR.
        `validate=False` sends a request the 1.6 schema refuses (bad-input tests)."""
        peer = self._peers.get(cp_id)
        if peer is None:
            raise ConnectionError(f"charge point {cp_id} is not connected")
        peer._response_timeout = timeout
        return await peer.call(payload, suppress=False, skip_schema_validation=not validate)

    async def send_raw(self, cp_id: str, frame: str | bytes, timeout: float = 10) -> list:
        """Send `frame` as is; return the charge point's next CALLRESULT/CALLERROR (parsed)."""
        peer = self._peer(cp_id)
        peer.raw_reply = asyncio.get_running_loop().create_future()
        try:
            await peer._connection.send(frame)
            return await asyncio.wait_for(asyncio.shield(peer.raw_reply), timeout)
        finally:
            peer.raw_reply = None

    async def send_only(self, cp_id: str, frame: str | bytes) -> None:
        """Send `frame` as is, expecting no answer (a CALLRESULT/CALLERROR)."""
        await self._peer(cp_id)._connection.send(frame)

    def _peer(self, cp_id: str) -> _Peer:
        peer = self._peers.get(cp_id)
        if peer is None:
            raise ConnectionError(f"charge point {cp_id} is not connected")
        return peer

    # ------------------------------------------------------------------ records

    async def _record(self, cp_id: str, msg: Call) -> None:
        payload = msg.payload if isinstance(msg.payload, dict) else {"_raw": msg.payload}
        self.received.setdefault(cp_id, []).append(
            Received(str(msg.action), payload, time.time(), str(msg.unique_id))
        )
        await self._notify()

    def actions(self, cp_id: str) -> list[str]:
        """Action names of the charge point's calls, in arrival order."""
        return [r.action for r in self.received.get(cp_id, [])]

    def _matches(self, action: str, cp_id: str | None, where: dict[str, Any] | None) -> list:
        ids = [cp_id] if cp_id is not None else list(self.received)
        return [
            r
            for i in ids
            for r in self.received.get(i, [])
            if r.action == action and all(r.payload.get(k) == v for k, v in (where or {}).items())
        ]

    async def wait_for(
        self,
        action: str,
        cp_id: str | None = None,
        where: dict[str, Any] | None = None,
        count: int = 1,
        timeout: float = 10,
    ) -> Received:
        """The `count`-th CALL of `action` matching `where` (TimeoutError if none came)."""
        await self._wait(lambda: len(self._matches(action, cp_id, where)) >= count, timeout)
        return self._matches(action, cp_id, where)[count - 1]

    async def _wait(self, pred: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(pred)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ answers

    def _answer(self, cp_id: str, action: str, payload: dict[str, Any]) -> dict | None:
        custom = self.responders.get(action)
        if custom is not None:
            out = custom(cp_id, payload)
            if out is not None:
                return out
        if action == "BootNotification":
            return {
                "status": self.boot_status,
                "currentTime": _now(),
                "interval": self.boot_interval,
            }
        if action == "Heartbeat":
            return {"currentTime": _now()}
        if action == "Authorize":
            return {"idTagInfo": self._id_tag_info(payload.get("idTag", ""))}
        if action == "StartTransaction":
            tx = self.next_transaction_id
            self.next_transaction_id += 1
            return {"transactionId": tx, "idTagInfo": self._id_tag_info(payload.get("idTag", ""))}
        if action == "StopTransaction":
            tag = payload.get("idTag")
            return {"idTagInfo": self._id_tag_info(tag)} if tag else {}
        if action == "DataTransfer":
            return {"status": self.data_transfer_status}
        if action in (
            "StatusNotification",
            "MeterValues",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
            "SecurityEventNotification",  # OCPP 1.6 security whitepaper
            "LogStatusNotification",
        ):
            return {}
        return None

    def _id_tag_info(self, id_tag: str) -> dict[str, str]:
        return {"status": self.auth_status.get(id_tag, self.default_auth_status)}


async def _main(port: int, delay_ms: float) -> None:
    csms = TestCsms(port=port)
    csms.answer_delay_s = delay_ms / 1000
    await csms.start()
    print(f"test CSMS listening on {csms.url}/<charge point id> (Ctrl-C stops)", flush=True)
    seen: dict[str, int] = {}
    try:
        while True:
            await asyncio.sleep(0.5)
            for cp_id, calls in list(csms.received.items()):
                for r in calls[seen.get(cp_id, 0) :]:
                    print(cp_id, r.action, json.dumps(r.payload), flush=True)
                seen[cp_id] = len(calls)
    finally:
        await csms.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a test OCPP 1.6J central system")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay-ms", type=float, default=0, help="answer every call that late")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.delay_ms))
