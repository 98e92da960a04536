"""Hardware-in-the-loop: simulated meters and EVSE controllers served over Modbus TCP/RTU,
an EV/EVSE/meter model, and fault injection. The same scenarios can target real hardware.
"""
