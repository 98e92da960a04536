"""The local API server: an asyncio Unix socket speaking agent/api/protocol.py.

Read operations are open to whoever can connect (the socket's mode and group decide
that); control operations also need the peer — identified by SO_PEERCRED, not by anything
it says — to be root, the service's own user, or a member of the [api] group.

The socket's directory is created when missing. A socket file left by a crashed agent is
replaced; one a live agent still answers on is not (two agents on one station is an error);
anything that is not a socket is never removed. The file is removed at stop.

Limits, so a local user cannot starve the agent of file descriptors (OCPP, MQTT, the store
and root's own `evedge` commands need them too): at most `max_connections_per_uid` open
connections per peer uid and `max_connections` in all — one more is answered `busy` and
closed at once; a connection silent for `idle_timeout_s` is closed. When accept() fails for
want of descriptors (EMFILE/ENFILE) the accept loop backs off (0.1 s doubling to 5 s) and
logs at most once a minute. An unexpected exception in an operation is answered
`internal`, counted and logged rate-limited (agent/walls.py); the agent runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from agent.api.config import ApiConfig
from agent.api.protocol import MAX_LINE, OPERATIONS, Request, Response, encode
from agent.ops import OpError, Ops
from agent.walls import MAX_JSON_DEPTH, RateLimited, Wall, json_too_deep

log = structlog.get_logger(__name__)

DISCARD_TIMEOUT_S = 5.0  # how long an oversized request may keep sending before we hang up
BACKLOG = 128
ACCEPT_BACKOFF_S = (0.1, 5.0)  # after accept() ran out of descriptors: first, longest wait
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ApiStartError(RuntimeError):
    """The socket cannot be served (path taken, no permission)."""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """The connecting process's (pid, uid, gid), kernel-checked (SO_PEERCRED)."""
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))


def peer_of(sock: socket.socket) -> Peer:
    """The connecting process's credentials (kernel-checked) and its supplementary groups."""
    pid, uid, gid = peer_cred(sock)
    return Peer(pid, uid, gid, frozenset({gid, *_groups(pid, uid, gid)}))


def _groups(pid: int, uid: int, gid: int) -> list[int]:
    # /proc tells the process's actual groups (after a setgroups/setgid); when /proc hides
    # other users' processes (hidepid, ProtectProc=), fall back to the user's group list.
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return [int(g) for g in line.split()[1:]]
    except OSError:
        pass
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return []


def group_id(name: str) -> int | None:
    """The gid of a group name, or None if the system has no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class ApiServer:
    """Serve `ops` on the configured socket; see the module docstring."""

    def __init__(self, cfg: ApiConfig, ops: Ops):
        self.cfg = cfg
        self.ops = ops
        self.path = cfg.socket
        self.gid = group_id(cfg.group)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self._per_uid: dict[int, int] = {}
        self.wall = Wall("api")
        self.refused_connections = 0  # over a limit: answered busy and closed
        self.idle_closed = 0
        self.accept_failures = 0  # accept() out of descriptors
        self._warn = RateLimited(log.warning)

    def state(self) -> dict[str, Any]:
        """For `evedge status`: open connections, what the limits refused, internal errors."""
        return {
            "connections": sum(self._per_uid.values()),
            "refused_connections": self.refused_connections,
            "idle_closed": self.idle_closed,
            "accept_failures": self.accept_failures,
            **self.wall.state(),
        }

    def allowed(self, peer: Peer) -> bool:
        """May this peer use control operations?"""
        return peer.uid in (0, os.geteuid()) or (self.gid is not None and self.gid in peer.groups)

    async def start(self) -> None:
        """Bind the socket (replacing a stale one), set its mode and group, serve."""
        await self._clear_stale()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(self.path))
                os.chmod(self.path, self.cfg.mode)
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise ApiStartError(f"cannot serve the local API on {self.path}: {e}") from None
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop(), name="api accept")
        if self.gid is None:
            log.warning(
                "api.no_group",
                group=self.cfg.group,
                hint="control is limited to root and the service user; create the group",
            )
        else:
            try:
                os.chown(self.path, -1, self.gid)
            except OSError as e:
                log.warning("api.chown_failed", group=self.cfg.group, error=e.strerror)
        log.info("api.start", socket=str(self.path), mode=oct(self.cfg.mode), group=self.cfg.group)

    async def _clear_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ApiStartError(f"{self.path} exists and is not a socket; not touching it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 2)
        except (OSError, TimeoutError):
            self.path.unlink(missing_ok=True)  # nobody answers: left by a crashed agent
            log.info("api.stale_socket_removed", socket=str(self.path))
            return
        writer.close()
        raise ApiStartError(f"another agent is serving {self.path}; stop it first")

    async def stop(self) -> None:
        """Stop accepting, end open connections, remove the socket file."""
        if self._sock is None:
            return
        assert self._accepting is not None
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._sock.close()
        self._sock = None
        for t in list(self._handlers):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._handlers, return_exceptions=True)
        self.path.unlink(missing_ok=True)
        log.info("api.stop", socket=str(self.path))

    async def _accept_loop(self) -> None:
        """Accept connections; out of descriptors: back off and log rate-limited (asyncio's
        own server would log a traceback per attempt)."""
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        delay = ACCEPT_BACKOFF_S[0]
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:
                if e.errno not in OUT_OF_RESOURCES:
                    continue  # the peer gave up before we accepted (ECONNABORTED, ...)
                self.accept_failures += 1
                self._warn("accept", "api.accept_failed", error=e.strerror, retry_in_s=delay,
                           hint="the process is out of file descriptors (LimitNOFILE)")  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, ACCEPT_BACKOFF_S[1])
                continue
            delay = ACCEPT_BACKOFF_S[0]
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        """Serve `conn`, or answer busy and close it when its uid or everyone is at the limit."""
        try:
            pid, uid, _ = peer_cred(conn)  # cheap; the groups are looked up once admitted
        except OSError:
            conn.close()
            return
        held = self._per_uid.get(uid, 0)
        if held >= self.cfg.max_connections_per_uid or (
            sum(self._per_uid.values()) >= self.cfg.max_connections
        ):
            self.refused_connections += 1
            self._warn(f"limit:{uid}", "api.connection_refused", uid=uid, pid=pid, held=held,
                       limit=self.cfg.max_connections_per_uid)  # fmt: skip
            busy = Response.failure(
                "busy", f"too many open connections (uid {uid} holds {held}); close some"
            )
            with contextlib.suppress(OSError):
                conn.send(encode(busy))  # non-blocking: a full buffer just loses the answer
            conn.close()
            return
        self._per_uid[uid] = held + 1
        task = asyncio.create_task(self._serve(conn, uid), name="api connection")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, conn: socket.socket, uid: int) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            peer = peer_of(conn)
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE)
            while True:
                try:
                    # asyncio.timeout: Python 3.11's wait_for may lose stop()'s cancel.
                    async with asyncio.timeout(self.cfg.idle_timeout_s):
                        line = await reader.readline()
                except TimeoutError:
                    self.idle_closed += 1
                    break
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode(Response.failure("bad_request", "request line too long")))
                    await writer.drain()
                    # Read the rest away before closing: unread input would reset the
                    # connection and could destroy the answer on its way.
                    writer.write_eof()
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        await asyncio.wait_for(_discard(reader), DISCARD_TIMEOUT_S)
                    break
                if not line:
                    break
                if line.strip():
                    writer.write(encode(await self.handle(line, peer)))
                    await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._per_uid[uid] -= 1
            if not self._per_uid[uid]:
                del self._per_uid[uid]
            if writer is None:
                conn.close()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def handle(self, line: bytes, peer: Peer) -> Response:
        """Answer one request line; an unexpected exception is answered `internal`."""
        try:
            return await self._handle(line, peer)
        except Exception as e:  # the wall: answered, counted, logged rate-limited
            self.wall.caught(e, uid=peer.uid)
            return Response.failure("internal", f"{type(e).__name__}: {e}"[:500])

    async def _handle(self, line: bytes, peer: Peer) -> Response:
        if json_too_deep(line):
            return Response.failure("bad_request", f"nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            req = Request.model_validate_json(line)
        except ValidationError as e:
            return Response.failure("bad_request", f"not a request: {_first(e)}")
        op = OPERATIONS.get(req.op)
        if op is None:
            known = ", ".join(sorted(OPERATIONS))
            return Response.failure("bad_request", f"unknown operation {req.op!r}; known: {known}")
        try:
            args = op.args.model_validate(req.args)
        except ValidationError as e:
            return Response.failure("bad_request", f"{req.op}: {_first(e)}")
        if op.control:
            ok = self.allowed(peer)
            log.info("api.control", op=req.op, uid=peer.uid, pid=peer.pid, allowed=ok)
            if not ok:
                return Response.failure(
                    "forbidden",
                    f"{req.op} is a control operation: it needs root or membership in group "
                    f"{self.cfg.group!r} (uid {peer.uid} is not a member)",
                )
        method: Callable[..., Awaitable[BaseModel]] = getattr(self.ops, op.method)
        try:
            result = await method(**_kwargs(args))
        except OpError as e:
            return Response.failure(e.code, e.message)
        return Response(ok=True, result=result.model_dump(mode="json"))


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


def _kwargs(args: BaseModel) -> dict[str, Any]:
    return {name: getattr(args, name) for name in type(args).model_fields}


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]
