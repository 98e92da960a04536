"""Opening the store read-only for technician commands (sessions, report, billing verify)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.cli.common import Exit, fail, load_or_exit
from agent.config import StationConfig
from agent.sessions.store import SessionStore
from agent.store.db import StoreError

T = TypeVar("T")


def config_and_store(config: Path) -> tuple[StationConfig, SessionStore]:
    """The station config and its session store; exit with a clear message if either fails.

    The store is opened read-only: a store that does not exist yet is not created (the agent
    has not run with this config), one of an older schema is not migrated (refused, the
    service migrates it at its start).
    """
    cfg = load_or_exit(config)
    path = cfg.store.path
    if not path.exists():
        raise fail(
            f"no store at {path}: the agent has not run with {config} yet (or [store] path "
            "is relative to another working directory)",
            Exit.CHECK_FAILED,
        )
    try:
        return cfg, SessionStore(path, readonly=True)
    except StoreError as e:
        raise fail(str(e), Exit.CHECK_FAILED) from None


def writable_store(cfg: StationConfig, config: Path, opener: Callable[[Path], T]) -> T:
    """`opener(path)` on the station's store for a command that writes it (tickets,
    maintenance windows; WAL: safe while the service runs). An absent store is not created:
    the agent has not run with this config."""
    path = cfg.store.path
    if not path.exists():
        raise fail(f"no store at {path}: the agent has not run with {config} yet", Exit.UNREACHABLE)
    try:
        return opener(path)
    except StoreError as e:
        raise fail(str(e), Exit.UNREACHABLE) from None
