"""The evedge daemon: runtime, event bus, store, diagnosis, sessions, billing, sync, API, CLI."""

import sys


class _NoRich:
    """Meta-path finder that refuses `rich` while structlog is imported (see below)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "rich" or name.startswith("rich."):
            raise ImportError(f"{name} not loaded for structlog (agent/__init__.py)")


def _import_structlog_without_rich() -> None:
    """structlog imports rich (and with it pygments) at import time when it is installed,
    only for its pretty console tracebacks: ~80 modules and ~4 MB RSS in a daemon that
    logs JSON lines. Every agent module comes through this package first, so structlog is
    imported here with rich refused; it then formats exceptions plainly. The CLI's own
    `import rich` (tables, live views) works as usual afterwards."""
    if "structlog" in sys.modules:
        return
    blocker = _NoRich()
    sys.meta_path.insert(0, blocker)
    try:
        import structlog  # noqa: F401
    finally:
        sys.meta_path.remove(blocker)


_import_structlog_without_rich()
