"""A tariff change mid-session (ops/MQTT/OCPP "set tariff"): validated, written atomically,
in force at once; the running session gets a new charging period priced by the new tariff."""

from __future__ import annotations

import asyncio
import json
import shutil
from decimal import Decimal

import pytest
from sessions_helpers import CARD, TARIFFS, billed_config, body, running

from agent.billing.tariff import load_tariff
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token


def new_tariff(price: str, tid: str = "EVEDGE-NEW-050") -> str:
    return json.dumps(
        {
            "id": tid,
            "currency": "EUR",
            "elements": [
                {
                    "price_components": [
                        {"type": "ENERGY", "price": price, "vat": 19, "step_size": 1}
                    ]
                }
            ],
        }
    )


async def test_session_spanning_a_tariff_change_has_two_periods(tmp_path):
    tariff = tmp_path / "tariff.json"
    shutil.copy(TARIFFS / "simple-energy.json", tariff)
    async with running(billed_config(tmp_path, tariff=tariff), tick_s=None) as rig:
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        await rig.engine.authorize(1, card_token(CARD))
        await rig.status("Charging")
        for _ in range(30):
            await asyncio.sleep(0.05)
            rig.sim.step(0.05)
        await rig.until(lambda: rig.conn.energy[0] == rig.register(), 5, "register polled")
        assert await rig.engine.set_tariff(new_tariff("0.50")) == "EVEDGE-NEW-050"
        for _ in range(30):
            await asyncio.sleep(0.05)
            rig.sim.step(0.05)
        rig.sim.unplug(1)
        rec = await rig.record()
    b = body(rec)
    charging = [p for p in b["charging_periods"] if p["charging"]]
    assert [p["tariff_id"] for p in charging] == ["EVEDGE-SIMPLE-039", "EVEDGE-NEW-050"]
    assert [p["lines"][0]["unit_price"] for p in charging] == ["0.39", "0.50"]
    assert all(p["energy_wh"] > 0 for p in charging)
    assert sum(p["energy_wh"] for p in b["charging_periods"]) == b["energy_wh"]
    excl = sum(Decimal(p["energy_wh"]) * Decimal(p["lines"][0]["unit_price"]) for p in charging)
    assert Decimal(b["cost"]["total_excl_vat"]) == (excl / 1000).quantize(Decimal("0.01"))
    assert '"TX":"T"' in b["ocmf"]["end"]  # the change is a signed reading
    assert load_tariff(tariff).id == "EVEDGE-NEW-050"  # the file was replaced


async def test_bad_tariffs_are_refused_and_the_file_kept(tmp_path):
    tariff = tmp_path / "tariff.json"
    shutil.copy(TARIFFS / "simple-energy.json", tariff)
    before = tariff.read_bytes()
    async with running(billed_config(tmp_path, tariff=tariff)) as rig:
        with pytest.raises(CommandRefused, match="price"):
            await rig.engine.set_tariff(new_tariff("-1"))
        usd = new_tariff("0.5").replace("EUR", "USD")
        with pytest.raises(CommandRefused, match="station bills EUR"):
            await rig.engine.set_tariff(usd)
        with pytest.raises(CommandRefused):
            await rig.engine.set_tariff("{not json")
        assert rig.engine.tariff.id == "EVEDGE-SIMPLE-039"
    assert tariff.read_bytes() == before
