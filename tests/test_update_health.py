"""The running agent (`evedge run`) says it is healthy: its release's marker, with its pid,
once READY is sent, every device was polled once and the store is open."""

from __future__ import annotations

import asyncio
import json

from agent.update.health import running_version, state_dir
from hil.procs import sim_ready, start_agent, start_sim, until, write_station


def test_agent_writes_its_health_marker_after_the_first_poll_cycle(tmp_path):
    st = write_station(tmp_path)
    marker = state_dir(st.db) / f"healthy-{running_version()}"

    async def scenario() -> None:
        with start_sim(st.path, log=tmp_path / "sim.log") as sim:
            await sim_ready(st.control, proc=sim)
            with start_agent(st.path, log=tmp_path / "agent.log") as agent:
                await until(marker.exists, 30, "the health marker", proc=agent)
                assert json.loads(marker.read_text())["pid"] == agent.pid
                log = (tmp_path / "agent.log").read_text()
                assert "update.healthy" in log
                # It came after the pollers had run: device health was published first.
                assert log.index("poller.start") < log.index("update.healthy")
                assert agent.stop() == 0

    asyncio.run(scenario())
