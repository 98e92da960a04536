"""MQTT cloud sync: durable outbox, documented topics with JSON Schemas, remote commands.

See agent/mqtt/README.md for the contract; `MqttService` (service.py) is what the runtime runs.
"""
