"""Shared pieces of the OCPP transaction tests: a billed station wired to a real test CSMS
(hil/csms.py) on loopback, and readers of what the CSMS received."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from conftest import free_port
from sessions_helpers import CARD, TARIFFS, Rig, billed_config, running

from agent.config import StationConfig
from hil.csms import Received, TestCsms

EVEDGE = str(Path(sys.executable).parent / "evedge")
CP = "TEST"  # the charge point id: station.id of the billed test config
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
AUTH = f'local_list = [{{ id = "{CARD}" }}, {{ id = "BLOCKED-1", status = "Blocked" }}]'


def ocpp_config(
    tmp_path: Path,
    csms_url: str,
    *,
    keys: dict[str, str] | None = None,
    billing: str = "",
    call_timeout_s: float = 2,
) -> StationConfig:
    """The billed one-connector station with an [ocpp] section pointing at `csms_url`."""
    base = {"MeterValueSampleInterval": "0", "TransactionMessageRetryInterval": "1"}
    base.update(keys or {})
    inline = ", ".join(f'{k} = "{v}"' for k, v in base.items())
    ocpp = (
        f'\n[ocpp]\nurl = "{csms_url}"\ncall_timeout_s = {call_timeout_s}\n'
        f"reconnect_min_s = 0.2\nreconnect_max_s = 0.5\nkeys = {{ {inline} }}\n"
    )
    return billed_config(tmp_path, auth=AUTH + ocpp, billing=billing)


@contextlib.asynccontextmanager
async def ocpp_rig(cfg: StationConfig, csms: TestCsms, **kw: Any) -> AsyncIterator[Rig]:
    """The simulator and an agent with OCPP, connected and booted at the CSMS."""
    async with running(cfg, **kw) as rig:
        if csms.running:
            await csms.wait_for("BootNotification", cp_id=CP)
            await until_online(rig)
        yield rig


async def until_online(rig: Rig, timeout: float = 10) -> None:
    """Wait until the agent's OCPP link is online (boot accepted)."""
    assert rig.agent.ocpp is not None
    await rig.until(rig.agent.ocpp.online.is_set, timeout, "OCPP online")


def tx_messages(csms: TestCsms) -> list[Received]:
    """Transaction messages the CSMS received, one per OCPP message id (a retry of a message
    re-uses its id), in arrival order."""
    seen: dict[str, Received] = {}
    for r in csms.received.get(CP, []):
        if r.action in TX_ACTIONS and r.unique_id not in seen:
            seen[r.unique_id] = r
    return list(seen.values())


def contexts(msg: Received) -> list[str]:
    """The reading contexts of a MeterValues / StopTransaction payload."""
    mvs = msg.payload.get("meterValue") or msg.payload.get("transactionData") or []
    return [sv.get("context") for m in mvs for sv in m["sampledValue"]]


def signed(msg: Received) -> list[dict]:
    """The SignedData sampled values of a message."""
    mvs = msg.payload.get("meterValue") or msg.payload.get("transactionData") or []
    return [sv for m in mvs for sv in m["sampledValue"] if sv.get("format") == "SignedData"]


def energy(msg: Received, context: str) -> int | None:
    """The Raw Energy.Active.Import.Register value with `context`, if the message has one."""
    mvs = msg.payload.get("meterValue") or msg.payload.get("transactionData") or []
    for m in mvs:
        for sv in m["sampledValue"]:
            if (
                sv.get("measurand") == "Energy.Active.Import.Register"
                and sv.get("format", "Raw") == "Raw"
                and sv.get("context") == context
                and "phase" not in sv
            ):
                return int(sv["value"])
    return None


def dump(csms: TestCsms) -> str:
    """The CSMS's transaction traffic, for assertion messages."""
    return "\n".join(
        f"{r.unique_id} {r.action} {json.dumps(r.payload)[:160]}"
        for r in csms.received.get(CP, [])
        if r.action in TX_ACTIONS
    )


def process_config(tmp: Path, csms_port: int, free_vend: bool = True) -> tuple[Path, int]:
    """A station file for `evedge run` + `evedge sim` with [ocpp] at the CSMS on
    `csms_port`; returns (path, the simulator's control port)."""
    control, mport, eport = free_port(), free_port(), free_port()
    text = f"""
[station]
id = "{CP}"
[[bus]]
name = "lan"
kind = "tcp"
timeout_s = 0.3
retries = 0
[[device]]
name = "meter1"
profile = "eastron-sdm630"
bus = "lan"
host = "127.0.0.1"
port = {mport}
unit = 1
interval_s = 0.1
[[device]]
name = "evse1"
profile = "phoenix-ev-charge-control"
bus = "lan"
host = "127.0.0.1"
port = {eport}
unit = 255
interval_s = 0.05
[[connector]]
id = 1
evse = "evse1"
meter = "meter1"
max_current_a = 32
[store]
path = "{tmp / "evedge.db"}"
[log]
level = "info"
[sim]
control_port = {control}
[billing]
tariff = "{TARIFFS / "simple-energy.json"}"
key_dir = "{tmp / "keys"}"
free_vend = {"true" if free_vend else "false"}
[sessions]
end_reading_timeout_s = 1
recovery_timeout_s = 2
[ocpp]
url = "ws://127.0.0.1:{csms_port}"
call_timeout_s = 2
reconnect_min_s = 0.2
reconnect_max_s = 0.5
keys = {{ MeterValueSampleInterval = "1", TransactionMessageRetryInterval = "1" }}
"""
    path = tmp / "station.toml"
    path.write_text(text)
    return path, control


class Proc:
    """A child process (`evedge run` / `evedge sim`) with its log."""

    def __init__(self, *args: str, log: Path):
        out = log.open("ab")
        self.p = subprocess.Popen([EVEDGE, *args], stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def kill9(self) -> None:
        """SIGKILL and reap."""
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s)."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def queued(db: Path) -> int:
    """Transaction messages not delivered yet (read-only, while the agent writes)."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return c.execute("SELECT count(*) FROM ocpp_outbox WHERE delivered_ts IS NULL").fetchone()[
            0
        ]
    except sqlite3.OperationalError:
        return 0
    finally:
        c.close()


async def wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `pred` until true (AssertionError after `timeout` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
