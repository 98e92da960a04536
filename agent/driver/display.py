"""Where driver messages go: anything with `show(connector, message)`.

Two displays exist: the console/simulated display (hil/display.py), attached with
`DriverService.add_display`, and the MQTT topic a real display controller subscribes to:
the MQTT sync (agent/mqtt) consumes the DriverMessage events from the bus and publishes each
retained on `evedge/v1/<station-id>/display/<connector>` (its `DisplayMessage` envelope
carries the DriverMessage JSON: texts for every shipped language plus the raw figures).
"""

from __future__ import annotations

from typing import Protocol

from agent.events import DriverMessage


class Display(Protocol):
    """A driver-facing display. `show` must not block: it is called from the event loop."""

    def show(self, connector: int, message: DriverMessage) -> None: ...
