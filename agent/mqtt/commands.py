"""Remote commands over MQTT: validate, refuse with a reason, or run through agent/ops.py.

A command is run only if it arrived on this station's own `cmd/<name>` topic, asks for its
reply (MQTT 5 Response Topic) under this station's `reply/` tree if it asks at all, is JSON of
bounded size and depth, names a known command, matches its schema (payloads.COMMANDS), is
addressed to this station (if it says), has not expired (and does not expire implausibly far
ahead), and its id was never seen before (ids are persisted, so a replay after a restart is
refused too). Anything else gets an error reply saying why, and nothing is changed. An
unexpected exception is answered `internal`, counted and logged rate-limited (agent/walls.py).
Every reply goes through the outbox, and only ever to `<base>/reply/...` or
`<base>/cmd/<name>/reply`: a command cannot make the station publish on its own streams
(billing/records, display, status) or into another station's tree.
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
from agent.security.throttle import Throttled
from agent.sessions.times import to_us
from agent.walls import MAX_JSON_DEPTH, RateLimited, Wall, json_too_deep

log = structlog.get_logger(__name__)

ID_PEEK_BYTES = 16 * 1024
ERROR_CODES = frozenset(CommandError.model_fields["code"].annotation.__args__)


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


def parse_json(payload: bytes, max_bytes: int) -> Any:
    """The JSON document of a command payload; Refused when too large, too deep or not JSON
    (the size and depth are checked before the parser sees it)."""
    if len(payload) > max_bytes:
        raise Refused("invalid", f"the payload has {len(payload)} bytes; at most {max_bytes}")
    if json_too_deep(payload):
        raise Refused("bad_json", f"the payload nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(payload)
    # ValueError: also JSONDecodeError, and an integer of more than 4300 digits.
    except (ValueError, RecursionError) as e:
        raise Refused("bad_json", f"the payload is not JSON: {str(e)[:200]}") from None


def command_id_of(raw: Any) -> str | None:
    """The request's id if it has a readable one (for the reply), else None."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        return raw["id"][:64]
    return None


class CommandHandler:
    """Turns one incoming command into one reply in the outbox."""

    def __init__(
        self,
        ops: Ops,
        outbox: Outbox,
        topics: Topics,
        max_ttl_s: float,
        max_bytes: int,
        security: Throttled,
    ):
        self.ops = ops
        self.security = security  # AttemptedReplayAttacks, rate-limited
        self.outbox = outbox
        self.topics = topics
        self.max_ttl = timedelta(seconds=max_ttl_s)
        self.max_bytes = max_bytes
        self.wall = Wall("mqtt.command")
        self.refused_topics = 0  # commands refused for a response topic outside reply/
        self._warn = RateLimited(log.warning)

    async def handle(self, msg: Incoming) -> Outgoing | None:
        """Check and run `msg`; returns the reply to enqueue (None: not for this station)."""
        name = self.topics.command_name(msg.topic)
        if name is None:
            # Our subscription is this station's cmd/+ only; anything else is not ours.
            self._warn("foreign", "mqtt.command.foreign_topic", topic=msg.topic[:200])
            return None
        command_id: str | None = None
        try:
            raw = parse_json(msg.payload, self.max_bytes)
            command_id = command_id_of(raw)
            self._check_response_topic(msg)
            req, args = self._validate(name, raw)
            command_id = req.id
            await asyncio.to_thread(self._admit, name, req)
            result = await self._run(name, args)
        except Refused as e:
            log.warning("mqtt.command.refused", command=name, id=command_id, code=e.code,
                        reason=e.message)  # fmt: skip
            if e.code == "replayed":
                self.security.record("AttemptedReplayAttacks", f"MQTT {name}: {e.message}")
            return self._reply(msg, name, command_id, error=(e.code, e.message))
        except OpError as e:
            log.warning("mqtt.command.failed", command=name, id=command_id, code=e.code,
                        reason=e.message)  # fmt: skip
            return self._reply(msg, name, command_id, error=(e.code, e.message))
        except Exception as e:  # the wall: answered, counted, logged rate-limited
            self.wall.caught(e, command=name, id=command_id)
            return self._reply(msg, name, command_id, error=("internal", type(e).__name__))
        log.info("mqtt.command.done", command=name, id=command_id)
        return self._reply(msg, name, command_id, result=result.model_dump(mode="json"))

    def refuse(self, msg: Incoming, code: str, message: str) -> Outgoing | None:
        """The error reply to `msg` without running it (e.g. `busy`); None if not ours."""
        name = self.topics.command_name(msg.topic)
        if name is None:
            return None
        try:  # runs on the event loop: only a small payload is parsed for its id
            command_id = command_id_of(parse_json(msg.payload, ID_PEEK_BYTES))
        except Refused:
            command_id = None
        return self._reply(msg, name, command_id, error=(code, message))

    def _check_response_topic(self, msg: Incoming) -> None:
        topic = msg.response_topic
        if topic is None or self.topics.reply_allowed(topic):
            return
        self.refused_topics += 1
        self._warn("response_topic", "mqtt.command.response_topic_refused",
                   topic=topic[:200], allowed=self.topics.reply_filter)  # fmt: skip
        raise Refused(
            "forbidden",
            f"response topic {topic[:200]!r} is outside {self.topics.reply_filter}; "
            "the command was not run",
        )

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
            case "get_kpi":
                return await ops.kpi(a.months)
            case "clear_fault":
                return await ops.clear_fault(a.fault_id, a.note, a.by, channel="mqtt")
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
        topic = msg.response_topic
        if topic is None or not self.topics.reply_allowed(topic):
            topic = self.topics.reply(name)
        return Outgoing(Stream.REPLIES, data, topic=topic, correlation=msg.correlation)
