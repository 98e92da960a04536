"""Batched MeterValues (issue 16): after an outage the queued MeterValues of a transaction
travel together, at most `[ocpp] meter_values_batch` entries per MeterValues.req, in order,
every sample once, and the transaction's Start and Stop around them; a real test CSMS."""

from __future__ import annotations

import json
import sqlite3

from ocpp_helpers import CP, TX_ACTIONS, csms_running, ocpp_config, ocpp_rig, queued, tx_messages

BATCH = 4


def meter_value_rows(db) -> list[str]:
    """The timestamps of every queued MeterValues entry, in queue order."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = c.execute(
            "SELECT json_extract(payload, '$.meterValue') FROM ocpp_outbox "
            "WHERE action = 'MeterValues' ORDER BY seq"
        ).fetchall()
    finally:
        c.close()
    return [mv["timestamp"] for (text,) in rows for mv in json.loads(text)]


async def test_queued_meter_values_travel_in_bounded_batches(tmp_path):
    async with csms_running() as csms:
        cfg = ocpp_config(tmp_path, csms.url, keys={"MeterValueSampleInterval": "1"})
        cfg = cfg.model_copy(
            update={"ocpp": cfg.ocpp.model_copy(update={"meter_values_batch": BATCH})}
        )
        db = cfg.store.path
        async with ocpp_rig(cfg, csms) as rig:
            await rig.card_charging()
            await csms.wait_for("StartTransaction", CP)
            await csms.stop()  # the outage: meter values queue up
            await rig.until(lambda: queued(db) >= 3 * BATCH + 1, 30, "a backlog")
            rig.sim.unplug(1)
            await rig.record()
            await csms.start()
            await csms.wait_for("StopTransaction", CP, timeout=30)
            await rig.until(lambda: queued(db) == 0, 30, "the backlog delivered")
    msgs: dict[str, object] = {}  # as they came: one per message id (a retry re-uses it)
    for r in csms.received[CP]:
        if r.action in TX_ACTIONS:
            msgs.setdefault(r.unique_id, r)
    msgs = list(msgs.values())
    assert msgs[0].action == "StartTransaction"
    assert msgs[-1].action == "StopTransaction"
    values = [m for m in msgs if m.action == "MeterValues"]
    sizes = [len(m.payload["meterValue"]) for m in values]
    assert max(sizes) == BATCH and all(n <= BATCH for n in sizes), sizes
    # A batch's id names its rows; every queued entry arrived once, in queue order.
    batches = [m for m in values if m.unique_id.count("-") == 2]
    for m in batches:
        first, last = map(int, m.unique_id.removeprefix("tx-").split("-"))
        assert last - first + 1 == len(m.payload["meterValue"])  # one entry per row here
    sent = [mv["timestamp"] for m in values for mv in m.payload["meterValue"]]
    assert sent == meter_value_rows(db)
    assert len({m.payload["transactionId"] for m in msgs[1:]}) == 1
    # Split into its rows (what the other OCPP tests check), the stream is the queue.
    rows = tx_messages(csms, db)
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows_stored = c.execute("SELECT seq, action FROM ocpp_outbox ORDER BY seq").fetchall()
    finally:
        c.close()
    seqs = [s for s, action in rows_stored if action in TX_ACTIONS]  # not security events
    assert [m.unique_id for m in rows] == [f"tx-{s}" for s in seqs]
    assert [
        mv["timestamp"] for m in rows if m.action == "MeterValues" for mv in m.payload["meterValue"]
    ] == meter_value_rows(db)


def test_meter_values_call_carries_the_stored_entries_unchanged():
    """The shortcut in `to_call` (entries not converted to snake_case and back) sends exactly
    what a full conversion would: the JSON the library puts on the wire equals the stored
    payload plus the transaction id."""
    from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case

    from agent.ocpp import metervalues as mv
    from agent.ocpp.outbox import to_call

    values = {"energy_import_wh": 1234.0, "power_w": 7200.0, "soc_pct": 55.0}
    values |= {f"current_l{p}": 16.0 for p in (1, 2, 3)}
    measurands = [mv.ENERGY, "Power.Active.Import", "Current.Import", "SoC"]
    entries = [
        mv.meter_value(t, mv.sampled_values(values, measurands, mv.PERIODIC))
        for t in (1_700_000_000_000_000, 1_700_000_010_000_000)
    ]
    stored = {"connectorId": 2, "meterValue": entries}
    wire = remove_nones(snake_to_camel_case(serialize_as_dict(to_call("MeterValues", stored, 7))))
    assert wire == {**stored, "transactionId": 7}
    assert len(entries[0]["sampledValue"]) >= 5  # the phases and SoC are in the check
