"""A scripted month of a two-connector station in virtual time, written into a real store
with the writers the agent uses (FaultLog, Ledger, the maintenance table)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import events
from agent.diagnosis.store import FaultLog
from agent.kpi.maintenance import add_window
from agent.sessions.ledger import Ledger
from agent.sessions.store import SessionRow, SessionStore, insert_session
from agent.sessions.times import to_us
from agent.store.db import Store

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 4, 1, tzinfo=UTC)  # the report is made at the end of March
CODES = {
    "welded_contactor": ("PowerSwitchFailure", "CX017", "PowerContactor"),
    "supply_outage": ("OtherError", "CX015", "ElectricalFeed"),
    "diode_fault": ("EVCommunicationError", "CX014", "Connector"),
    "cloud_unreachable": ("OtherError", None, "Controller"),
}


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A time in March 2026 (UTC)."""
    return MARCH + timedelta(days=day - 1, hours=hour, minutes=minute, seconds=second)


def fault(log: FaultLog, rule: str, t0: datetime, t1: datetime, *, connectors=(1,),
          scope="connector:1", faulted=True, side="charger") -> str:  # fmt: skip
    """Raise a fault at t0 and clear it at t1, as the diagnosis stores them."""
    ocpp, mrec, component = CODES[rule]
    codes = events.FaultCodes(
        error_code=ocpp, vendor_id="evedge", vendor_error_code=mrec or "", info=rule, mrec=mrec,
        component=component, variable="Problem",
    )  # fmt: skip
    fid = f"{t0:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    raised = events.FaultRaised(
        ts=t0, fault_id=fid, rule=rule, scope=scope, title={"en": rule}, root_cause={},
        severity="error", connectors=list(connectors), devices=[], evidence=[], confidence=0.9,
        codes=codes, faulted=faulted, driver_message={}, technician_steps={}, side=side,
    )  # fmt: skip
    log.record(raised)
    log.record(events.FaultCleared(ts=t1, fault_id=fid, rule=rule, scope=scope,
                                   connectors=list(connectors), devices=[], raised_ts=t0,
                                   reason="resolved"))  # fmt: skip
    return fid


def session(st: SessionStore, token: str, t0: datetime, t1: datetime, wh: int, reason: str,
            connector: int = 1) -> str:  # fmt: skip
    """A closed session (only what the KPIs read matters)."""
    sid = uuid.uuid4().hex
    row = SessionRow(
        id=sid, connector=connector, state="closed", status="Finishing", started_ts=to_us(t0),
        charging_end_ts=to_us(t1), ended_ts=to_us(t1), auth_method="LocalList", id_token=token,
        id_token_type="LOCAL", meter_device="meter1", meter_serial=None, start_wh=1000,
        billed_wh=wh, tariff_id=None, tariff_json=None, limits_json="{}", payment_json=None,
        ocmf_begin=None, tracker_json=json.dumps({}), stop_reason=reason, updated_ts=to_us(t1),
    )  # fmt: skip
    with st.tx() as c:
        insert_session(c, row)
    return sid


def scripted_month(path: Path) -> dict[str, str]:
    """March 2026 on connectors 1 and 2; returns the ids the tests look for.

    Connector 1, outage minutes:
      Mar 3 10:00-12:00  welded contactor (charger side)     120  counted
      Mar 10 08:00-09:30 supply outage (grid)                 90  excluded: grid
      Mar 12 14:00-14:30 diode fault (vehicle side)           30  excluded: vehicle
      Mar 20 06:00-08:00 Unavailable, maintenance window     120  excluded: maintenance
      Mar 25 00:00-04:00 CSMS unreachable, a session charged 240  excluded: csms
      Mar 28 10:00-10:45 Unavailable, no window               45  counted
    Connector 2 sees only the station-wide CSMS outage (240, excluded).
    """
    Store(path).close()  # create and migrate, as the service does
    ids: dict[str, str] = {}
    st = SessionStore(path)
    ledger = Ledger(st, "KPI-1", None)
    with FaultLog(path) as log:
        for c in (1, 2):
            ledger.transition(c, None, "Available", "status", to_us(at(1, 0)))
        ids["welded"] = fault(log, "welded_contactor", at(3, 10), at(3, 12))
        ledger.transition(1, None, "Faulted", "fault", to_us(at(3, 10)))
        ledger.transition(1, None, "Available", "fault", to_us(at(3, 12)))
        fault(log, "supply_outage", at(10, 8), at(10, 9, 30))
        ledger.transition(1, None, "Faulted", "fault", to_us(at(10, 8, 0, 1)))
        ledger.transition(1, None, "Available", "fault", to_us(at(10, 9, 30)))
        fault(log, "diode_fault", at(12, 14), at(12, 14, 30), side="vehicle")
        ledger.transition(1, None, "Faulted", "fault", to_us(at(12, 14)))
        ledger.transition(1, None, "Available", "fault", to_us(at(12, 14, 30)))
        ledger.set_available(1, False, to_us(at(20, 6)))
        ledger.set_available(1, True, to_us(at(20, 8)))
        fault(log, "cloud_unreachable", at(25, 0), at(25, 4), connectors=(), scope="station",
              faulted=False)  # fmt: skip
        ledger.set_available(1, False, to_us(at(28, 10)))
        ledger.set_available(1, True, to_us(at(28, 10, 45)))
    with st.tx() as c:
        add_window(c, at(20, 5, 30), at(20, 8), None, "contactor inspection", at(19, 12))
    session(st, "A", at(2, 9), at(2, 10), 10_000, "EVDisconnected")
    ids["fault_session"] = session(st, "B", at(3, 9, 50), at(3, 10, 0, 2), 500, "EmergencyStop")
    session(st, "C", at(5, 8), at(5, 8, 1), 0, "Local")  # nothing delivered ...
    session(st, "C", at(5, 8, 3), at(5, 9), 7_000, "EVDisconnected")  # ... retried: a success
    session(st, "D", at(25, 1), at(25, 2), 9_000, "EVDisconnected")  # CSMS away, charging works
    st.close()
    return ids
