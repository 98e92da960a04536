"""A latched hardware fault in the whole agent: the session stops, the fault stays, the
connector stays Faulted (also on the driver display), it survives a restart, and a
technician clears it with `evedge faults clear` (CLI -> local API -> diagnosis).

Real time, over real Modbus against the simulated station, on the Phoenix EV Charge
Control (no contactor feedback) and the reference controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from sessions_helpers import CARD, billed_config, running

from agent.events import FaultCleared, FaultLatch, FaultRaised
from agent.ops import OpError, Ops
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from hil import REFERENCE_EVSE
from hil.station import SimStation

PROFILES = ["phoenix-ev-charge-control", REFERENCE_EVSE]
EVEDGE = str(Path(sys.executable).with_name("evedge"))
RULE = "contactor_fails_to_close"
TUNING = f"[diagnosis.rule.{RULE}]\nraise_after_s = 2\nclear_after_s = 1\n"
DRIVER = '[driver]\noperator = "Test"\nhotline = "+49 30 1234"\n'


@pytest.fixture
def sock():
    # Short: a Unix socket path is at most 107 bytes, pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="evlatch-", dir="/tmp"))
    yield d / "api.sock"
    shutil.rmtree(d, ignore_errors=True)


async def evedge(*args: str) -> tuple[int, str, str]:
    """`evedge ARGS` without blocking the loop the agent (and its API) runs on."""
    proc = await asyncio.create_subprocess_exec(
        EVEDGE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


class Watch:
    """The fault events on an agent's bus."""

    def __init__(self, agent):
        self.sub = agent.bus.subscribe(FaultRaised, FaultLatch, FaultCleared)
        self.seen: list = []

    def of(self, kind: type, fault_id: str | None = None, rule: str | None = None) -> list:
        while (ev := self.sub.get_nowait()) is not None:
            self.seen.append(ev)
        return [
            e
            for e in self.seen
            if isinstance(e, kind)
            and fault_id in (None, e.fault_id)
            and rule in (None, getattr(e, "rule", None))
        ]


@pytest.mark.timeout(300)  # five CLI runs: each starts a Python on a busy 2-core machine
@pytest.mark.parametrize("profile", PROFILES, ids=["phoenix", "reference"])
async def test_latched_after_the_stop_survives_a_restart_cleared_by_evedge_faults_clear(
    tmp_path, sock, profile
):
    api = f'[api]\nsocket = "{sock}"\nmode = "0600"\n'
    cfg = billed_config(tmp_path, evse_profile=profile, diagnosis=TUNING + api + DRIVER)
    cli = tmp_path / "cli.toml"  # what the technician's `evedge` reads
    cli.write_text(f'[station]\nid = "TEST"\n[store]\npath = "{cfg.store.path}"\n{api}')
    sim = SimStation(cfg, tick_s=0.1)
    await sim.start()
    try:
        async with running(cfg, sim=sim) as rig:
            watch = Watch(rig.agent)
            sim.inject({"kind": "contactor_stuck_open", "connector": 1})
            sim.plug_in(1)
            await rig.status("Preparing")
            assert await rig.engine.authorize(1, card_token(CARD)) == "started"
            await rig.until(lambda: watch.of(FaultRaised, rule=RULE), 20, f"{RULE} raised")
            (fault,) = watch.of(FaultRaised, rule=RULE)
            fid = fault.fault_id
            # The agent's reaction: the session stops, the symptom (pilot C, 0 A) goes ...
            await rig.until(lambda: watch.of(FaultLatch, fid), 20, "the fault latched")
            assert watch.of(FaultLatch, fid)[-1].state == "latched"
            assert rig.events("stopped")[-1].reason == "EmergencyStop"
            # ... and the fault does not: well past clear_after_s it still holds.
            await asyncio.sleep(4)
            assert watch.of(FaultCleared, fid) == []
            await rig.status("Faulted")
            with pytest.raises(CommandRefused, match=f"faulted .*{fid}"):
                await rig.engine.authorize(1, card_token(CARD))
            screen = await Ops(rig.agent).driver_screen(1)
            assert RULE in screen.faults and screen.status == "Faulted"
            watch.sub.close()

        # A restart is no repair: the latch comes back from the store.
        async with running(cfg, sim=sim) as rig:
            watch = Watch(rig.agent)
            await rig.status("Faulted")
            assert fid in rig.conn.faults
            with pytest.raises(CommandRefused, match="faulted"):
                await rig.engine.authorize(1, card_token(CARD))
            screen = await Ops(rig.agent).driver_screen(1)
            assert RULE in screen.faults
            rc, out, err = await evedge("faults", "--config", str(cli), "--json")
            assert rc == 0, err
            (shown,) = [f for f in json.loads(out)["faults"] if f["rule"] == RULE]
            assert (shown["fault_id"], shown["latched"], shown["clear"]) == (fid, True, "evidence")
            rc, out, err = await evedge("faults", "--config", str(cli))
            assert rc == 0 and "latched" in out and f"evedge faults clear {fid}" in out, out

            sim.clear()  # the technician replaces the contactor ...
            rc, out, err = await evedge("faults", "clear", fid, "--note", "contactor replaced",
                                        "--config", str(cli))  # fmt: skip
            assert rc == 0, err
            assert "contactor replaced" in out
            await rig.until(lambda: watch.of(FaultCleared, fid), 10, "the clear on the bus")
            (cleared,) = watch.of(FaultCleared, fid)
            assert cleared.reason == "manual" and cleared.note == "contactor replaced"
            assert cleared.by and cleared.by.startswith("api:")
            # ... and the connector works again.
            await rig.status("Preparing", "Available")
            assert await rig.engine.authorize(1, card_token(CARD)) == "started"
            await rig.status("Charging")
            # The history keeps who, when and the note.
            rc, out, err = await evedge("faults", "--history", "--config", str(cli), "--json")
            (hist,) = [f for f in json.loads(out)["faults"] if f["fault_id"] == fid]
            assert hist["cleared"]["reason"] == "manual" and hist["cleared"]["by"] == cleared.by
            # Clearing it again is refused with a clear message (the API's operation).
            with pytest.raises(OpError, match=f"no active fault '{fid}'"):
                await Ops(rig.agent).clear_fault(fid, "again")
            watch.sub.close()
    finally:
        with contextlib.suppress(Exception):
            await sim.stop()


async def test_evedge_faults_clear_refuses_bad_input_and_needs_the_service(tmp_path, sock):
    cli = tmp_path / "cli.toml"
    cli.write_text(f'[station]\nid = "T"\n[api]\nsocket = "{sock}"\n')
    rc, _, err = await evedge("faults", "clear", "x y", "--note", "n", "--config", str(cli))
    assert rc == 2 and "fault_id" in err
    rc, _, err = await evedge("faults", "clear", "F-1", "--note", "  ", "--config", str(cli))
    assert rc == 2 and "note" in err
    rc, _, err = await evedge("faults", "clear", "F-1", "--note", "ok", "--config", str(cli))
    assert rc == 3 and "needs the running service" in err


@pytest.mark.parametrize("profile", PROFILES, ids=["phoenix", "reference"])
async def test_a_retry_frees_the_connector_once_and_the_defect_holds_it_again(tmp_path, profile):
    tuning = f"[diagnosis.rule.{RULE}]\nraise_after_s = 2\nclear_after_s = 1\n"
    tuning += "retries = 1\nretry_backoff_s = 2\n"
    cfg = billed_config(tmp_path, evse_profile=profile, diagnosis=tuning)
    async with running(cfg) as rig:
        watch = Watch(rig.agent)
        rig.sim.inject({"kind": "contactor_stuck_open", "connector": 1})
        rig.sim.plug_in(1)
        await rig.status("Preparing")
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        await rig.until(lambda: watch.of(FaultRaised, rule=RULE), 20, f"{RULE} raised")
        fid = watch.of(FaultRaised, rule=RULE)[0].fault_id
        states = lambda: [e.state for e in watch.of(FaultLatch, fid)]  # noqa: E731
        await rig.until(lambda: states()[-1:] == ["retry"], 20, "a retry allowed")
        # Free for one attempt (the car still plugged in after the stop: Finishing).
        await rig.status("Finishing", "Preparing")
        assert fid not in rig.conn.faults
        assert await rig.engine.authorize(1, card_token(CARD)) == "started"
        # The contactor still does not close: the fault holds the connector again.
        await rig.until(lambda: "active" in states(), 20, "the defect is back")
        await rig.until(lambda: states()[-1:] == ["latched"] and len(states()) >= 4, 20, "latch")
        assert states() == ["latched", "retry", "active", "latched"]
        assert watch.of(FaultLatch, fid)[-1].retry_at is None  # its one retry is used up
        assert [e.reason for e in rig.events("stopped")] == ["EmergencyStop", "EmergencyStop"]
        await rig.status("Faulted")
        with pytest.raises(CommandRefused, match=fid):
            await rig.engine.authorize(1, card_token(CARD))
        assert watch.of(FaultCleared, fid) == []
        watch.sub.close()
