"""Fuzz the OCPP side: CSMS -> charge point frames against a running agent with a session.

Frames come from the official OCPP 1.6 JSON schemas shipped in the `ocpp` library (every
CSMS -> CP action but Reset, which ends sessions by design), plus mutations: wrong types,
NaN/Infinity/1e308/1e400, over-long integers, extra and missing fields, deep nesting, huge
strings, bad message ids and frame shapes, binary frames. The test CSMS (hil/csms.py) sends
each one to the in-process agent (simulated station, a card session charging) and checks:

- every CALL got exactly one answer, CALLRESULT or a CALLERROR with an OCPP 1.6 code and
  the frame's unique id ("-1" when none can be read); a CALLRESULT/CALLERROR got none;
- no InternalError and nothing counted by the wall: every input has a specific answer;
- the agent runs on, on the same connection, with the same session charging.

`make test` runs FUZZ_N (200) inputs; `make fuzz` 10,000 (tests/fuzzing.py: fixed seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import ocpp
import pytest
from fuzzing import FUZZ_SETTINGS
from hypothesis import assume, given
from hypothesis import strategies as st
from ocpp_helpers import CP, csms_running, ocpp_config
from schema_strategy import from_schema
from sessions_helpers import running

from agent.tasks import cancel_and_wait

pytestmark = pytest.mark.fuzz

SCHEMAS = os.path.join(os.path.dirname(ocpp.__file__), "v16", "schemas")
# CSMS -> CP actions of OCPP 1.6 and its security whitepaper, without Reset.
ACTIONS = (
    "CancelReservation", "CertificateSigned", "ChangeAvailability", "ChangeConfiguration",
    "ClearCache", "ClearChargingProfile", "DataTransfer", "DeleteCertificate",
    "ExtendedTriggerMessage", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics",
    "GetInstalledCertificateIds", "GetLocalListVersion", "GetLog", "InstallCertificate",
    "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "SendLocalList",
    "SetChargingProfile", "SignedUpdateFirmware", "TriggerMessage", "UnlockConnector",
    "UpdateFirmware",
)  # fmt: skip
# Actions a CSMS must not send (CP -> CSMS), and ones that exist nowhere.
OTHER_ACTIONS = ("BootNotification", "Heartbeat", "StartTransaction", "MeterValues", "", "X")
CODES = {
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
    "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
    "TypeConstraintViolation", "GenericError",
}  # fmt: skip
TX_ID = 424_242  # the session's transaction id: RemoteStopTransaction of it is left out


def _schema(action: str) -> dict[str, Any]:
    with open(os.path.join(SCHEMAS, f"{action}.json"), encoding="utf-8-sig") as f:
        return json.load(f)


PAYLOADS = {a: from_schema(_schema(a)) for a in ACTIONS}


@dataclass(frozen=True)
class Raw:
    """JSON text put into a frame as is (what json.dumps cannot write: NaN, 1e400, ...)."""

    text: str


def encode(frame: Any) -> str:
    """The frame as JSON text, `Raw` values spliced in."""
    raws: list[str] = []

    def mark(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"\u0000RAW{len(raws) - 1}\u0000"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(frame))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\u0000RAW{i}\u0000"), raw, 1)
    return text


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


BAD_VALUES = st.one_of(
    st.sampled_from(
        [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e308"), Raw("-1e308"),
         Raw("1e400"), Raw("9" * 5000), Raw("-0.0"), Raw("1E-400")]
    ),
    st.sampled_from([None, True, False, 0, -1, 2**31, 2**63, 2**64, -(2**63) - 1, "", [], {},
                     1.05, 13.33, "1", "Accepted", "2030-01-01T00:00:00Z", "not a date"]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.integers(10, 3000).map(nested),
    st.integers(1000, 300_000).map(lambda n: "x" * n),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)  # fmt: skip


def _paths(value: Any, at: tuple = ()) -> list[tuple]:
    """Every place inside a payload (dict keys and list indexes), the payload itself first."""
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, payload: Any) -> Any:
    """`payload` with one place replaced, given an extra field or a field dropped."""
    path = draw(st.sampled_from(_paths(payload)))
    op = draw(st.sampled_from(["replace", "extra", "drop"]))
    if not path:
        return draw(BAD_VALUES) if op == "replace" else {**payload, "extraField": 1}
    parent = payload
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace" or not isinstance(parent, dict):
        parent[last] = draw(BAD_VALUES)
    elif op == "extra":
        parent[draw(st.text(min_size=1, max_size=10)) + "_x"] = draw(BAD_VALUES)
    else:
        del parent[last]
    return payload


UIDS = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=36))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, list]:
    """A CALL: schema-valid, or with one mutation."""
    action = draw(st.sampled_from(ACTIONS))
    payload = draw(PAYLOADS[action])
    if draw(st.booleans()):
        payload = draw(mutated(payload))
    if action == "RemoteStopTransaction" and isinstance(payload, dict):
        assume(payload.get("transactionId") != TX_ID)
    return action, [2, draw(UIDS), action, payload]


@st.composite
def odd_frames(draw: st.DrawFn) -> tuple[str, Any]:
    """Frames of the wrong shape: type ids, ids, actions, payloads, element counts."""
    mtype = draw(st.sampled_from([2, 2, 2, 0, 1, 5, -1, "2", None, 2.0, True, 3, 4]))
    uid = draw(st.one_of(UIDS, st.integers(), st.none(), st.text(min_size=37, max_size=100),
                         st.lists(st.integers(), max_size=2)))  # fmt: skip
    action = draw(st.one_of(st.sampled_from(ACTIONS + OTHER_ACTIONS), st.integers(), st.none(),
                            st.text(max_size=60)))  # fmt: skip
    payload = draw(st.one_of(st.just({}), BAD_VALUES, st.lists(st.integers(), max_size=3)))
    frame = [mtype, uid, action, payload]
    cut = draw(st.sampled_from([4, 4, 4, 0, 1, 2, 3, 5]))
    frame = frame[:cut] if cut <= 4 else [*frame, "extra"]
    return "odd", frame


TEXTS = st.sampled_from(
    ["", " ", "null", "2", '"text"', "{}", "[]", "[2", '[2,"t1","GetConfiguration",{',
     '[2,"t2","GetConfiguration",{}]]', "\u00ff\u00fe", '[2,"t3","Get\\u0000",{}]', "[[[[",
     '[3,"t4",{}]', '[4,"t5","GenericError","",{}]', '[4,"t6"]']
)  # fmt: skip


FRAMES = st.one_of(
    calls(),
    calls(),
    odd_frames(),
    TEXTS.map(lambda t: ("text", Raw(t))),
    calls().map(lambda c: ("binary", c[1])),
)


def wire(kind: str, frame: Any) -> str | bytes:
    """What goes on the WebSocket."""
    if isinstance(frame, Raw):
        return frame.text
    text = encode(frame)
    return text.encode() if kind == "binary" else text


def expects_answer(data: str | bytes) -> bool:
    """A CALLRESULT/CALLERROR gets no answer, even an unparseable one whose type id reads
    3 or 4 (nobody waits for that answer); anything else does."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return re.match(r"\s*\[\s*[34](\.0*)?\s*[,\]]", text) is None
    return not (isinstance(msg, list) and msg and msg[0] in (3, 4))


def sent_id(data: str | bytes) -> Any:
    """The frame's unique id; of a frame that is not JSON, what its start reads as one."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError):
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        match = re.match(r'\[\s*\d+\s*,\s*"([^"\\]*)"', text)
        return match.group(1) if match else None
    return msg[1] if isinstance(msg, list) and len(msg) > 1 else None


class Live:
    """The test CSMS and the agent with a charging session, on an event loop in a thread
    (Hypothesis drives a plain function; the agent keeps running across examples)."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.probes = 0

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Live:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.stack.aclose())
            self.run(self._cancel_leftovers())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _start(self) -> None:
        self.csms = await self.stack.enter_async_context(csms_running())
        self.csms.next_transaction_id = TX_ID
        cfg = ocpp_config(self.tmp_path, self.csms.url)
        self.rig = await self.stack.enter_async_context(running(cfg))
        await self.csms.wait_for("StatusNotification", CP, where={"connectorId": 1})
        await self.rig.card_charging()
        await self.csms.wait_for("StartTransaction", CP)
        self.session = self.rig.conn.session.id

    async def _cancel_leftovers(self) -> None:
        """Tasks the agent and the CSMS left (e.g. a triggered send) end with the loop."""
        await cancel_and_wait(t for t in asyncio.all_tasks() if t is not asyncio.current_task())

    async def _exchange(self, data: str | bytes) -> list:
        if expects_answer(data):
            return await self.csms.send_raw(CP, data)
        # No answer may come: the next reply must be the probe's.
        self.probes += 1
        await self.csms.send_only(CP, data)
        uid = f"probe-{self.probes}"
        probe = f'[2,"{uid}","GetLocalListVersion",{{}}]'
        reply = await self.csms.send_raw(CP, probe)
        assert reply[:2] == [3, uid], f"an answer to a CALLRESULT/CALLERROR: {reply}"
        return reply

    async def _health(self) -> dict[str, Any]:
        agent = self.rig.agent
        return {
            "ended": [t.get_name() for t in agent._tasks if t.done()],
            "connections": self.csms.connections.get(CP),
            "session": None if self.rig.conn.session is None else self.rig.conn.session.id,
            "status": self.rig.conn.status.value,
            "ocpp": agent.ocpp.state(),
        }

    def check(self, kind: str, frame: Any) -> None:
        data = wire(kind, frame)
        errors_before = self.run(self._health())["ocpp"]["internal_errors"]
        reply = self.run(self._exchange(data), timeout=30)
        assert isinstance(reply, list) and reply and reply[0] in (3, 4), reply
        if expects_answer(data):
            uid = sent_id(data)
            # The frame's id; "-1" when none can be read; a non-string id as text.
            ids = ("-1", uid) if isinstance(uid, str) else ("-1", uid, str(uid)[:36])
            assert reply[1] in ids, (reply, uid)
            if reply[0] == 3:
                assert len(reply) == 3 and isinstance(reply[2], dict), reply
            else:
                assert len(reply) == 5 and reply[2] in CODES, reply
                assert isinstance(reply[3], str) and isinstance(reply[4], dict), reply
                assert reply[2] != "InternalError", reply
        health = self.run(self._health())
        assert health["ended"] == [], health
        assert health["connections"] == 1, health  # never dropped the connection
        assert health["session"] == self.session, health
        # Nothing unexpected (this frame's: an earlier one was reported with its own frame).
        errors = health["ocpp"]["internal_errors"] - errors_before
        assert errors == 0, health["ocpp"]["last_internal_error"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with Live(tmp_path_factory.mktemp("fuzz-ocpp")) as live:
        yield live


@FUZZ_SETTINGS
@given(FRAMES)
def test_every_csms_frame_gets_an_answer_and_the_session_goes_on(live, case):
    kind, frame = case
    live.check(kind, frame)
