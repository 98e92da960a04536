"""Remote commands over a real broker: every command valid and invalid.

Valid commands run through agent/ops.py and answer on the MQTT 5 response topic with the
correlation data; bad JSON, schema violations, unknown names, expired or replayed ids and
commands for another station get an error reply that says why and change nothing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import tarfile

import jsonschema
import pytest
from mqtt_helpers import Backend
from sessions_helpers import CARD, TARIFFS, billed_config, running
from test_mqtt_sync import STATION, with_mqtt

from agent.mqtt.schema import COMMITTED

pytestmark = pytest.mark.timeout(180)


class Cloud:
    """The backend plus reply lookup."""

    def __init__(self, backend: Backend):
        self.b = backend

    async def reply(self, cid: str | None, corr: bytes | None = None, timeout: float = 20):
        def find(ms):
            def mine(m) -> bool:
                return m.correlation == corr if cid is None else m.json().get("command_id") == cid

            return [m for m in ms if "/reply/" in m.topic and mine(m)]

        await asyncio.to_thread(self.b.wait, lambda ms: find(ms), timeout, f"reply to {cid}")
        got = find(self.b.snapshot())
        assert len(got) == 1
        return got[0]

    async def run(self, name: str, args: dict | None = None, **kw) -> dict:
        cid, corr = await asyncio.to_thread(self.b.command, STATION, name, args=args, **kw)
        msg = await self.reply(cid)
        assert msg.correlation == corr
        doc = msg.json()
        schema = json.loads((COMMITTED / f"reply-{name}.json").read_text())
        jsonschema.validate(doc, schema)
        return doc

    async def raw(self, name: str, payload, station: str = STATION) -> dict:
        _, corr = await asyncio.to_thread(self.b.command, station, name, payload)
        doc = (await self.reply(None, corr)).json()
        jsonschema.validate(doc, json.loads((COMMITTED / "replies.json").read_text()))
        return doc


def expires(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def test_every_command_valid_and_invalid(tmp_path, broker):
    backend = Backend(broker).connect()
    cloud = Cloud(backend)
    cfg = with_mqtt(billed_config(tmp_path), broker)
    try:
        async with running(cfg) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            # ---------------------------------------------------------------- valid
            st = await cloud.run("get_status")
            assert st["ok"] and st["result"]["station"] == STATION
            assert st["result"]["sync"]["mqtt"]["connected"] is True
            faults = await cloud.run("get_active_faults")
            assert faults["ok"] and faults["result"]["faults"] == []
            diag = await cloud.run("diagnose", {"reads": 2, "gap_s": 0})
            assert diag["ok"] and diag["result"]["findings"]
            tariff = json.loads((TARIFFS / "simple-energy.json").read_text())
            tr = await cloud.run("set_tariff", {"tariff": tariff})
            assert tr["ok"] and tr["result"]["tariff_id"] == tariff["id"], tr
            assert rig.agent.sessions.tariff.id == tariff["id"]
            bad_tariff = await cloud.run("set_tariff", {"tariff": {"id": "x"}})
            assert not bad_tariff["ok"] and bad_tariff["error"]["code"] == "bad_request"
            ll = await cloud.run(
                "update_local_list",
                {"version": 7, "full": False, "entries": [{"id_token": "NEW-CARD-1"}]},
            )
            assert ll["ok"] and ll["result"] == {"version": 7, "entries": 1, "full": False}
            with rig.store() as s, s.reading() as c:
                row = c.execute("SELECT status FROM auth_list WHERE id_token = 'NEW-CARD-1'")
                assert row.fetchone() == ("Accepted",)

            rig.sim.plug_in(1)
            await rig.status("Preparing")
            # Invalid and refused commands first: none may start or change anything.
            bad = await cloud.raw("start_session", b"{not json")
            assert bad["error"]["code"] == "bad_json" and bad["command_id"] is None
            schema = await cloud.raw(
                "start_session",
                {"id": "cmd-schema-1", "expires": expires(60), "args": {"connector": "one"}},
            )
            assert (
                schema["error"]["code"] == "invalid" and "connector" in schema["error"]["message"]
            )
            assert schema["command_id"] == "cmd-schema-1"
            no_exp = await cloud.raw("start_session", {"id": "cmd-noexp-1", "args": {}})
            assert no_exp["error"]["code"] == "invalid" and "expires" in no_exp["error"]["message"]
            unknown = await cloud.raw(
                "self_destruct", {"id": "cmd-unknown-1", "expires": expires(60)}
            )
            assert unknown["error"]["code"] == "unknown_command"
            start_args = {"connector": 1, "id_token": CARD}
            expired = await cloud.raw(
                "start_session", {"id": "cmd-expired-1", "expires": expires(-1), "args": start_args}
            )
            assert expired["error"]["code"] == "expired"
            other = await cloud.raw(
                "start_session",
                {"id": "cmd-other-1", "expires": expires(60), "station": "OTHER",
                 "args": start_args},
            )  # fmt: skip
            assert other["error"]["code"] == "wrong_station"
            # Another station's topic never reaches this agent at all.
            await asyncio.to_thread(
                backend.command, "OTHER", "start_session", None, args=start_args
            )
            assert rig.conn.session is None and rig.conn.status.value == "Preparing"

            # Valid start, then the same command again: replayed, not run twice.
            payload = {"id": "cmd-start-0001", "expires": expires(60), "args": start_args}
            started = await cloud.raw("start_session", payload)
            assert started["ok"], started
            await rig.status("Charging")
            again = await cloud.raw("start_session", payload)
            assert again["error"]["code"] == "replayed" and again["command_id"] == "cmd-start-0001"
            lim = await cloud.run("set_current_limit", {"connector": 1, "amps": 10})
            assert lim["ok"] and lim["result"]["offered_a"] <= 10
            bad_conn = await cloud.run("set_current_limit", {"connector": 9, "amps": 10})
            assert bad_conn["error"]["code"] == "not_found"
            stop_exp = await cloud.raw(
                "stop_session", {"id": "cmd-stop-exp", "expires": expires(-5),
                                 "args": {"connector": 1}}
            )  # fmt: skip
            assert stop_exp["error"]["code"] == "expired"
            assert rig.conn.status.value == "Charging"  # the expired stop changed nothing
            stopped = await cloud.run("stop_session", {"connector": 1})
            assert stopped["ok"]
            await rig.record(1)
            report = await cloud.run("usage_report", {"period": "day", "by": "connector"})
            assert report["ok"] and report["result"]["rows"]
            bundle = await cloud.run("diagnostics_bundle")
            assert bundle["ok"], bundle
            data = base64.b64decode(bundle["result"]["data_b64"])
            assert hashlib.sha256(data).hexdigest() == bundle["result"]["sha256"]
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                assert tar.getnames()
            with rig.store() as s:
                assert len(s.records()) == 1  # exactly one session: the valid start
            # A response topic outside reply/ (here a wildcard): refused on cmd/<name>/reply.
            cid, _ = await asyncio.to_thread(
                backend.command, STATION, "get_active_faults", response="backend/#"
            )
            await asyncio.to_thread(
                backend.wait, lambda ms: backend.on("cmd/get_active_faults/reply"), 10, "reply"
            )
            refused = backend.on("cmd/get_active_faults/reply")[0].json()
            assert refused["command_id"] == cid and refused["error"]["code"] == "forbidden"
    finally:
        backend.close()
