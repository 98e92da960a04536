"""Signed updates of the agent itself, installed side by side, rolled back when unhealthy.

archive (format, manifest) → verify (certificate chain, signature, hashes, store rule) →
releases (venv per version, `current` symlink) → probation (health marker, boot counter,
rollback). `apply` drives one update and reports OCPP firmware statuses to a callback
(status.UpdateStatus), so an OCPP handler can drive it like the CLI does.
"""
