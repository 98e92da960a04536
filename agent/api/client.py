"""The CLI's side of the local API: one blocking request per call.

    result = call(cfg.api.socket, "start", connector=1)   # the result dict

Raises `Unreachable` when nobody serves the socket, `Denied` when the socket's permissions
or the server refuse, `ApiError` for any other error answer.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from agent.api.wire import MAX_LINE

TIMEOUT_S = 120.0  # `diagnose` reads every device several times
BACKLOG_WAIT_S = 10.0  # a full listen backlog (another user flooding the socket) is waited out


class ApiError(Exception):
    """The service answered with an error."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class Unreachable(ApiError):
    """No service on the socket (not running, or no [api] section)."""


class Denied(ApiError):
    """Not allowed: no permission on the socket file, or a control op without the group."""


def _connect(sock: socket.socket, path: Path, wait_s: float) -> None:
    """connect(), retried while the server's listen backlog is full (EAGAIN): the agent
    accepts and refuses a flooding user's connections quickly, so a turn comes soon."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def call(path: Path, op: str, timeout_s: float = TIMEOUT_S, **args: Any) -> Any:
    """Send one request, return its result; see the module docstring for errors."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            _connect(sock, path, min(timeout_s, BACKLOG_WAIT_S))
        except PermissionError:
            raise Denied(
                "forbidden", f"no permission to use {path} (need root or the socket's group)"
            ) from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unreachable(
                "unreachable", f"the service is not running (nobody serves {path})"
            ) from None
        except OSError as e:
            raise Unreachable("unreachable", f"cannot connect to {path}: {e.strerror}") from None
        line = json.dumps({"op": op, "args": args}, default=str).encode() + b"\n"
        try:
            sock.sendall(line)
            answer = sock.makefile("rb").readline(MAX_LINE * 64)
        except TimeoutError:
            raise Unreachable(
                "timeout", f"no answer from the service within {timeout_s:g} s"
            ) from None
        except OSError as e:
            raise Unreachable("unreachable", f"the connection to {path} broke: {e}") from None
    finally:
        sock.close()
    if not answer:
        raise Unreachable("unreachable", "the service closed the connection without answering")
    reply = json.loads(answer)
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error") or {}
    code, message = err.get("code", "internal"), err.get("message", "no message")
    raise (Denied if code == "forbidden" else ApiError)(code, message)
