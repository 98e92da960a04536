"""A tariff change mid-session (ops/MQTT "set tariff"): validated, kept atomically in the state
directory beside the store (never in the config's read-only tariff file), in force at once and
after a restart; the running session gets a new charging period priced by the new tariff."""

from __future__ import annotations

import asyncio
import json
import shutil
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from sessions_helpers import CARD, TARIFFS, billed_config, body, running

from agent.billing.tariff import load_tariff
from agent.bus import EventBus
from agent.config import StationConfig
from agent.sessions.config import REMOTE_TARIFF_FILE
from agent.sessions.engine import CommandRefused, SessionEngine
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
    assert load_tariff(tmp_path / REMOTE_TARIFF_FILE).id == "EVEDGE-NEW-050"
    assert load_tariff(tariff).id == "EVEDGE-SIMPLE-039"  # the config's file is not written


@contextmanager
def engine_at_start(cfg: StationConfig):
    """A session engine constructed as at a (re)start: it picks the tariff in force."""
    engine = SessionEngine(cfg, EventBus(), {})
    try:
        yield engine
    finally:
        engine.close()


def read_only_tariff(tmp_path: Path) -> Path:
    """The config's tariff in a directory like /etc/evedge under ProtectSystem=strict."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(TARIFFS / "simple-energy.json", etc / "tariff.json")
    etc.chmod(0o555)
    (etc / "tariff.json").chmod(0o444)
    return etc / "tariff.json"


async def test_remote_tariff_is_kept_in_the_state_dir_and_wins_after_a_restart(tmp_path):
    tariff = read_only_tariff(tmp_path)
    before = tariff.read_bytes()
    cfg = billed_config(tmp_path, tariff=tariff)
    try:
        with engine_at_start(cfg) as engine:
            assert engine.tariff_choice.source == "config"
            assert engine.tariff_choice.reason == "no tariff was set remotely"
            assert await engine.set_tariff(new_tariff("0.50")) == "EVEDGE-NEW-050"
            assert engine.tariff.id == "EVEDGE-NEW-050"
        # Tests may run as root, where 0555 does not stop a write: compare the bytes too.
        assert tariff.read_bytes() == before
        assert sorted(p.name for p in tariff.parent.iterdir()) == ["tariff.json"]
        remote = tmp_path / REMOTE_TARIFF_FILE
        assert load_tariff(remote).id == "EVEDGE-NEW-050"
        with engine_at_start(cfg) as engine:  # the restart
            choice = engine.tariff_choice
            assert (engine.tariff.id, choice.source, choice.path) == (
                "EVEDGE-NEW-050", "remote", remote
            )  # fmt: skip
            assert str(tariff) in choice.reason
            assert await engine.set_tariff(new_tariff("0.61", "EVEDGE-NEW-061")) == "EVEDGE-NEW-061"
        with engine_at_start(cfg) as engine:
            assert engine.tariff.id == "EVEDGE-NEW-061"
        assert tariff.read_bytes() == before
    finally:
        tariff.parent.chmod(0o755)


async def test_a_local_edit_of_the_config_tariff_wins_over_an_older_remote_one(tmp_path):
    tariff = tmp_path / "tariff.json"
    shutil.copy(TARIFFS / "simple-energy.json", tariff)
    cfg = billed_config(tmp_path, tariff=tariff)
    with engine_at_start(cfg) as engine:
        await engine.set_tariff(new_tariff("0.50"))
    tariff.write_text(new_tariff("0.45", "EVEDGE-LOCAL-045"))  # the technician's new tariff
    with engine_at_start(cfg) as engine:
        assert engine.tariff.id == "EVEDGE-LOCAL-045"
        assert engine.tariff_choice.source == "config"
        assert "changed since it was set" in engine.tariff_choice.reason
    (tmp_path / REMOTE_TARIFF_FILE).write_text("{broken")  # and a damaged remote file
    with engine_at_start(cfg) as engine:
        assert engine.tariff.id == "EVEDGE-LOCAL-045"
        assert "cannot be used" in engine.tariff_choice.reason


async def test_an_unwritable_state_dir_refuses_the_change_and_keeps_the_tariff(tmp_path):
    tariff = tmp_path / "tariff.json"
    shutil.copy(TARIFFS / "simple-energy.json", tariff)
    with engine_at_start(billed_config(tmp_path, tariff=tariff)) as engine:
        (tmp_path / REMOTE_TARIFF_FILE).mkdir()  # a directory cannot be replaced by a file
        with pytest.raises(CommandRefused, match=f"not saved to .*{REMOTE_TARIFF_FILE}"):
            await engine.set_tariff(new_tariff("0.50"))
        assert engine.tariff.id == "EVEDGE-SIMPLE-039"


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
    assert not (tmp_path / REMOTE_TARIFF_FILE).exists()
