"""Security events (OCPP 1.6J security whitepaper / OCPP 2.0.1): the catalog, the port the
services record them through, and the append-only security log."""
