"""Charging sessions: per-connector state machine, authorization, metering, charge records.

Import submodules directly (agent.sessions.engine, …): this package stays import-light so
agent.config can use its config models without a cycle.
"""
