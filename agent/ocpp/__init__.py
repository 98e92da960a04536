"""OCPP 1.6J charge point (issue 5): the `ocpp` library's ChargePoint over `websockets`."""
