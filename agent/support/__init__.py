"""Support tooling: the diagnostics bundle, its upload, and the in-memory ring of recent logs."""
