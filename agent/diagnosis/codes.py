"""Code tables a fault is reported with: OCPP 1.6, ChargeX MREC, OCPP 2.0.1 components.

Rule files name codes; the loader checks them against these tables, so a typo in a rule
file is refused at start instead of reaching a central system that rejects the message.
"""

from __future__ import annotations

# OCPP 1.6 ChargePointErrorCode (StatusNotification.req errorCode).
OCPP16_ERROR_CODES: frozenset[str] = frozenset(
    {
        "ConnectorLockFailure",
        "EVCommunicationError",
        "GroundFailure",
        "HighTemperature",
        "InternalError",
        "LocalListConflict",
        "NoError",
        "OtherError",
        "OverCurrentFailure",
        "OverVoltage",
        "PowerMeterFailure",
        "PowerSwitchFailure",
        "ReaderFailure",
        "ResetFailure",
        "UnderVoltage",
        "WeakSignal",
    }
)
# OCPP 1.6 calls an error with any status but Faulted a warning; EVCommunicationError is
# defined as a warning only, so a rule may not make the connector Faulted with it.
WARNING_ONLY = frozenset({"EVCommunicationError"})

# ChargeX Minimum Required Error Codes (MREC), sent as vendorErrorCode under MREC_VENDOR_ID.
MREC_VENDOR_ID = "https://chargex.inl.gov"
MREC_CODES: dict[str, str] = {
    "CX001": "ConnectorLockFailure",
    "CX002": "GroundFailure",
    "CX003": "HighTemperature",
    "CX004": "OverCurrentFailure",
    "CX005": "OverVoltage",
    "CX006": "UnderVoltage",
    "CX007": "WeakSignal",
    "CX008": "EmergencyStop",
    "CX009": "AuthorizationTimeout",
    "CX010": "InvalidVehicleMode",
    "CX011": "CableCheck",
    "CX012": "PreCharge",
    "CX013": "NoInternet",
    "CX014": "PilotFault",
    "CX015": "PowerLoss",
    "CX016": "EVContactorFault",
    "CX017": "EVSEContactorFault",
    "CX018": "CableOverTempDerate",
    "CX019": "CableOverTempStop",
    "CX020": "PartialInsertion",
    "CX021": "CapacitanceFault",
    "CX022": "ResistanceFault",
    "CX023": "ProximityFault",
    "CX024": "ConnectorVoltageHigh",
    "CX025": "BrokenLatch",
    "CX026": "CutCable",
}

# The OCPP 1.6 errorCode each of these MREC codes stands for (ChargeX names them after it;
# CX017 EVSEContactorFault, welded included, is OCPP's PowerSwitchFailure). A rule with one
# of these errorCodes must carry its MREC code, and one with the MREC code that errorCode.
MREC_OCPP16: dict[str, str] = {
    **{c: MREC_CODES[c] for c in ("CX001", "CX002", "CX003", "CX004", "CX005", "CX006", "CX007")},
    "CX017": "PowerSwitchFailure",
}
OCPP16_MREC: dict[str, str] = {v: k for k, v in MREC_OCPP16.items()}


def mrec_disagreement(ocpp16: str, mrec: str | None) -> str | None:
    """Why `ocpp16` and `mrec` do not go together by the ChargeX list (None: they do)."""
    want = OCPP16_MREC.get(ocpp16)
    if want is not None and mrec != want:
        return (
            f"errorCode {ocpp16} is ChargeX MREC {want} ({MREC_CODES[want]}); set mrec = {want!r}"
        )
    paired = MREC_OCPP16.get(mrec or "")
    if paired is not None and paired != ocpp16:
        return f"MREC {mrec} ({MREC_CODES[mrec or '']}) goes with errorCode {paired}, not {ocpp16}"
    return None


# vendorId for codes evedge defines itself (rule ids, or an EVSE's own code without MREC).
EVEDGE_VENDOR_ID = "evedge"

# OCPP 2.0.1 standardized components (Part 2 appendix) and the variables rules may report.
OCPP201_COMPONENTS: dict[str, frozenset[str]] = {
    "ChargingStation": frozenset({"Problem"}),
    "ClockCtrlr": frozenset({"DateTime"}),
    "Connector": frozenset({"Problem"}),
    "ConnectorPlugRetentionLock": frozenset({"Problem"}),
    "Controller": frozenset({"Problem"}),
    "DataLink": frozenset({"Problem"}),
    "ElectricalFeed": frozenset({"ACVoltage", "Problem"}),
    "EVSE": frozenset({"Problem"}),
    "FiscalMetering": frozenset({"Problem"}),
    "OverCurrentProtection": frozenset({"Active"}),
    "PowerContactor": frozenset({"Problem", "Tripped"}),
    "RCD": frozenset({"Tripped"}),
    "TemperatureSensor": frozenset({"Temperature", "Problem"}),
}

# OCPP 1.6 field limits (StatusNotification.req).
INFO_MAX = 50
VENDOR_ERROR_CODE_MAX = 50
VENDOR_ID_MAX = 255

# EVSE error words that are no fault at all: nothing to raise.
EVSE_NOT_A_FAULT = frozenset({"none", "busy"})
# What the context reports for a vendor code the device's profile has no entry for.
UNMAPPED = "unmapped"


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
