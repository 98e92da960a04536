"""The local API: JSON lines over a Unix socket, served by the agent, used by the CLI."""
