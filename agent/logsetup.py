"""structlog setup: JSON lines for the service, a readable console for the CLI."""

from __future__ import annotations

import logging
import sys

import structlog

from agent.support.logring import RING

_SECRET_KEYS = ("password", "secret", "token", "key", "auth")


def _redact(_logger, _name, event_dict: dict) -> dict:
    # Defence in depth: a secret passed as a log field never reaches the journal.
    for k in list(event_dict):
        if any(s in k.lower() for s in _SECRET_KEYS) and k != "event":
            event_dict[k] = "***"
    return event_dict


def setup_logging(level: str = "info", json: bool = False, stream=None) -> None:
    """Configure structlog and stdlib logging once for the process."""
    lvl = getattr(logging, level.upper())
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        RING.capture,  # recent events for the diagnostics bundle, already redacted
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream or sys.stderr)
