"""Diagnosis inside the running agent, in real time: bus in, faults out and in the store, a
restart that keeps the active fault, and the technician CLI (`evedge faults`, `evedge
diagnose`) as a real subprocess against the simulated station."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from agent.config import load_config
from agent.diagnosis.store import FaultLog
from agent.events import FaultCleared, FaultRaised
from agent.runtime import Agent
from drivers.profile import load_profile
from hil.probe import write_value
from hil.scenarios.stations import station_toml
from hil.station import SimStation

ROOT = Path(__file__).resolve().parents[1]
FAST = "[diagnosis.rule.device_not_answering]\nraise_after_s = 0.5\nclear_after_s = 0.5\n"


async def evedge(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI in a subprocess while this loop keeps the simulator serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli.main", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},  # rich: no wrapping inside the asserted text
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "station.toml"
    path.write_text(station_toml("tcp", store=str(tmp_path / "evedge.db"), extra=extra))
    return path


async def wait_for(sub, pred, timeout: float = 15.0):
    async def loop():
        while True:
            ev = await sub.get()
            if pred(ev):
                return ev

    return await asyncio.wait_for(loop(), timeout)


@contextlib.asynccontextmanager
async def running(cfg):
    agent = Agent(cfg)
    sub = agent.bus.subscribe(FaultRaised, FaultCleared)
    await agent.start()
    try:
        yield agent, sub
    finally:
        await agent.stop()


async def test_agent_raises_stores_survives_a_restart_and_clears(tmp_path):
    path = write_config(tmp_path, FAST)
    cfg = load_config(path)
    mine = lambda ev: ev.rule == "device_not_answering"  # noqa: E731
    async with SimStation(cfg, tick_s=0.1) as sim:
        async with running(cfg) as (agent, sub):
            assert agent.diagnosis is not None
            await asyncio.sleep(1.5)  # polled clean
            sim.inject({"kind": "no_response", "device": "meter1"})
            raised = await wait_for(sub, mine)
            assert isinstance(raised, FaultRaised) and raised.scope == "device:meter1"
            assert raised.codes.error_code == "PowerMeterFailure"
            await asyncio.sleep(0.3)  # the service stores it right after publishing
            with FaultLog(cfg.store.path) as log:
                (stored,) = [r for r in log.active() if mine(r.raised)]
            assert stored.raised == raised

            code, out, err = await evedge("faults", "--config", str(path), "--json")
            assert code == 0, err
            doc = json.loads(out)
            (shown,) = [f for f in doc["faults"] if f["rule"] == "device_not_answering"]
            assert shown["fault_id"] == raised.fault_id and shown["active"] is True
            code, out, err = await evedge("faults", "--config", str(path), "--lang", "de")
            assert code == 0, err
            assert "Gerät antwortet nicht" in out and "meter1" in out

        # Restart: the fault is still there (still true), not raised a second time.
        async with running(cfg) as (agent, sub):
            await asyncio.sleep(1.5)  # past raise_after with the meter still silent
            assert [f.fault_id for f in agent.diagnosis.engine.active() if mine(f)] == [
                raised.fault_id
            ]
            assert all(not mine(e) for e in drain(sub))
            sim.clear()
            cleared = await wait_for(sub, lambda e: isinstance(e, FaultCleared) and mine(e))
            assert cleared.fault_id == raised.fault_id and cleared.reason == "resolved"
            await asyncio.sleep(0.3)

    code, out, _ = await evedge("faults", "--config", str(path), "--history", "--json")
    (record,) = [f for f in json.loads(out)["faults"] if f["fault_id"] == raised.fault_id]
    assert record["active"] is False and record["cleared"]["reason"] == "resolved"


def drain(sub) -> list:
    out = []
    while (ev := sub.get_nowait()) is not None:
        out.append(ev)
    return out


async def test_diagnose_finds_what_is_wrong_and_says_what_to_do(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path)
    async with SimStation(cfg, tick_s=0.1) as sim:
        sim.plug_in(1)
        await cfg_enable(sim)
        code, out, err = await evedge("diagnose", "--config", str(path), "--json", "--gap", "0.2")
        doc = json.loads(out)
        by = {(f["check"], f["target"]): f for f in doc["findings"]}
        assert by[("bus_scan", "meter1")]["ok"] and by[("bus_scan", "evse1")]["ok"]
        assert by[("plausibility", "meter1")]["ok"]  # charging: P ≈ Σ V·I·PF checked
        assert "Σ V·I·PF" in by[("plausibility", "meter1")]["message"]
        assert by[("energy", "meter1")]["ok"]
        assert ("clock", "station") in by and ("disk", "station") in by
        # Exit 1 exactly when a check found a problem (the host's clock may be one).
        assert code == (1 if any(not f["ok"] for f in doc["findings"]) else 0), err

        sim.inject({"kind": "no_response", "device": "meter1"})
        sim.inject({"kind": "exception", "device": "evse1", "code": 2})
        code, out, _ = await evedge("diagnose", "--config", str(path), "--gap", "0.1")
        assert code == 1
        text = " ".join(out.split())
        assert "does not answer" in text and "refuses requests with exception 02" in text
        assert "Run `evedge modbus scan` on bus lan" in text  # the rule's own guidance
        code, out, _ = await evedge("diagnose", "--config", str(path), "--json", "--lang", "de")
        meter = next(f for f in json.loads(out)["findings"] if f["target"] == "meter1")
        assert meter["rule"] == "device_not_answering" and not meter["ok"]
        assert meter["steps"]["de"][0].startswith("Prüfen, ob meter1 Spannung hat")


async def cfg_enable(sim: SimStation) -> None:
    """Let the car charge: enable the EVSE at 32 A over Modbus, as the agent would."""
    evse = sim.cfg.device_by_name("evse1")
    profile = load_profile(evse.profile)
    client = AsyncModbusTcpClient("127.0.0.1", port=evse.port, timeout=0.5, retries=0)
    assert await client.connect()
    try:
        await write_value(client, profile, "offered_current_a", 32.0, evse.unit)
        await write_value(client, profile, "charging_enabled", True, evse.unit)
    finally:
        client.close()
    await asyncio.sleep(0.5)


async def test_faults_cli_errors_and_empty_store(tmp_path):
    path = write_config(tmp_path)
    code, _, err = await evedge("faults", "--config", str(path))
    assert code == 3 and "no store at" in " ".join(err.split())
    with FaultLog(tmp_path / "evedge.db"):
        pass  # an empty store
    code, out, _ = await evedge("faults", "--config", str(path))
    assert code == 0 and "no active faults" in out
    code, _, err = await evedge("faults", "--config", str(path), "--lang", "fr")
    assert code == 2 and "--lang must be en or de" in err


async def test_diagnosis_can_be_switched_off(tmp_path):
    cfg = load_config(write_config(tmp_path, "[diagnosis]\nenabled = false\n"))
    agent = Agent(cfg)
    try:
        assert agent.diagnosis is None
    finally:
        agent.store.close()
