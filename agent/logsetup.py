"""structlog setup: JSON lines for the service, a readable console for the CLI.

Every log event passes `redact` before it is rendered or kept for the diagnostics bundle.
Field names are compared without case, `_` and `-` (`idTag` == `id_tag` == `ID-TAG`):

- `SECRET_FIELDS` (password, passwd, secret, authorization, auth_key, private_key, …):
  the value is replaced by `***`.
- `TOKEN_FIELDS` (token, id_tag, id_token, idTag, parent_id_tag, …): id tokens are personal
  data and, for RFID, credentials; masked like the sessions mask them (`DE*****42`, see
  agent/sessions/model.py `mask`), which keeps two tokens apart in a log. Masking an
  already masked token changes nothing.
- A field `key` naming a secret OCPP configuration key (agent/secretnames.py:
  `AuthorizationKey`, any key with a word password/secret/key/token/…, except public keys):
  the `value` beside it is replaced by `***`, so `ocpp.config_change key=AuthorizationKey
  value=***`; the key name stays readable.

Other fields pass unchanged (`key`, `auth_method`, `reason`, …). Nested dicts and lists are
redacted the same way (an OCPP payload's `configurationKey` entries, say).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from agent.secretnames import is_secret_name
from agent.sessions.model import IdToken, mask
from agent.support.logring import RING

REDACTED = "***"
SECRET_FIELDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "clientsecret",
        "authorization",  # an HTTP Authorization header
        "authkey",
        "authorizationkey",  # OCPP 1.6 security whitepaper: the Basic-auth password
        "basicauthpassword",  # OCPP 2.0.1
        "privatekey",
        "apikey",
        "psk",
        "credentials",
    }
)
TOKEN_FIELDS = frozenset(
    {"token", "idtag", "idtoken", "parentidtag", "parentidtoken", "groupidtoken"}
)


def _field(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _redact_value(name: str, value: Any) -> Any:
    f = _field(name)
    if value is None:
        return None
    if f in SECRET_FIELDS:
        return REDACTED
    if f in TOKEN_FIELDS:
        return mask(value.id if isinstance(value, IdToken) else str(value))
    return _redact_nested(value)


def _redact_nested(value: Any) -> Any:
    if isinstance(value, dict):
        return _redact_fields(value)
    if isinstance(value, list):  # not tuples: exc_info is one, format_exc_info needs it
        return [_redact_nested(v) for v in value]
    return value


def _redact_fields(fields: dict) -> dict:
    out = {k: _redact_value(k, v) if isinstance(k, str) else v for k, v in fields.items()}
    key = out.get("key")
    if isinstance(key, str) and "value" in out and is_secret_name(key):
        out["value"] = REDACTED
    return out


def redact(_logger: Any, _name: str, event_dict: dict) -> dict:
    """structlog processor: mask secrets and id tokens in the event's fields (see the module
    docstring). Defence in depth: callers mask already; a slip must not reach the journal."""
    return _redact_fields(event_dict)


def json_logs_by_default(stream=None, environ=None) -> bool:
    """JSON lines for a service, a readable console for a person: JSON under systemd (it sets
    JOURNAL_STREAM or INVOCATION_ID) or when stderr is not a terminal (a pipe, a file, a
    container's log driver), the console on an interactive terminal."""
    env = os.environ if environ is None else environ
    if "JOURNAL_STREAM" in env or "INVOCATION_ID" in env:
        return True
    return not (stream or sys.stderr).isatty()


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of writing, not when logging was set up:
    a CLI command run in-process (tests, a runner) may set up logging while stderr is a
    stream that is closed afterwards."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "info", json: bool = False, stream=None) -> None:
    """Configure structlog and stdlib logging once for the process."""
    lvl = getattr(logging, level.upper())
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        RING.capture,  # recent events for the diagnostics bundle, already redacted
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or _CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream or _CurrentStderr())
