"""One handler mixin per OCPP 1.6 feature profile; `agent/ocpp/client.py` composes them."""
