"""The QR code "report a problem" link of a connector, and its parser.

Format: `<report_url>?station=<station id>&connector=<n>[&lang=<en|de>]`, e.g.
`https://charge.example.com/report?station=DEMO-0001&connector=1`. The QR code sticker (or
the display) carries it; the operator's web page takes the driver's words and hands link and
text back to the station (cloud command, local API, or `evedge tickets create --link`).
The parser refuses anything that is not exactly such a link for this station.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from agent.driver.config import SHIPPED_LANGUAGES

MAX_LINK = 2000
_PARAMS = ("station", "connector", "lang")


class ReportLinkError(ValueError):
    """The link is not a valid report link for this station; the message says why."""


@dataclass(frozen=True)
class ReportTarget:
    """Where a report link points."""

    station: str
    connector: int
    lang: str | None = None


def report_link(base: str, station: str, connector: int) -> str:
    """The link a connector's QR code carries."""
    return f"{base}?{urlencode({'station': station, 'connector': connector})}"


def _where(url: str) -> tuple[str, str, str]:
    p = urlsplit(url)
    return p.scheme, (p.netloc or "").lower(), p.path.rstrip("/")


def parse_report_link(
    link: str, *, base: str | None, station: str, connectors: Collection[int]
) -> ReportTarget:
    """Validate a report link for this station (`base`: the configured report_url; None
    accepts any https address) and return its target; ReportLinkError says what is wrong."""
    link = link.strip()
    if not link:
        raise ReportLinkError("empty link")
    if len(link) > MAX_LINK:
        raise ReportLinkError(f"link is {len(link)} characters long; at most {MAX_LINK}")
    try:
        parts = urlsplit(link)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as e:
        raise ReportLinkError(f"not a valid address: {e}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ReportLinkError(f"must be an https:// address with a host, got {link!r}")
    if base is not None and _where(link) != _where(base):
        got = f"{parts.netloc}{parts.path}"
        raise ReportLinkError(f"points to {got}; this station's report link is {base}")
    if parts.fragment:
        raise ReportLinkError("has a #fragment; a report link has none")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as e:
        raise ReportLinkError(f"query is malformed: {e}") from None
    seen: dict[str, str] = {}
    for k, v in pairs:
        if k not in _PARAMS:
            raise ReportLinkError(
                f"unknown parameter {k!r}; a report link has {', '.join(_PARAMS)}"
            )
        if k in seen:
            raise ReportLinkError(f"parameter {k!r} given twice")
        seen[k] = v
    for k in ("station", "connector"):
        if not seen.get(k):
            raise ReportLinkError(f"parameter {k!r} is missing")
    if seen["station"] != station:
        raise ReportLinkError(f"is for station {seen['station']!r}; this is station {station!r}")
    raw = seen["connector"]
    if not raw.isascii() or not raw.isdigit():
        raise ReportLinkError(f"connector must be a number, got {raw!r}")
    connector = int(raw)
    if connector not in connectors:
        have = ", ".join(map(str, sorted(connectors))) or "none"
        raise ReportLinkError(f"station {station} has no connector {connector}; it has {have}")
    lang = seen.get("lang")
    if lang is not None and lang not in SHIPPED_LANGUAGES:
        raise ReportLinkError(f"lang must be one of {', '.join(SHIPPED_LANGUAGES)}, got {lang!r}")
    return ReportTarget(station, connector, lang)
