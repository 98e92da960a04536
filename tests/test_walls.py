"""agent/walls.py: the JSON depth bound and the rate-limited log behind every handler wall."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from agent.walls import RateLimited, Wall, json_too_deep


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[1, 2, {}]", False),
        (b"[" * 64 + b"]" * 64, False),  # exactly the bound
        (b"[" * 65 + b"]" * 65, True),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, True),
        (b"[" * 65, True),  # malformed still counts: the parser would recurse just the same
        (b'["' + b"[" * 500 + b'"]', False),  # brackets inside a string
        (b'["\\"' + b"[" * 500 + b'"]', False),  # ... after an escaped quote
        (b'"' + b"[" * 500, False),  # ... in a string that never ends
        (b"[]" * 1000, False),  # many, but side by side
    ],
)
def test_json_depth(text: bytes, deep: bool):
    assert json_too_deep(text) is deep
    if not deep:
        return
    with pytest.raises((RecursionError, json.JSONDecodeError)):
        json.loads(text * 20)  # what the bound protects: the parser's own recursion


def test_rate_limited_logs_once_per_interval_and_counts_the_rest():
    now = [0.0]
    seen: list[tuple[str, dict]] = []
    limited = RateLimited(lambda event, **kw: seen.append((event, kw)), 60, lambda: now[0])
    assert limited("k", "boom", n=1)
    for _ in range(100):
        assert not limited("k", "boom")
    assert limited("other", "bang")  # another key has its own budget
    now[0] = 61
    assert limited("k", "boom", n=2)
    assert seen == [
        ("boom", {"n": 1}),
        ("bang", {}),
        ("boom", {"n": 2, "suppressed_since_last": 100}),
    ]


def test_a_wall_counts_every_error_and_logs_the_first_of_each_type():
    wall = Wall("test.handler")
    with capture_logs() as logs:
        for exc in (ValueError("a"), ValueError("b"), KeyError("c")):
            try:
                raise exc
            except Exception as e:
                wall.caught(e, op="x")
    assert wall.state() == {"internal_errors": 3, "last_internal_error": "KeyError: 'c'"}
    assert [e["event"] for e in logs] == ["test.handler.internal_error"] * 2
    assert all(e["log_level"] == "error" and e["exc_info"] for e in logs)
