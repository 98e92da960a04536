"""Driver problem reports: the QR report link and its parser, tickets with a diagnostic
snapshot from a running agent on the simulated station, TicketCreated on the bus, the
store (kept until delivered, immutable, survives a restart), reports through the local API
and the MQTT command reaching the MQTT tickets stream without a restart (and tickets written
to the store by another process too), and `evedge tickets` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import station_config
from mqtt_helpers import Backend, Broker
from pydantic import ValidationError
from sessions_helpers import CARD, TARIFFS, billed_config, running
from test_mqtt_commands import Cloud
from test_mqtt_sync import validate, with_mqtt

from agent.api.client import ApiError, call
from agent.api.config import ApiConfig
from agent.config import load_config
from agent.driver.config import DriverConfig
from agent.events import TicketCreated
from agent.runtime import Agent
from agent.sessions.model import card_token
from agent.tickets.create import TicketError, create_ticket, report_from_link
from agent.tickets.links import ReportLinkError, parse_report_link, report_link
from agent.tickets.model import ReportRequest, Snapshot, Ticket
from agent.tickets.store import TicketStore
from hil.display import ConsoleDisplay
from hil.scenarios.stations import station_toml

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://charge.example.com/report"
STATION = "HIL-TCP"


@pytest.fixture
def sockdir():
    # Short: a Unix socket path is at most 107 bytes, pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="evtix-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_config(tmp_path: Path, driver: bool = True, api: Path | None = None) -> Path:
    extra = (
        f'\n[billing]\ntariff = "{TARIFFS / "simple-energy.json"}"\n'
        f'key_dir = "{tmp_path / "keys"}"\ntimezone = "Europe/Berlin"\n'
        f'[sessions]\nend_reading_timeout_s = 2\n[auth]\nlocal_list = [{{ id = "{CARD}" }}]\n'
    )
    if driver:
        extra += (
            '[driver]\nlanguage = "de"\noperator = "Example Charging GmbH"\n'
            f'hotline = "+49 30 1234 5678"\nreport_url = "{BASE}"\n'
        )
    if api is not None:
        extra += f'[api]\nsocket = "{api}"\nmode = 0o600\n'
    path = tmp_path / "station.toml"
    path.write_text(station_toml("tcp", store=str(tmp_path / "evedge.db"), extra=extra))
    return path


async def evedge(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI in a subprocess while this loop keeps the simulator and agent running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli.main", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), " ".join(err.decode().split())


# ---------------------------------------------------------------- the report link


def test_report_link_round_trip():
    link = report_link(BASE, "DEMO-0001", 2)
    assert link == "https://charge.example.com/report?station=DEMO-0001&connector=2"
    target = parse_report_link(link, base=BASE, station="DEMO-0001", connectors={1, 2})
    assert (target.station, target.connector, target.lang) == ("DEMO-0001", 2, None)
    target = parse_report_link(
        link + "&lang=de", base=BASE + "/", station="DEMO-0001", connectors={1, 2}
    )
    assert target.lang == "de"


@pytest.mark.parametrize(
    ("link", "error"),
    [
        ("", "empty link"),
        ("http://charge.example.com/report?station=S&connector=1", "must be an https:// address"),
        ("https://evil.example.org/report?station=S&connector=1",
         "points to evil.example.org/report; this station's report link is " + BASE),
        ("https://charge.example.com/other?station=S&connector=1", "points to"),
        ("https://charge.example.com/report?connector=1", "parameter 'station' is missing"),
        ("https://charge.example.com/report?station=S", "parameter 'connector' is missing"),
        ("https://charge.example.com/report?station=X&connector=1",
         "is for station 'X'; this is station 'S'"),
        ("https://charge.example.com/report?station=S&connector=one",
         "connector must be a number, got 'one'"),
        ("https://charge.example.com/report?station=S&connector=3",
         "station S has no connector 3; it has 1, 2"),
        ("https://charge.example.com/report?station=S&connector=1&pin=1234",
         "unknown parameter 'pin'"),
        ("https://charge.example.com/report?station=S&connector=1&connector=2",
         "parameter 'connector' given twice"),
        ("https://charge.example.com/report?station=S&connector=1#x", "has a #fragment"),
        ("https://charge.example.com/report?station=S&connector=1&lang=fr",
         "lang must be one of en, de, got 'fr'"),
        ("https://charge.example.com:99999/report?station=S&connector=1", "not a valid address"),
        ("https://charge.example.com/report?" + "x" * 2000, "at most 2000"),
    ],
)  # fmt: skip
def test_invalid_report_links_are_refused_with_the_reason(link, error):
    with pytest.raises(ReportLinkError) as e:
        parse_report_link(link, base=BASE, station="S", connectors={1, 2})
    assert error in str(e.value)


def test_report_requests_are_validated():
    with pytest.raises(ValidationError, match="describe the problem"):
        ReportRequest(connector=1, source="display")
    with pytest.raises(ValidationError, match="must be one of en, de"):
        ReportRequest(connector=1, source="qr", text="x", lang="fr")
    req = ReportRequest(
        connector=1, source="display", text=" broken\x1b[2J plug \n", category="damaged"
    )
    assert req.text == "broken[2J plug"  # control characters dropped


# ---------------------------------------------------------------- from a running station


async def test_reports_become_tickets_with_a_snapshot_and_survive_a_restart(tmp_path):
    cfg = load_config(write_config(tmp_path))
    subs = []
    display = ConsoleDisplay(lang="de", path=tmp_path / "display.txt", width=120)

    def setup(agent):
        subs.append(agent.bus.subscribe(TicketCreated))
        agent.driver.add_display(display)

    async with running(cfg, setup=setup) as rig:
        driver = rig.agent.driver
        rig.sim.plug_in(1)
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        await rig.until(lambda: (driver.current(1).energy_wh or 0) > 0, 15, "energy")
        # From the display's "report a problem" flow, while charging.
        first = await driver.report_problem(
            ReportRequest(connector=1, source="display", category="payment", lang="de")
        )
        event = await asyncio.wait_for(subs[0].get(), 5)
        assert isinstance(event, TicketCreated) and event.ticket_id == first.id
        assert event.connector == 1 and event.source == "display" and event.lang == "de"
        assert event.session_id == first.snapshot.session.session_id
        snap = first.snapshot
        assert snap.status == "Charging" and snap.faults == []
        assert snap.session.state == "active" and snap.session.id_token == "DE*****42"
        got = {(r.device, r.quantity) for r in snap.readings}
        assert {("meter1", "energy_import_wh"), ("evse1", "cp_state")} <= got
        assert {h.device for h in snap.health} == {"meter1", "evse1"}
        thanks = f"Vielen Dank. Ihre Meldung {first.id} wurde an Example Charging GmbH gesendet."
        assert thanks in driver.current(1).lines["de"]
        assert f"│ {thanks}" in (tmp_path / "display.txt").read_text()

        # A pilot fault stops the session; a QR report then carries fault and session.
        rig.sim.inject({"kind": "cp_state_e", "connector": 1})
        await rig.until(lambda: "cp_state_e" in driver.current(1).faults, 20, "fault")
        link = driver.current(1).report_url
        assert link == f"{BASE}?station={STATION}&connector=1"
        req = report_from_link(cfg, link + "&lang=en", text="stopped after 2 minutes")
        second = await driver.report_problem(req)
        assert second.source == "qr" and second.lang == "en"
        assert [f.rule for f in second.snapshot.faults] == ["cp_state_e"]
        assert second.snapshot.session.session_id == first.snapshot.session.session_id
        assert second.snapshot.session.state == "closed"
        assert second.snapshot.session.stop_reason == "EmergencyStop"
        assert second.snapshot.session.record_id is not None
        with pytest.raises(TicketError, match="report link: is for station 'OTHER'"):
            report_from_link(cfg, f"{BASE}?station=OTHER&connector=1", text="x")

    # The agent is gone: both tickets are on disk, queued for the cloud, oldest first.
    with TicketStore(cfg.store.path) as store:
        queued = [t.ticket for t in store.undelivered()]
        assert [t.id for t in queued] == [first.id, second.id]
        assert queued[1] == second
        assert store.mark_delivered(first.id, datetime.now(UTC))
        assert not store.mark_delivered(first.id, datetime.now(UTC))
        assert [t.ticket.id for t in store.undelivered()] == [second.id]
    # ... and after a restart of the agent too.
    async with running(cfg) as rig:
        with TicketStore(cfg.store.path) as store:
            assert {t.ticket.id for t in store.list()} == {first.id, second.id}
        assert rig.agent.driver.current(1).state in ("Faulted", "Finishing", "Preparing")


def test_tickets_table_keeps_undelivered_tickets_and_their_bodies(tmp_path):
    cfg = load_config(write_config(tmp_path, driver=False))
    with TicketStore(cfg.store.path) as store:
        t = create_ticket(store, cfg, ReportRequest(connector=1, source="cli", text="screen dark"))
        assert t.snapshot.status is None and t.snapshot.session is None  # nothing known yet
        with pytest.raises(TicketError, match="no connector 7; station HIL-TCP has 1"):
            create_ticket(store, cfg, ReportRequest(connector=7, source="cli", text="x"))
    db = sqlite3.connect(cfg.store.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="tickets are immutable"):
            db.execute("UPDATE tickets SET body = '{}' WHERE id = ?", (t.id,))
        with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
            db.execute("DELETE FROM tickets WHERE id = ?", (t.id,))
    finally:
        db.close()
    with TicketStore(cfg.store.path) as store:
        assert store.get(t.id.lower()).ticket == t


# ---------------------------------------------------------------- evedge tickets


async def test_tickets_cli(tmp_path, sockdir):
    path = write_config(tmp_path, api=sockdir / "api.sock")
    cfg = load_config(path)
    c = ["--config", str(path)]
    code, _, err = await evedge("tickets", "list", *c)
    assert code == 3 and "no store at" in err  # the agent never ran with this config
    async with running(cfg) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        await asyncio.sleep(1.5)  # a commit of the readings writer
        code, out, err = await evedge(
            "tickets", "create", "--connector", "1", "--text", "cable stuck", "--json", *c
        )
        assert code == 0, err
        made = json.loads(out)
        assert made["via"] == "service"  # the running agent made it (and announced it)
        assert made["connector"] == 1 and made["source"] == "cli" and made["lang"] == "de"
        assert made["id"] in " ".join(rig.agent.driver.current(1).lines["de"])  # thanked
        assert made["snapshot"]["status"] == "Preparing"
        assert any(r["quantity"] == "cp_state" for r in made["snapshot"]["readings"])
        link = f"{BASE}?station={STATION}&connector=1"
        code, out, err = await evedge(
            "tickets", "create", "--link", link, "--category", "not_starting", "--json", *c
        )
        assert code == 0, err
        by_link = json.loads(out)
        assert by_link["source"] == "qr" and by_link["category"] == "not_starting"
        code, _, err = await evedge("tickets", "create", "--connector", "9", "--text", "x", *c)
        assert code == 2 and "report_problem: no connector 9" in err  # the service said so

    # The service is down: the ticket goes into the store, and the CLI says so.
    code, out, err = await evedge(
        "tickets", "create", "--connector", "1", "--category", "damaged", "--json", *c
    )
    assert code == 0, err
    offline = json.loads(out)
    assert offline["via"] == "store" and "the service is not running" in err
    assert "MQTT sync sends it" in offline["note"]
    code, out, err = await evedge("tickets", "list", "--json", *c)
    assert code == 0, err
    listed = json.loads(out)["tickets"]
    assert {t["id"] for t in listed} == {made["id"], by_link["id"], offline["id"]}
    assert all(t["delivered"] is None for t in listed)
    code, out, _ = await evedge("tickets", "show", made["id"], "--json", *c)
    assert code == 0 and json.loads(out)["text"] == "cable stuck"
    code, out, _ = await evedge("tickets", "show", made["id"], *c)
    assert code == 0 and "cable stuck" in out and "status then: Preparing" in out
    code, out, _ = await evedge("tickets", *c)
    assert code == 0 and made["id"] in out and by_link["id"] in out

    code, _, err = await evedge("tickets", "show", "T-000000", *c)
    assert code == 1 and "no ticket 'T-000000'" in err
    bad = f"https://evil.example.org/report?station={STATION}&connector=1"
    code, _, err = await evedge("tickets", "create", "--link", bad, "--text", "x", *c)
    assert code == 2 and "report link: points to evil.example.org/report" in err
    code, _, err = await evedge("tickets", "create", "--connector", "1", *c)
    assert code == 2 and "describe the problem" in err
    code, _, err = await evedge("tickets", "create", "--connector", "1", "--link", link, *c)
    assert code == 2 and "exactly one of --connector N or --link URL" in err
    code, _, err = await evedge("tickets", "create", "--connector", "9", "--text", "x", *c)
    assert code == 2 and "no connector 9" in err
    code, _, err = await evedge(
        "tickets", "create", "--connector", "1", "--text", "x", "--category", "fire", *c
    )
    assert code == 2 and "category" in err
    code, out, _ = await evedge("tickets", "list", "--json", *c)
    assert len(json.loads(out)["tickets"]) == 3  # nothing created by the refused commands


# ---------------------------------------------------------------- API and MQTT, no restart


def reporting_station(tmp_path: Path, sock: Path, broker: Broker):
    """Station TEST (as the MQTT test cloud expects) with [driver], [api] and [mqtt]."""
    driver = DriverConfig(language="de", operator="Example Charging GmbH", hotline="+49 30 1234")
    cfg = billed_config(tmp_path).model_copy(
        update={"driver": driver, "api": ApiConfig(socket=sock, mode=0o600)}
    )
    return with_mqtt(cfg, broker)


async def api(sock: Path, op: str, **args):
    return await asyncio.to_thread(call, sock, op, 10.0, **args)


def tickets_sent(backend: Backend) -> dict[str, dict]:
    """Ticket id -> ticket, as the cloud received them on the tickets stream."""
    return {m.json()["ticket"]["id"]: m.json()["ticket"] for m in backend.on("tickets")}


async def arrives(backend: Backend, ticket_id: str) -> dict:
    await asyncio.to_thread(
        backend.wait, lambda ms: ticket_id in tickets_sent(backend), 20, f"ticket {ticket_id}"
    )
    return tickets_sent(backend)[ticket_id]


async def test_reports_through_api_and_mqtt_reach_the_cloud_without_a_restart(
    tmp_path, sockdir, broker
):
    sock = sockdir / "api.sock"
    cfg = reporting_station(tmp_path, sock, broker)
    # Written while the service is down (the CLI's fallback): sent once the service starts.
    with TicketStore(cfg.store.path) as store:
        offline = create_ticket(store, cfg, ReportRequest(connector=1, source="cli", text="dark"))
    backend = Backend(broker).connect()
    cloud = Cloud(backend)
    events: list = []

    def setup(agent):
        events.append(agent.bus.subscribe(TicketCreated))
        agent.mqtt.ticket_poll_s = 3600  # no poll: what arrives came by TicketCreated

    try:
        async with running(cfg, setup=setup):
            assert (await arrives(backend, offline.id))["text"] == "dark"

            # A display controller's report through the local API (a read-level operation).
            got = await api(sock, "report_problem", connector=1, category="damaged",
                            text="cable torn", lang="en")  # fmt: skip
            assert got["connector"] == 1 and got["source"] == "api" and got["lang"] == "en"
            event = await asyncio.wait_for(events[0].get(), 5)
            assert event.ticket_id == got["ticket_id"]
            sent = await arrives(backend, got["ticket_id"])
            assert sent["text"] == "cable torn" and sent["category"] == "damaged"
            assert sent["snapshot"]["status"] == "Available"
            # The driver's screen, in the driver's language and in the station's.
            en = await api(sock, "driver_screen", connector=1, lang="en")
            assert en["lang"] == "en" and got["ticket_id"] in " ".join(en["lines"])
            de = await api(sock, "driver_screen", connector=1)
            assert de["lang"] == "de" and de["headline"] != en["headline"]

            # A display controller speaking MQTT: the report_problem command.
            reply = await cloud.run("report_problem", {"connector": 1, "category": "payment"})
            assert reply["ok"], reply
            assert reply["result"]["source"] == "display" and reply["result"]["lang"] == "de"
            assert (await arrives(backend, reply["result"]["ticket_id"]))["category"] == "payment"
            bad = await cloud.run("report_problem", {"connector": 1})
            assert bad["error"]["code"] == "invalid" and "describe the problem" in str(bad)
            gone = await cloud.run("report_problem", {"connector": 7, "text": "x"})
            assert gone["error"]["code"] == "not_found" and "no connector 7" in str(gone)

            # Invalid reports: a clear error each, and no ticket.
            invalid = [
                ("report_problem", {"connector": 1}, "bad_request", "describe the problem"),
                ("report_problem", {"connector": 1, "text": "x", "lang": "fr"}, "bad_request",
                 "must be one of en, de"),
                ("report_problem", {"connector": 1, "text": "x", "category": "fire"},
                 "bad_request", "category"),
                ("report_problem", {"connector": 1, "text": "x", "seat": 3}, "bad_request",
                 "seat"),
                ("report_problem", {"text": "x"}, "bad_request", "connector"),
                ("report_problem", {"connector": 3, "text": "x"}, "not_found", "no connector 3"),
                ("driver_screen", {"connector": 1, "lang": "fr"}, "bad_request", "lang"),
                ("driver_screen", {"connector": 4}, "not_found", "no connector 4"),
            ]  # fmt: skip
            for op, args, code, text in invalid:
                with pytest.raises(ApiError) as e:
                    await api(sock, op, **args)
                assert (e.value.code, text in e.value.message) == (code, True), (op, args, e.value)
            with TicketStore(cfg.store.path) as store:
                assert len(store.list()) == 3
    finally:
        backend.close()
    assert validate(backend.on("tickets")) == 3
    assert len(tickets_sent(backend)) == 3  # each ticket once, none twice


async def test_tickets_another_process_writes_are_picked_up_while_running(tmp_path, broker):
    cfg = with_mqtt(station_config(extra=f'[store]\npath = "{tmp_path / "evedge.db"}"\n'), broker)
    backend = Backend(broker).connect()
    agent = Agent(cfg)
    agent.mqtt.ticket_poll_s = 0.2
    await agent.start()
    try:
        await asyncio.to_thread(backend.wait, lambda ms: backend.on("status"), 10, "online")
        # `evedge tickets create` fell back to the store (say the API was unreachable).
        now = datetime.now(UTC)
        ticket = Ticket(
            id="T-0A51DE", station="TEST", connector=1, created=now, source="cli",
            category="other", lang="en", text="aside", contact=None,
            snapshot=Snapshot(taken=now, status=None, faults=[], readings=[], health=[],
                              session=None),
        )  # fmt: skip
        with TicketStore(cfg.store.path) as store:
            store.insert(ticket)
        assert (await arrives(backend, ticket.id))["text"] == "aside"
    finally:
        await agent.stop()
        backend.close()
