"""Fetch an update archive over HTTP(S), with OCPP's retries and retryInterval honoured."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.update.status import UpdateRefused, UpdateStatus

log = structlog.get_logger(__name__)

TIMEOUT_S = 60  # per connection attempt and read; a stalled server counts as a failed try
MAX_BYTES = 1024 * 1024 * 1024


def clamp_retries(
    retries: int | None, interval_s: float | None, max_retries: int, bounds: tuple[float, float]
) -> tuple[int, float]:
    """OCPP `retries`/`retryInterval` bounded by the config (absent: 0 retries, the minimum)."""
    lo, hi = bounds
    n = min(max(retries or 0, 0), max_retries)
    gap = min(max(interval_s if interval_s is not None else lo, lo), hi)
    return n, gap


def download(
    url: str,
    dest: Path,
    retries: int,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    ca_file: Path | None = None,
) -> None:
    """Download `url` to `dest`: 1 + `retries` tries, `interval_s` apart; DownloadFailed.

    https is checked against the system's CAs, or only against `ca_file` when given (the
    archive's own signature is what makes it trusted; TLS keeps the request private)."""
    if not url.startswith(("http://", "https://")):
        raise UpdateRefused(
            UpdateStatus.DOWNLOAD_FAILED, f"unsupported location {url!r}: http(s) only"
        )
    tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(interval_s)
        try:
            with (
                urllib.request.urlopen(url, timeout=TIMEOUT_S, context=tls) as r,
                dest.open("wb") as out,
            ):
                length = int(r.headers.get("Content-Length") or 0)
                if length > MAX_BYTES:
                    raise UpdateRefused(
                        UpdateStatus.DOWNLOAD_FAILED, f"{url}: {length} bytes is too large"
                    )
                while chunk := r.read(1 << 20):
                    out.write(chunk)
                    if out.tell() > MAX_BYTES:  # no or a false Content-Length
                        raise UpdateRefused(
                            UpdateStatus.DOWNLOAD_FAILED, f"{url}: more than {MAX_BYTES} bytes"
                        )
                if length and out.tell() != length:
                    raise OSError(f"short read: {out.tell()} of {length} bytes")
            return
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
            log.warning("update.download_failed", url=url, attempt=attempt + 1, error=last)
    raise UpdateRefused(
        UpdateStatus.DOWNLOAD_FAILED, f"{url}: {retries + 1} tries failed, the last: {last}"
    )
