"""The API's framing constant, apart from the request models: the client imports it without
pydantic (a CLI call against the running service stays fast)."""

MAX_LINE = 1 << 20  # a request line (a tariff document fits easily)
