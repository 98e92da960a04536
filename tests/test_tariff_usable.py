"""Tariffs validated for use, not only for shape (agent/billing/usable.py), over every path: the
config file at start, MQTT and API set_tariff, `evedge tariff check`; and a tariff that
expired while in force: sessions still priced, and flagged for review with the reason."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sessions_helpers import TARIFFS, billed_config, body, running
from structlog.testing import capture_logs
from test_api import raw, with_api
from test_mqtt_commands import Cloud
from test_mqtt_sync import with_mqtt
from typer.testing import CliRunner

from agent.billing.tariff import tariff_from_data
from agent.billing.tariff_cmd import app
from agent.billing.usable import TariffLimits, usable_problems
from agent.config import ConfigError, load_config

runner = CliRunner()
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def doc(price="0.39", step=1, currency="EUR", **top) -> dict:
    comp = {"type": "ENERGY", "price": price, "vat": 19, "step_size": step}
    return {"id": "T-USE", "currency": currency, "elements": [{"price_components": [comp]}], **top}


def problems(d: dict, limits: TariffLimits | None = None) -> dict[str, str]:
    return dict(usable_problems(tariff_from_data(d), limits or TariffLimits(), NOW))


def test_a_sensible_tariff_has_no_problem():
    assert problems(doc(end_date_time="2027-01-01T00:00:00Z")) == {}


@pytest.mark.parametrize(
    ("d", "path", "words"),
    [
        (doc(end_date_time="2020-01-01T00:00:00Z"), "end_date_time", "expired at 2020-01-01"),
        (doc(start_date_time="2027-01-01T00:00:00Z"), "start_date_time", "not in force until"),
        (doc(price="1e30"), "elements[0].price_components[0].price", "above the ceiling 5"),
        (doc(step=2**63), "elements[0].price_components[0].step_size", "above the largest"),
        (doc(min_price={"excl_vat": "5000"}), "min_price.excl_vat", "session ceiling 1000"),
        (doc(currency="XAU"), "currency", "no price ceiling for XAU"),
    ],
)
def test_unusable_tariffs_are_named_with_the_reason(d, path, words):
    found = problems(d)
    assert path in found and words in found[path], found


def test_ceilings_come_from_the_config_over_the_defaults():
    limits = TariffLimits.model_validate(
        {
            "max_step_wh": 500,
            "price_ceilings": {
                "eur": {"energy": "0.30", "time": 1, "parking_time": 1, "flat": 1, "session": 10}
            },
        }
    )
    assert (
        "above the ceiling 0.30" in problems(doc(), limits)["elements[0].price_components[0].price"]
    )
    assert problems(doc(step=1000), limits)["elements[0].price_components[0].step_size"]
    assert problems(doc(currency="USD"), limits) == {}  # the defaults stay for the others


def write(tmp_path: Path, d: dict) -> Path:
    f = tmp_path / "tariff.json"
    f.write_text(json.dumps(d))
    return f


def test_tariff_check_refuses_unusable_tariffs(tmp_path):
    for d, words in [
        (doc(end_date_time="2020-01-01T00:00:00Z"), "expired at"),
        (doc(price="1e30"), "above the ceiling"),
        (doc(step=2**63), "above the largest step"),
    ]:
        res = runner.invoke(app, ["check", str(write(tmp_path, d)), "--json"])
        assert res.exit_code == 2, res.output
        assert words in json.dumps(json.loads(res.stdout)["problems"])
    for name in ("simple-energy.json", "energy-parking-flat.json", "time-of-use.toml"):
        assert runner.invoke(app, ["check", str(TARIFFS / name)]).exit_code == 0


def test_the_config_file_refuses_absurd_tariffs_at_start(tmp_path):
    toml = tmp_path / "station.toml"
    toml.write_text(
        f'[station]\nid = "T"\n[store]\npath = "{tmp_path / "evedge.db"}"\n[billing]\n'
        f'tariff = "{write(tmp_path, doc(price="1e30"))}"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(toml)
    assert any(p == "billing.tariff" and "above the ceiling" in m for p, m in e.value.problems)
    toml.write_text(toml.read_text() + '[billing.tariff_limits.price_ceilings.EUR]\nenergy = 1e31\n'
                    'time = 1\nparking_time = 1\nflat = 1\nsession = 1\n')  # fmt: skip
    assert load_config(toml).billing.tariff_limits.price_ceilings["EUR"].energy > Decimal("1e30")


async def test_mqtt_set_tariff_refuses_an_expired_tariff(tmp_path, broker):
    from mqtt_helpers import Backend

    backend = Backend(broker).connect()
    try:
        async with running(with_mqtt(billed_config(tmp_path), broker)) as rig:
            await rig.until(lambda: rig.agent.mqtt.connection.connected, 10, "connected")
            expired = doc(end_date_time="2020-01-01T00:00:00Z")
            got = await Cloud(backend).run("set_tariff", {"tariff": expired})
            assert not got["ok"] and got["error"]["code"] == "refused"
            assert "end_date_time: expired at 2020-01-01" in got["error"]["message"]
            assert rig.engine.tariff.id == "EVEDGE-SIMPLE-039"
    finally:
        backend.close()


async def test_api_set_tariff_refuses_absurd_and_future_tariffs(tmp_path):
    sockdir = Path(tempfile.mkdtemp(prefix="evuse-", dir="/tmp"))
    sock = sockdir / "api.sock"
    try:
        async with running(with_api(billed_config(tmp_path), sock)) as rig:
            later = doc(start_date_time=(datetime.now(UTC) + timedelta(days=9)).isoformat())
            lines = [json.dumps({"op": "set_tariff", "args": {"document": d}}).encode() + b"\n"
                     for d in (doc(price="1e30"), doc(step=2**63), later)]  # fmt: skip
            answers = await asyncio.wait_for(raw(sock, *lines), 20)
            assert [a["error"]["code"] for a in answers] == ["refused"] * 3, answers
            assert "above the ceiling" in answers[0]["error"]["message"]
            assert "above the largest step" in answers[1]["error"]["message"]
            assert "not in force until" in answers[2]["error"]["message"]
            assert rig.engine.tariff.id == "EVEDGE-SIMPLE-039"
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


async def test_a_tariff_that_expired_in_force_prices_and_flags_each_session(tmp_path):
    # The config's tariff expired (the agent loads it: CLI commands and the station must go
    # on). Sessions are priced by it, as the display showed, and flagged for a person.
    shipped = json.loads((TARIFFS / "simple-energy.json").read_text())
    shipped["end_date_time"] = "2020-01-01T00:00:00Z"
    tariff = write(tmp_path, shipped)
    with capture_logs() as logs:
        async with running(billed_config(tmp_path, tariff=tariff)) as rig:
            await rig.card_charging()
            await asyncio.sleep(0.5)
            rig.sim.unplug(1)
            rec = await rig.record()
    assert [e["tariff"] for e in logs if e["event"] == "sessions.tariff_not_in_force"] == [
        "EVEDGE-SIMPLE-039"
    ]
    b = body(rec)
    assert b["cost"]["total_excl_vat"] is not None and rec.total_excl_vat is not None
    assert b["review"]["required"] is True and rec.review == 1
    assert any(
        "was not in force when the session started" in r and "2020-01-01" in r
        for r in b["review"]["reasons"]
    )
    # The cloud recomputes the record from its body with the same tariff file.
    rec_file = tmp_path / "record.json"
    rec_file.write_text(json.dumps(b))
    res = runner.invoke(
        app, ["quote", str(tariff), "--session", str(rec_file), "--tz", "Europe/Berlin", "--json"]
    )
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["total_excl_vat"] == b["cost"]["total_excl_vat"]
    assert again["total_incl_vat"] == b["cost"]["total_incl_vat"]
    assert again["energy_wh"] == b["energy_wh"]
