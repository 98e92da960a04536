"""The connector status as a function of what is known: control pilot, session, faults.

Transitions are not a table of edges but this one derivation, applied after every input
(CP reading, command, fault, stop): the status can never disagree with the facts it is
derived from, and every change is persisted and published by the engine.

    Available --plug--> Preparing --authorized--> SuspendedEVSE --enabled--> SuspendedEV
    SuspendedEV --car draws (C/D)--> Charging --car pauses (B)--> SuspendedEV
    (session stopped, still plugged) Finishing --unplug--> Available
    any --pilot E/F or a fault that stops charging--> Faulted --cleared--> by the pilot
    Unavailable (set by command; a running session finishes first), Reserved (one token)
"""

from __future__ import annotations

from agent.sessions.model import Status

PLUGGED = frozenset("BCD")
CHARGING_CP = frozenset("CD")
FAULT_CP = frozenset("EF")
MIN_CURRENT_A = 6.0  # IEC 61851-1: no legal PWM duty below this; suspend (SuspendedEVSE) instead


def derive_status(
    cp: str | None,
    *,
    session: bool,
    offering: bool,
    faulted: bool,
    available: bool,
    reserved: bool,
    finishing: bool,
) -> Status:
    """The status a connector is in. `offering`: the EVSE is enabled for the session;
    `finishing`: a session ended while the car stayed plugged in."""
    if faulted or cp in FAULT_CP:
        return Status.FAULTED
    if session:
        if cp in CHARGING_CP:
            return Status.CHARGING
        return Status.SUSPENDED_EV if offering else Status.SUSPENDED_EVSE
    if cp not in PLUGGED:
        if not available:
            return Status.UNAVAILABLE
        return Status.RESERVED if reserved else Status.AVAILABLE
    if finishing:
        return Status.FINISHING
    if not available:
        return Status.UNAVAILABLE
    return Status.RESERVED if reserved else Status.PREPARING
