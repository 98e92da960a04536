"""Fuzz the local API: request lines over the real Unix socket to a running agent.

Requests come from the argument models' JSON Schemas (agent/api/protocol.py OPERATIONS)
plus mutations (tests/test_fuzz_ocpp.py: wrong types, NaN/Infinity/1e308/1e400, extra and
missing fields, deep nesting, huge strings), and raw lines: bad JSON, invalid UTF-8,
nesting thousands deep, lines over the 1 MiB limit, unknown operations. Each line is
followed by a `status` probe on the same connection. The agent (simulated station, a card
session charging) must answer each request line exactly once — a result or a specific error,
never `internal` — then the probe; at the end it runs on with the same session.

Left out of the generated requests: `diagnose` and `diagnostics_bundle` (seconds each),
`stop` (it would end the watched session) and `write` (raw register writes to the EVSE).
`make test` runs FUZZ_N (200) inputs; `make fuzz` 10,000 (tests/fuzzing.py: fixed seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from conftest import short_tmpdir
from fuzzing import FUZZ_SETTINGS, assert_alive
from hypothesis import example, given
from hypothesis import strategies as st
from schema_strategy import from_schema
from sessions_helpers import billed_config, running
from test_fuzz_ocpp import BAD_VALUES, Live, encode, mutated

from agent.api.config import ApiConfig
from agent.api.protocol import MAX_LINE, OPERATIONS

pytestmark = pytest.mark.fuzz

LEFT_OUT = {"diagnose", "diagnostics_bundle", "stop", "write"}
NAMES = sorted(set(OPERATIONS) - LEFT_OUT)
ARGS = {n: from_schema(OPERATIONS[n].args.model_json_schema()) for n in NAMES}
PROBE = b'{"op": "status"}\n'


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request line: schema-valid, or with one mutation."""
    op = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=20)))
    args = draw(ARGS[op]) if op in ARGS else {"x": draw(BAD_VALUES)}
    doc: Any = {"op": op, "args": args}
    if draw(st.booleans()):
        doc = draw(mutated(doc))
    return encode(doc).encode()


RAW_LINES = st.one_of(
    st.sampled_from(
        [b"", b" ", b"null", b"[]", b"{}", b"{", b'{"op": ', b"\xff\xfe\x00", b"\x00" * 10,
         b'{"op": "limit", "args": {"connector": 1, "amps": NaN}}',
         b'{"op": "limit", "args": {"connector": 1, "amps": 1e400}}',
         b'{"op": "status"}{"op": "status"}', b'{"op": "status", "op": "faults"}']
    ),
    st.binary(max_size=64),
    st.integers(10, 100_000).map(lambda n: b"[" * n),
    st.integers(10, 3000).map(lambda n: b'{"op": "status", "args": ' + b'{"a": ' * n + b"1"
                              + b"}" * (n + 1)),
    st.integers(MAX_LINE - 100, MAX_LINE + 1000).map(lambda n: b'{"op": "' + b"x" * n + b'"}'),
)  # fmt: skip

LINES = st.one_of(requests(), requests(), requests(), RAW_LINES).map(
    lambda line: line.replace(b"\n", b" ")  # one request line, however it was made
)


class ApiLive(Live):
    """The agent with a charging session and its API socket; see test_fuzz_ocpp.Live."""

    def __init__(self, tmp_path, sockdir):
        super().__init__(tmp_path)
        self.sock = sockdir / "api.sock"

    async def _start(self) -> None:
        cfg = billed_config(self.tmp_path).model_copy(
            update={"api": ApiConfig(socket=self.sock, mode=0o600)}
        )
        self.rig = await self.stack.enter_async_context(running(cfg))
        await self.rig.card_charging()
        self.session = self.rig.conn.session.id

    async def _exchange(self, line: bytes, expected: int) -> list[dict]:
        # As much as the CLI reads (agent/api/client.py): a long report is a long line.
        reader, writer = await asyncio.open_unix_connection(str(self.sock), limit=64 * MAX_LINE)
        try:
            writer.write(line + b"\n" + PROBE)
            await writer.drain()
            answers = []
            while len(answers) < expected and (
                raw := await asyncio.wait_for(reader.readline(), 30)
            ):
                answers.append(json.loads(raw))
            # Nothing more may come (a second answer to one line would show here).
            with contextlib.suppress(TimeoutError):
                extra = await asyncio.wait_for(reader.readline(), 0.01)
                assert not extra, extra
            return answers
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _health(self) -> dict[str, Any]:
        agent = self.rig.agent
        return {
            "ended": [t.get_name() for t in agent._tasks if t.done()],
            "session": None if self.rig.conn.session is None else self.rig.conn.session.id,
            "api": agent.api.state(),
        }

    def check(self, line: bytes) -> None:
        before = self.run(self._health())["api"]["internal_errors"]
        too_long = len(line) > MAX_LINE  # answered, then the connection is closed
        expected = 1 if too_long or not line.strip() else 2  # a blank line gets no answer
        answers = self.run(self._exchange(line, expected), timeout=60)
        if too_long:
            assert answers == [
                {"ok": False, "result": None,
                 "error": {"code": "bad_request", "message": "request line too long"}}
            ], answers  # fmt: skip
        else:
            assert len(answers) == expected, answers
            *first, probe = answers
            assert probe["ok"] and probe["result"]["station"] == "TEST", answers
            for a in first:
                if not a["ok"]:
                    assert a["error"]["code"] != "internal", a
                    assert isinstance(a["error"]["message"], str) and a["error"]["message"], a
        health = self.run(self._health())
        assert_alive(health, self.session, health["api"], before)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with short_tmpdir() as d, ApiLive(tmp_path_factory.mktemp("fuzz-api"), d) as live:
        yield live


@FUZZ_SETTINGS
@given(LINES)
@example(b'{"op": "' + b"x" * (MAX_LINE - 10) + b'"}')  # exactly the limit: served
@example(b'{"op": "' + b"x" * (MAX_LINE - 9) + b'"}')  # one byte more: too long
def test_every_line_gets_one_answer_and_the_session_goes_on(live, line):
    live.check(line)
