"""The local API server: an asyncio Unix socket speaking agent/api/protocol.py.

Read operations are open to whoever can connect (the socket's mode and group decide
that); control operations also need the peer — identified by SO_PEERCRED, not by anything
it says — to be root, the service's own user, or a member of the [api] group.

The socket's directory is created when missing. A socket file left by a crashed agent is
replaced; one a live agent still answers on is not (two agents on one station is an error);
anything that is not a socket is never removed. The file is removed at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
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

log = structlog.get_logger(__name__)

DISCARD_TIMEOUT_S = 5.0  # how long an oversized request may keep sending before we hang up


class ApiStartError(RuntimeError):
    """The socket cannot be served (path taken, no permission)."""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_of(sock: socket.socket) -> Peer:
    """The connecting process's credentials (kernel-checked) and its supplementary groups."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
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
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task] = set()

    def allowed(self, peer: Peer) -> bool:
        """May this peer use control operations?"""
        return peer.uid in (0, os.geteuid()) or (self.gid is not None and self.gid in peer.groups)

    async def start(self) -> None:
        """Bind the socket (replacing a stale one), set its mode and group, serve."""
        await self._clear_stale()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_LINE
            )
            os.chmod(self.path, self.cfg.mode)
        except OSError as e:
            raise ApiStartError(f"cannot serve the local API on {self.path}: {e}") from None
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
        if self._server is None:
            return
        self._server.close()
        for t in list(self._handlers):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self.path.unlink(missing_ok=True)
        log.info("api.stop", socket=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            while True:
                try:
                    line = await reader.readline()
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
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, line: bytes, peer: Peer) -> Response:
        """Answer one request line."""
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
        except Exception as e:  # a bug answers "internal" and is logged; the agent runs on
            log.exception("api.internal_error", op=req.op)
            return Response.failure("internal", f"{type(e).__name__}: {e}")
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
