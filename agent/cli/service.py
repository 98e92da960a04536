"""Talking to the running service from a CLI command: errors become exit codes.

Control commands use `control()`: no service is exit 3. Read commands use `read()`, which
returns None when the service is down so the command can read the store instead — and
says so on stderr (`store_note`).
"""

from __future__ import annotations

from typing import Any

from agent.api.client import ApiError, Denied, Unreachable, call
from agent.cli.common import Exit, fail, note
from agent.config import StationConfig

# Error codes of the API (agent/ops.py OpError, agent/api/protocol.py) -> exit codes.
EXIT_OF = {
    "bad_request": Exit.USAGE,
    "not_found": Exit.USAGE,
    "forbidden": Exit.DENIED,
    "refused": Exit.CHECK_FAILED,
    "unsupported": Exit.CHECK_FAILED,
    "device_error": Exit.UNREACHABLE,
    "internal": Exit.CHECK_FAILED,
}


def _socket(cfg: StationConfig) -> Any:
    if cfg.api is None:
        raise Unreachable("unreachable", "the config has no [api] section: the service has no API")
    return cfg.api.socket


def control(cfg: StationConfig, op: str, **args: Any) -> Any:
    """Run an operation on the service; exit with the error's code if it fails."""
    try:
        return call(_socket(cfg), op, **args)
    except Unreachable as e:
        raise fail(f"{e.message}; `{op}` needs the running service", Exit.UNREACHABLE) from None
    except ApiError as e:
        raise fail(f"{op}: {e.message}", EXIT_OF.get(e.code, Exit.CHECK_FAILED), e.code) from None


def read(cfg: StationConfig, op: str, **args: Any) -> Any | None:
    """Like control(), but None when the service is unreachable (read the store instead)."""
    try:
        return call(_socket(cfg), op, **args)
    except Unreachable as e:
        note(e.message)
        return None
    except Denied as e:
        raise fail(f"{op}: {e.message}", Exit.DENIED, e.code) from None
    except ApiError as e:
        raise fail(f"{op}: {e.message}", EXIT_OF.get(e.code, Exit.CHECK_FAILED), e.code) from None


def store_note(cfg: StationConfig) -> str:
    """What a read command tells when it reads the store instead of the service."""
    text = f"showing what the store at {cfg.store.path} holds (the last state the service wrote)"
    note(text)
    return text
