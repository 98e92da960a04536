"""Remote commands over MQTT: validate, refuse with a reason, or run through agent/ops.py.

A command is run only if it arrived on this station's own `cmd/<name>` topic, is JSON, names
a known command, matches its schema (payloads.COMMANDS), is addressed to this station (if it
says), has not expired (and does not expire implausibly far ahead), and its id was never seen
before (ids are persisted, so a replay after a restart is refused too). Anything else gets
an error reply saying why, and nothing is changed. Every reply goes through the outbox.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from agent.events import utcnow
from agent.mqtt.connection import Incoming
from agent.mqtt.outbox import Outbox, Outgoing
from agent.mqtt.payloads import COMMANDS, CommandError, CommandRequest
from agent.mqtt.topics import Stream, Topics
from agent.ops import OpError, Ops
from agent.sessions.times import to_us

log = structlog.get_logger(__name__)

ERROR_CODES = frozenset(CommandError.model_fields["code"].annotation.__args__)


def _publishable(topic: str | None) -> bool:
    """Whether a response topic can be published to (no wildcards, not empty, not huge)."""
    return bool(topic) and not set("+#\0") & set(topic) and len(topic.encode()) <= 1024


class Refused(Exception):
    """The command is not run; `code` and `message` go into the error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _first_error(e: ValidationError, prefix: str = "") -> str:
    problems = []
    for err in e.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(payload)"
        problems.append(f"{prefix}{where}: {err['msg']}")
    return "; ".join(problems)


class CommandHandler:
    """Turns one incoming command into one reply in the outbox."""

    def __init__(self, ops: Ops, outbox: Outbox, topics: Topics, max_ttl_s: float):
        self.ops = ops
        self.outbox = outbox
        self.topics = topics
        self.max_ttl = timedelta(seconds=max_ttl_s)

    async def handle(self, msg: Incoming) -> Outgoing | None:
        """Check and run `msg`; returns the reply to enqueue (None: not for this station)."""
        name = self.topics.command_name(msg.topic)
        if name is None:
            # Our subscription is this station's cmd/+ only; anything else is not ours.
            log.warning("mqtt.command.foreign_topic", topic=msg.topic)
            return None
        command_id: str | None = None
        try:
            try:
                raw = json.loads(msg.payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise Refused("bad_json", f"the payload is not JSON: {e}") from None
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                command_id = raw["id"][:64]
            req, args = self._validate(name, raw)
            command_id = req.id
            await asyncio.to_thread(self._admit, name, req)
            result = await self._run(name, args)
        except Refused as e:
            log.warning("mqtt.command.refused", command=name, id=command_id, code=e.code,
                        reason=e.message)  # fmt: skip
            return self._reply(msg, name, command_id, error=(e.code, e.message))
        except OpError as e:
            log.warning("mqtt.command.failed", command=name, id=command_id, code=e.code,
                        reason=e.message)  # fmt: skip
            return self._reply(msg, name, command_id, error=(e.code, e.message))
        except Exception as e:
            log.exception("mqtt.command.error", command=name, id=command_id)
            return self._reply(msg, name, command_id, error=("internal", type(e).__name__))
        log.info("mqtt.command.done", command=name, id=command_id)
        return self._reply(msg, name, command_id, result=result.model_dump(mode="json"))

    def _validate(self, name: str, raw: Any) -> tuple[CommandRequest, BaseModel]:
        spec = COMMANDS.get(name)
        if spec is None:
            raise Refused("unknown_command", f"no command {name!r}; known: {', '.join(COMMANDS)}")
        try:
            req = CommandRequest.model_validate(raw)
        except ValidationError as e:
            raise Refused("invalid", _first_error(e)) from None
        try:
            args = spec[0].model_validate(req.args)
        except ValidationError as e:
            raise Refused("invalid", _first_error(e, "args.")) from None
        if req.station is not None and req.station != self.topics.station:
            raise Refused(
                "wrong_station", f"addressed to {req.station!r}, this is {self.topics.station!r}"
            )
        return req, args

    def _admit(self, name: str, req: CommandRequest) -> None:
        """Expiry, then replay (the id is recorded only for a command that will run)."""
        now = utcnow()
        if req.expires <= now:
            raise Refused("expired", f"expired at {req.expires.isoformat()}, now {now.isoformat()}")
        if req.expires - now > self.max_ttl:
            raise Refused(
                "invalid",
                f"expires more than {self.max_ttl.total_seconds():g} s ahead; use a nearer expiry",
            )
        if not self.outbox.first_sight(req.id, name, to_us(req.expires)):
            raise Refused("replayed", f"command id {req.id!r} was already received")

    async def _run(self, name: str, a: Any) -> BaseModel:
        ops = self.ops
        match name:
            case "get_status":
                return await ops.status()
            case "get_active_faults":
                return await ops.active_faults()
            case "diagnose":
                return await ops.diagnose(reads=a.reads, gap_s=a.gap_s)
            case "set_tariff":
                return await ops.set_tariff(a.tariff)
            case "update_local_list":
                return await ops.update_local_list(a.entries, a.full, a.version)
            case "start_session":
                return await ops.start(a.connector, a.id_token)
            case "stop_session":
                return await ops.stop(a.connector)
            case "set_current_limit":
                return await ops.limit(a.connector, a.amps)
            case "usage_report":
                return await ops.report(a.period, a.by, a.start, a.end)
            case "diagnostics_bundle":
                return await ops.diagnostics_bundle()
            case "report_problem":
                return await ops.report_problem(
                    a.connector, a.text, a.category, a.source, a.lang, a.contact
                )
        raise Refused("unknown_command", f"no command {name!r}")  # COMMANDS and this agree

    def _reply(
        self,
        msg: Incoming,
        name: str,
        command_id: str | None,
        *,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> Outgoing:
        data: dict[str, Any] = dict(
            command=name, command_id=command_id, ok=error is None, result=result
        )
        if error is not None:
            code = error[0] if error[0] in ERROR_CODES else "internal"
            data["error"] = {"code": code, "message": error[1]}
        topic = msg.response_topic if _publishable(msg.response_topic) else self.topics.reply(name)
        return Outgoing(Stream.REPLIES, data, topic=topic, correlation=msg.correlation)
