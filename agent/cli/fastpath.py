"""Ask the running service without loading the station config's models: only the TOML's
`[api] socket` is read. `evedge status --json` answers through it in a few tens of ms
(loading and validating the whole config costs a few hundred). When anything is off — no
explicit socket, an unreadable file, the service down or refusing — it returns None and the
command takes its ordinary path, which validates the config and reports the problem."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from agent.api.client import ApiError, call


def service_answer(config: Path, op: str) -> Any | None:
    """The service's result for `op`, or None (see the module docstring)."""
    try:
        api = tomllib.loads(config.read_text()).get("api")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    socket = api.get("socket") if isinstance(api, dict) else None
    if not isinstance(socket, str):
        return None
    try:
        return call(Path(socket), op)
    except ApiError:
        return None


def print_answer(obj: Any) -> None:
    """Print it as `emit_json` does (agent.cli.common loads the config models)."""
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
