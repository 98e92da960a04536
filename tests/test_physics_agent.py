"""The physics checks in the whole agent: the session engine switches the EVSE, diagnosis
knows when it did (no contactor feedback needed), the connector reacts.

Real time, over real Modbus against the simulated station, on two controller profiles:
the Phoenix EV Charge Control (no contactor state at all) and the reference controller
(auxiliary contact).
"""

from __future__ import annotations

import pytest
from sessions_helpers import CARD, billed_config, body, running

from agent.events import FaultRaised
from agent.ops import Ops
from agent.sessions.engine import CommandRefused
from agent.sessions.model import card_token
from hil import REFERENCE_EVSE

PROFILES = ["phoenix-ev-charge-control", REFERENCE_EVSE]


async def _raised(rig, sub, rule: str, timeout: float = 25) -> FaultRaised:
    """The first FaultRaised of `rule` on the agent's bus."""
    got: list[FaultRaised] = []

    def seen() -> bool:
        while (ev := sub.get_nowait()) is not None:
            if isinstance(ev, FaultRaised) and ev.rule == rule:
                got.append(ev)
        return bool(got)

    await rig.until(seen, timeout, f"FaultRaised {rule}")
    return got[0]


@pytest.mark.parametrize("profile", PROFILES, ids=["phoenix", "reference"])
async def test_welded_contactor_after_evedge_stop_with_the_pilot_still_in_c(tmp_path, profile):
    cfg = billed_config(tmp_path, evse_profile=profile)
    async with running(cfg) as rig:
        sub = rig.agent.bus.subscribe(FaultRaised)
        await rig.card_charging()
        rig.sim.inject({"kind": "welded_contactor", "connector": 1})
        # `evedge stop 1`: the technician's stop through the agent's operations.
        result = await Ops(rig.agent).stop(1)
        assert result.result == "stopped"
        assert rig.conn.evse.disabled_since is not None  # switched off and read back

        fault = await _raised(rig, sub, "welded_contactor")
        sim = rig.sim.connectors[1].evse
        assert sim.cp_state == "C" and not sim.pwm_on()  # the car keeps requesting
        assert sim.draw_a > 15  # and current keeps flowing
        assert fault.faulted and fault.severity == "critical"
        assert (fault.codes.error_code, fault.codes.mrec) == ("PowerSwitchFailure", "CX017")
        assert fault.driver_message["en"]  # what the driver display shows
        if profile != REFERENCE_EVSE:
            # No feedback: the fact that the agent switched off is the evidence.
            off = {e.name: e.value for e in fault.evidence}["connector:1.charging_disabled_s"]
            assert off >= cfg.diagnosis.contactor_open_s

        # Faulted, and no new session on that connector.
        await rig.status("Faulted")
        with pytest.raises(CommandRefused, match="faulted"):
            await rig.engine.authorize(1, card_token(CARD))
        sub.close()


async def test_the_evse_losing_its_own_meter_is_a_warning_billing_goes_on(tmp_path):
    cfg = billed_config(tmp_path)
    async with running(cfg) as rig:
        sub = rig.agent.bus.subscribe(FaultRaised)
        await rig.card_charging()
        # The Phoenix reports code 10: its link to its own meter is broken.
        rig.sim.inject({"kind": "evse_error_code", "connector": 1, "code": 10})
        fault = await _raised(rig, sub, "evse_meter_comm")
        assert not fault.faulted and fault.severity == "warning"
        assert (fault.codes.error_code, fault.codes.component) == ("OtherError", "EVSE")
        assert "meter1" in fault.root_cause["en"]  # billing goes on on the connector's meter
        start = rig.register()
        await rig.until(lambda: rig.register() > start + 5, 15, "energy keeps flowing")
        assert rig.conn.status.value == "Charging"  # charging is not stopped
        await rig.engine.stop(1, by="cli")
        rec = body(await rig.record())
        assert rec["meter"]["device"] == "meter1"  # the record says which meter billed
        assert rec["stop"]["reason"] != "EmergencyStop"
        sub.close()
