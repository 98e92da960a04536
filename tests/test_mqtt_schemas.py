"""The committed JSON Schemas equal what the models generate, and payloads validate."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest

from agent.mqtt.payloads import COMMANDS, MESSAGES
from agent.mqtt.schema import COMMITTED, render, schemas
from hil.procs import EVEDGE


def test_committed_schemas_equal_the_generated_ones():
    docs = schemas()
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.glob("*.json")}
    assert sorted(committed) == sorted(docs), "run: evedge mqtt schemas --out agent/mqtt/schemas"
    for name, doc in docs.items():
        assert committed[name] == render(doc), f"{name} is stale: run evedge mqtt schemas"


def test_every_stream_and_command_has_a_schema():
    names = set(schemas())
    assert {f"{s.replace('/', '-')}.json" for s in MESSAGES} <= names
    for c in COMMANDS:
        assert {f"cmd-{c}.json", f"reply-{c}.json"} <= names


def test_the_cli_writes_and_checks_the_schemas(tmp_path):
    out = tmp_path / "schemas"
    run = subprocess.run([EVEDGE, "mqtt", "schemas", "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["files"]) == len(schemas())
    ok = subprocess.run([EVEDGE, "mqtt", "schemas", "--out", str(out), "--check"],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0
    (out / "telemetry.json").write_text("{}")
    stale = subprocess.run([EVEDGE, "mqtt", "schemas", "--out", str(out), "--check", "--json"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stale.returncode == 1 and json.loads(stale.stdout)["stale"] == ["telemetry.json"]


def _schema(name: str) -> dict:
    return json.loads((COMMITTED / name).read_text())


def test_schemas_reject_what_the_backend_must_not_accept():
    request = {"id": "cmd-00000001", "expires": "2030-01-01T00:00:00Z",
               "args": {"connector": 1, "amps": 10}}  # fmt: skip
    jsonschema.validate(request, _schema("cmd-set_current_limit.json"))
    for bad in (
        {**request, "args": {"connector": 1, "amps": 500}},
        {**request, "args": {"connector": 1}},
        {**request, "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, _schema("cmd-set_current_limit.json"))
    status = dict(v=1, msg_id="a", seq=1, station="S", ts="2030-01-01T00:00:00Z",
                  stream="status", state="online", agent_version="1", clean=True)  # fmt: skip
    jsonschema.validate(status, _schema("status.json"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**status, "seq": 0}, _schema("status.json"))
