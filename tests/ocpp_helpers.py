"""Shared pieces of the OCPP transaction tests: a billed station wired to a real test CSMS
(hil/csms.py) on loopback, and readers of what the CSMS received."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sessions_helpers import CARD, TARIFFS, Rig, billed_config, running

from agent.bus import EventBus
from agent.config import StationConfig
from agent.ocpp.service import OcppService
from agent.tasks import cancel_and_wait
from hil.csms import Received, TestCsms
from hil.procs import write_station

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


@contextlib.asynccontextmanager
async def csms_running(**kw: Any) -> AsyncIterator[TestCsms]:
    """A test CSMS (hil/csms.py, `TestCsms(**kw)`) listening until the block ends."""
    csms = TestCsms(**kw)
    await csms.start()
    try:
        yield csms
    finally:
        await csms.stop()


@contextlib.asynccontextmanager
async def ocpp_service(cfg: StationConfig) -> AsyncIterator[OcppService]:
    """The OCPP service of `cfg` alone (its own bus, no sessions), running until the block ends."""
    svc = OcppService(cfg, EventBus())
    task = asyncio.create_task(svc.run())
    try:
        yield svc
    finally:
        await cancel_and_wait([task])
        svc.close()


async def until_online(rig: Rig, timeout: float = 10) -> None:
    """Wait until the agent's OCPP link is online (boot accepted)."""
    assert rig.agent.ocpp is not None
    await rig.until(rig.agent.ocpp.online.is_set, timeout, "OCPP online")


def tx_messages(csms: TestCsms, db: Path | None = None) -> list[Received]:
    """Transaction messages the CSMS received, one per OCPP message id (a retry of a message
    re-uses its id), in arrival order. With the agent's store `db`, batched MeterValues are
    split into their queued rows first (`unbatch`); without it a batch fails the test."""
    calls = [r for r in csms.received.get(CP, []) if r.action in TX_ACTIONS]
    if db is not None:
        calls = unbatch(calls, db)
    seen: dict[str, Received] = {}
    for r in calls:
        assert r.unique_id.count("-") == 1, f"batched {r.unique_id}: pass the store to split it"
        seen.setdefault(r.unique_id, r)
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
    st = write_station(
        tmp,
        station_id=CP,
        extra=f"""[billing]
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
""",
    )
    return st.path, st.control


def session_counts(db: Path) -> tuple[int, int]:
    """(active, closed) sessions in the store (read-only, while the agent writes)."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = dict(c.execute("SELECT state, count(*) FROM sessions GROUP BY state").fetchall())
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        c.close()
    return rows.get("active", 0), rows.get("closed", 0)


def unbatch(received: list[Received], db: Path) -> list[Received]:
    """The CSMS's received CALLs with every batched MeterValues (id `tx-<first>-<last>`,
    agent/ocpp/outbox.py) split into the queued rows it carried, each as if it had arrived
    alone under its row's id `tx-<seq>` with that row's entries, so checks written per
    queued message (exactly once, in order, ids, energies) apply unchanged. Asserts that a
    batch carried nothing but the stored entries of whole rows `first`..`last` of one
    session, in queue order (a row it did not carry must arrive elsewhere: the callers'
    checks of every queued row)."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = c.execute(
            "SELECT seq, session_id, payload FROM ocpp_outbox WHERE action = 'MeterValues'"
        ).fetchall()
    finally:
        c.close()
    stored = {seq: (sid, json.loads(p)["meterValue"]) for seq, sid, p in rows}
    out: list[Received] = []
    for r in received:
        ends = r.unique_id.removeprefix("tx-").split("-")
        if r.action != "MeterValues" or len(ends) != 2:
            out.append(r)
            continue
        first, last = int(ends[0]), int(ends[1])
        sid, entries = stored[first][0], r.payload["meterValue"]
        # The rows it carried, in order; a row in the range may have gone earlier on its
        # own (the successors of a parked row do), so rows are matched, not assumed.
        seqs, at = [], 0
        for s in range(first, last + 1):
            rows_entries = stored[s][1] if s in stored and stored[s][0] == sid else None
            if rows_entries and entries[at : at + len(rows_entries)] == rows_entries:
                seqs.append(s)
                at += len(rows_entries)
        carried = seqs[:1] == [first] and seqs[-1:] == [last] and at == len(entries)
        assert carried, f"{r.unique_id}: not its rows' entries"
        out += [
            Received(r.action, {**r.payload, "meterValue": stored[s][1]}, r.time, f"tx-{s}")
            for s in seqs
        ]
    return out


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
