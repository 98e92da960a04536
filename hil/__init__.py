"""Hardware-in-the-loop: simulated meters and EVSE controllers served over Modbus TCP/RTU,
an EV/EVSE/meter model, and fault injection. The same scenarios can target real hardware.
"""

from pathlib import Path

# A simulator-only EVSE controller that reports everything (see the file's header).
REFERENCE_EVSE = str(Path(__file__).parent / "profiles" / "reference-evse.toml")
