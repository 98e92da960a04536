"""One scenario per diagnosis rule: inject the fault, expect the root cause and its codes.

The expected codes are written here independently of the rule files, so a wrong code in a
rule file fails its scenario. Scenario names are the rule ids.
"""

from __future__ import annotations

from hil.scenarios.base import (
    Expect,
    Scenario,
    charging,
    facts,
    idle,
    inject,
    nothing,
    plug_and_charge,
    stop_charging,
    then,
)

C1 = "connector:1"
LOCK = "ConnectorPlugRetentionLock.Problem"


def _code(
    rule: str,
    code: int,
    error_code: str,
    component: str,
    faulted: bool,
    *,
    station: str = "tcp",
    mrec: str | None = None,
    charge: bool = True,
) -> Scenario:
    """An EVSE controller reporting vendor error `code` (decoded through its profile)."""
    return Scenario(
        name=rule,
        station=station,
        setup=charging(16.0) if charge else nothing,
        fault=inject({"kind": "evse_error_code", "connector": 1, "code": code}),
        expect=Expect(
            rule,
            C1,
            error_code,
            component,
            faulted,
            mrec=mrec,
            vendor_error_code=None if mrec else str(code),
        ),
    )


SCENARIOS: tuple[Scenario, ...] = (
    # ------------------------------------------------------------------ communication
    Scenario(
        name="device_not_answering",
        station="tcp",
        fault=inject({"kind": "no_response", "device": "meter1"}),
        expect=Expect(
            "device_not_answering",
            "device:meter1",
            "PowerMeterFailure",
            "FiscalMetering.Problem",
            True,
            vendor_error_code="device_not_answering",
            not_raised=frozenset({"undervoltage", "supply_outage"}),
        ),
    ),
    Scenario(
        name="frame_errors",
        station="rtu",
        setup=idle(3),
        fault=inject({"kind": "crc_error", "device": "meter2"}),
        expect=Expect(
            "frame_errors",
            "device:meter2",
            "PowerMeterFailure",
            "FiscalMetering.Problem",
            True,
            explains=frozenset({"device_not_answering"}),
            not_raised=frozenset({"bus_silent"}),
        ),
        clear_within_s=150,
        note="every answer of meter2 arrives with a bad CRC; meter3 on the same bus is fine",
    ),
    Scenario(
        name="modbus_exception",
        station="tcp",
        setup=idle(3),
        fault=inject({"kind": "exception", "device": "meter1", "code": 2}),
        expect=Expect(
            "modbus_exception",
            "device:meter1",
            "PowerMeterFailure",
            "FiscalMetering.Problem",
            True,
            explains=frozenset({"device_not_answering"}),
        ),
        clear_within_s=150,
        note="exception 02 on every request: the device refuses the whole address map",
    ),
    Scenario(
        name="meter_value_unavailable",
        station="abb",
        setup=idle(3),
        fault=inject({"kind": "not_available", "device": "meter1", "quantity": "voltage_l1"}),
        expect=Expect(
            "meter_value_unavailable",
            "device:meter1",
            "PowerMeterFailure",
            "FiscalMetering.Problem",
            True,
            not_raised=frozenset({"undervoltage", "supply_outage", "phase_loss"}),
        ),
        raise_within_s=45,
        note="the value is marked not available: no value-based fault, the meter fault instead",
    ),
    Scenario(
        name="bus_silent",
        station="rtu",
        setup=idle(3),
        fault=inject(
            {"kind": "no_response", "device": "meter2"},
            {"kind": "no_response", "device": "meter3"},
        ),
        expect=Expect(
            "bus_silent",
            "bus:rs485",
            "InternalError",
            "Controller.Problem",
            True,
            explains=frozenset({"device_not_answering"}),
        ),
        note="the RS-485 adapter is unplugged: both devices on the bus fall silent",
    ),
    # ------------------------------------------------------------------------ supply
    Scenario(
        name="supply_outage",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "supply_outage", "connector": 1}),
        expect=Expect(
            "supply_outage",
            C1,
            "OtherError",
            "ElectricalFeed.Problem",
            True,
            mrec="CX015",
            explains=frozenset({"undervoltage"}),
            not_raised=frozenset(
                {"contactor_fails_to_close", "undervoltage", "frequency_out_of_range"}
            ),
        ),
    ),
    Scenario(
        name="phase_loss",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "voltage_loss", "connector": 1, "phase": 2}),
        expect=Expect(
            "phase_loss",
            C1,
            "UnderVoltage",
            "ElectricalFeed.ACVoltage",
            False,
            mrec="CX006",
            explains=frozenset({"undervoltage"}),
        ),
    ),
    Scenario(
        name="undervoltage",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "voltage_sag", "connector": 1, "volts": 40}),
        expect=Expect(
            "undervoltage", C1, "UnderVoltage", "ElectricalFeed.ACVoltage", False, mrec="CX006"
        ),
    ),
    Scenario(
        name="overvoltage",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "voltage_swell", "connector": 1, "volts": 40}),
        expect=Expect(
            "overvoltage", C1, "OverVoltage", "ElectricalFeed.ACVoltage", True, mrec="CX005"
        ),
    ),
    Scenario(
        name="frequency_out_of_range",
        station="tcp",
        setup=idle(2),
        fault=inject({"kind": "frequency_deviation", "connector": 1, "hz": 1.5}),
        expect=Expect("frequency_out_of_range", C1, "OtherError", "ElectricalFeed.Problem", False),
    ),
    # ------------------------------------------------------------------------ energy
    Scenario(
        name="energy_register_frozen",
        station="tcp",
        setup=charging(settle_s=5),
        fault=inject({"kind": "energy_frozen", "device": "meter1"}),
        expect=Expect(
            "energy_register_frozen",
            C1,
            "PowerMeterFailure",
            "FiscalMetering.Problem",
            True,
            not_raised=frozenset({"energy_register_jump"}),
        ),
        raise_within_s=45,
        note="after recovery the register catches up: that is not a jump",
    ),
    Scenario(
        name="energy_register_backwards",
        station="tcp",
        setup=charging(settle_s=12),
        fault=inject({"kind": "energy_backwards", "device": "meter1", "wh": 500}),
        expect=Expect(
            "energy_register_backwards", C1, "PowerMeterFailure", "FiscalMetering.Problem", True
        ),
        recover=nothing,
        note="an event: the new count stays, the fault clears once the window has passed",
    ),
    Scenario(
        name="energy_register_jump",
        station="tcp",
        setup=charging(settle_s=12),
        fault=inject({"kind": "energy_jump", "device": "meter1", "wh": 5000}),
        expect=Expect(
            "energy_register_jump", C1, "PowerMeterFailure", "FiscalMetering.Problem", True
        ),
        recover=nothing,
        note="an event: the new count stays, the fault clears once the window has passed",
    ),
    # -------------------------------------------------------------------------- EVSE
    Scenario(
        name="overcurrent",
        station="tcp",
        setup=charging(16.0),
        fault=inject({"kind": "ev_overcurrent", "connector": 1, "current_a": 21}),
        expect=Expect(
            "overcurrent",
            C1,
            "OverCurrentFailure",
            "OverCurrentProtection.Active",
            True,
            mrec="CX004",
            side="unknown",
        ),
    ),
    Scenario(
        name="welded_contactor",
        station="tcp",
        setup=charging(),
        fault=then(inject({"kind": "welded_contactor", "connector": 1}), stop_charging()),
        # The Phoenix has no contactor feedback: the current after the confirmed stop, with
        # the car still in C, is all there is to see (hil/scenarios/physics.py: the rest).
        expect=Expect(
            "welded_contactor",
            C1,
            "PowerSwitchFailure",
            "PowerContactor.Problem",
            True,
            mrec="CX017",
            not_raised=frozenset({"overcurrent", "contactor_fails_to_close"}),
        ),
        raise_within_s=12,
    ),
    Scenario(
        name="contactor_fails_to_close",
        station="tcp",
        fault=then(inject({"kind": "contactor_stuck_open", "connector": 1}), plug_and_charge()),
        expect=Expect(
            "contactor_fails_to_close",
            C1,
            "PowerSwitchFailure",
            "PowerContactor.Problem",
            True,
            mrec="CX017",
        ),
    ),
    Scenario(
        name="cp_state_e",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "cp_state_e", "connector": 1}),
        expect=Expect(
            "cp_state_e", C1, "OtherError", "Connector.Problem", True, mrec="CX014", side="unknown"
        ),
    ),
    Scenario(
        name="cp_state_f",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "cp_state_f", "connector": 1}),
        expect=Expect("cp_state_f", C1, "InternalError", "EVSE.Problem", True, mrec="CX014"),
    ),
    Scenario(
        name="diode_fault",
        station="tcp",
        fault=then(inject({"kind": "diode_fault", "connector": 1}), plug_and_charge()),
        # One root cause: the EVSE's state F is its reaction to the car's missing diode.
        expect=Expect(
            "diode_fault",
            C1,
            "EVCommunicationError",
            "Connector.Problem",
            False,
            mrec="CX014",
            explains=frozenset({"cp_state_f"}),
            side="unknown",
        ),
    ),
    Scenario(
        name="residual_current",
        station="tcp",
        setup=charging(),
        fault=inject({"kind": "rcd_trip", "connector": 1}),
        expect=Expect(
            "residual_current",
            C1,
            "GroundFailure",
            "RCD.Tripped",
            True,
            mrec="CX002",
            explains=frozenset({"cp_state_f"}),
        ),
    ),
    _code(
        "ground_failure",
        13,
        "GroundFailure",
        "ElectricalFeed.Problem",
        True,
        station="reference",
        mrec="CX002",
    ),
    Scenario(
        name="over_temperature_derate",
        station="reference",
        setup=charging(),
        fault=inject({"kind": "over_temperature", "connector": 1, "temperature_c": 75}),
        expect=Expect(
            "over_temperature_derate",
            C1,
            "HighTemperature",
            "TemperatureSensor.Temperature",
            False,
            mrec="CX003",
            not_raised=frozenset({"over_temperature_stop"}),
        ),
        clear_within_s=120,
    ),
    Scenario(
        name="over_temperature_stop",
        station="reference",
        setup=charging(),
        fault=inject({"kind": "over_temperature", "connector": 1, "temperature_c": 92}),
        expect=Expect(
            "over_temperature_stop",
            C1,
            "HighTemperature",
            "TemperatureSensor.Temperature",
            True,
            mrec="CX003",
            explains=frozenset({"over_temperature_derate"}),
        ),
        clear_within_s=150,
    ),
    Scenario(
        name="connector_lock_failure",
        station="reference",
        fault=then(inject({"kind": "lock_failure", "connector": 1}), plug_and_charge()),
        expect=Expect(
            "connector_lock_failure",
            C1,
            "ConnectorLockFailure",
            LOCK,
            True,
            mrec="CX001",
            side="unknown",
        ),
    ),
    # ---------------------------------------------- EVSE codes, decoded via the profile
    _code("evse_cable_rejected", 1, "OtherError", "Connector.Problem", False, mrec="CX023"),
    _code("evse_invalid_pp", 3, "OtherError", "Connector.Problem", True, mrec="CX023"),
    # The EVSE's own meter, not the billing meter: a warning, charging goes on.
    _code("evse_meter_comm", 10, "OtherError", "EVSE.Problem", False),
    _code(
        "evse_vehicle_rejected",
        11,
        "EVCommunicationError",
        "Connector.Problem",
        False,
        mrec="CX010",
    ),
    _code(
        "evse_contactor_fault",
        12,
        "PowerSwitchFailure",
        "PowerContactor.Problem",
        True,
        mrec="CX017",
    ),
    _code(
        "evse_overvoltage",
        15,
        "OverVoltage",
        "ElectricalFeed.ACVoltage",
        True,
        station="reference",
        mrec="CX005",
    ),
    _code(
        "evse_undervoltage",
        16,
        "UnderVoltage",
        "ElectricalFeed.ACVoltage",
        False,
        station="reference",
        mrec="CX006",
    ),
    _code("evse_internal", 17, "InternalError", "EVSE.Problem", True, station="reference"),
    _code("evse_unknown_error", 99, "OtherError", "EVSE.Problem", True),  # not in the table
    # ------------------------------------------------------------------------ station
    Scenario(
        name="clock_not_synchronized",
        station="tcp",
        fault=facts(clock_synced=False),
        recover=facts(clock_synced=True),
        expect=Expect(
            "clock_not_synchronized", "station", "OtherError", "ClockCtrlr.DateTime", False
        ),
        raise_within_s=75,
    ),
    Scenario(
        name="disk_nearly_full",
        station="tcp",
        fault=facts(disk_free_pct=4.0, disk_free_mb=150.0),
        recover=facts(disk_free_pct=60.0, disk_free_mb=9000.0),
        expect=Expect(
            "disk_nearly_full", "station", "OtherError", "ChargingStation.Problem", False
        ),
    ),
    Scenario(
        name="cloud_unreachable",
        station="tcp",
        fault=facts(cloud_offline_s=1000),
        recover=facts(cloud_offline_s=0),
        expect=Expect(
            "cloud_unreachable", "station", "OtherError", "DataLink.Problem", False, mrec="CX013"
        ),
        note="the last contact with the configured endpoint was 1000 s ago (limit 900 s)",
    ),
    Scenario(
        name="ocpp_tx_undelivered",
        station="tcp",
        fault=facts(ocpp_tx_exhausted=2),
        recover=facts(ocpp_tx_exhausted=0),
        expect=Expect("ocpp_tx_undelivered", "station", "OtherError", "DataLink.Problem", False),
        note="two StopTransaction messages ran out of TransactionMessageAttempts",
    ),
    Scenario(
        name="mqtt_billing_refused",
        station="tcp",
        fault=facts(mqtt_billing_refused=1),
        recover=facts(mqtt_billing_refused=0),
        expect=Expect("mqtt_billing_refused", "station", "OtherError", "DataLink.Problem", False),
        note="the broker answered a charge record's PUBACK with 0x87 Not authorized",
    ),
    Scenario(
        name="billing_tamper_detected",
        station="tcp",
        fault=facts(billing_tamper=1),
        recover=facts(billing_tamper=0),
        expect=Expect(
            "billing_tamper_detected", "station", "OtherError", "FiscalMetering.Problem", False
        ),
        note="the store's guard triggers were dropped behind the agent's back",
    ),
    Scenario(
        name="store_cannot_bill",
        station="tcp",
        fault=facts(records_unwritten=1),
        recover=facts(records_unwritten=0),
        expect=Expect(
            "store_cannot_bill", "station", "OtherError", "ChargingStation.Problem", False
        ),
        note="the disk is full: a finished session's charge record waits in memory",
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
