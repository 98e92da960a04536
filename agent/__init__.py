"""The evedge daemon: runtime, event bus, store, diagnosis, sessions, billing, sync, API, CLI."""
