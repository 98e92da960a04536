"""Upload a file to the location a CSMS names (GetDiagnostics): HTTP(S) or FTP.

The location is a directory URL; the file goes into it under `filename`.

- http(s)://[user:password@]host[:port]/dir/ — HTTP PUT of the bytes to `dir/filename`
  (Content-Type application/gzip, Basic auth from the URL's user info). A server that
  answers 405 Method Not Allowed or 501 Not Implemented gets a multipart/form-data POST of
  the file (field "file") to the directory URL instead: OCPP does not say which method, and
  the CSMS upload endpoints in use take one or the other. Server certificates are verified
  against the system's CAs.
- ftp://[user:password@]host[:port]/dir/ — passive mode, binary STOR, anonymous login
  when the URL names no user; the path is walked segment by segment (RFC 1738).

Destinations (`check_location`, before the upload and again at each attempt and redirect):
with an allow-list (`[ocpp] upload_allow`, shell-style host patterns) only hosts it names;
without one, only hosts whose every address is global: loopback, private, link-local,
shared, reserved and multicast addresses are refused, whatever the host is written as
(`localhost`, `2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]` all resolve to 127.0.0.1).
An HTTP redirect is followed only to an https URL that passes the same check; the
Authorization header is not sent to another host. (The check resolves the name, the
connection resolves it again: a DNS answer that changes in between is not caught.)

Blocking (urllib / ftplib): call from a worker thread. Errors are `UploadError` with a
message a technician can act on; URLs in messages and logs never carry the password.
"""

from __future__ import annotations

import base64
import fnmatch
import ftplib
import io
import ipaddress
import socket
import ssl
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from urllib.request import HTTPRedirectHandler, HTTPSHandler, Request, build_opener

SCHEMES = ("http", "https", "ftp")
REDIRECT_SCHEMES = ("https",)  # never downgrade to plain HTTP on a redirect
_FALLBACK_TO_POST = (405, 501)


class UploadError(Exception):
    """The upload failed; the message says where and why (without credentials)."""


def check_location(location: str, allow: Sequence[str] = ()) -> str | None:
    """Why `location` cannot be uploaded to (None: it can be tried). Resolves the host
    (blocking) unless `allow` names it."""
    try:
        u = urlsplit(location)
        host = u.hostname
        u.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as e:
        return f"not a URL: {e}"
    if u.scheme.lower() not in SCHEMES:
        return f"scheme {u.scheme or '(none)'!r} is not supported; use {', '.join(SCHEMES)}"
    if not host:
        return "the URL names no host"
    return check_host(host, allow)


def check_host(host: str, allow: Sequence[str] = ()) -> str | None:
    """Why `host` is not a destination (None: it is); see the module docstring."""
    host = host.lower().rstrip(".")
    if allow:
        if any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allow):
            return None
        return f"host {host} is not in [ocpp] upload_allow"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        return f"host {host} does not resolve: {e}"
    for *_, sockaddr in infos:
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_multicast:
            return (
                f"host {host} is {addr}, not a public address: list it in [ocpp] "
                "upload_allow to upload there"
            )
    return None


def public_url(location: str) -> str:
    """The URL without user info, for logs."""
    u = urlsplit(location)
    host = u.hostname or ""
    netloc = f"{host}:{u.port}" if u.port else host
    return urlunsplit((u.scheme, netloc, u.path, u.query, ""))


def upload(
    data: bytes,
    location: str,
    filename: str,
    *,
    timeout: float = 60,
    allow: Sequence[str] = (),
) -> None:
    """Put `data` as `filename` into the directory URL `location`; UploadError on failure
    (also for a destination or redirect `check_location` refuses)."""
    reason = check_location(location, allow)
    if reason is not None:
        raise UploadError(f"{public_url(location)}: {reason}")
    u = urlsplit(location)
    if u.scheme.lower() == "ftp":
        _ftp(data, location, filename, timeout)
    else:
        _http(data, location, filename, timeout, allow)


class _CheckedRedirects(HTTPRedirectHandler):
    """Follows a redirect only to an allowed https destination, without the credentials
    when it leaves the host."""

    def __init__(self, allow: Sequence[str]):
        self.allow = allow

    def redirect_request(
        self, req: Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Request | None:
        where = public_url(newurl)
        if urlsplit(newurl).scheme.lower() not in REDIRECT_SCHEMES:
            raise UploadError(f"{req.get_method()} {req.full_url}: redirect to {where} refused "
                              f"(only {', '.join(REDIRECT_SCHEMES)})")  # fmt: skip
        reason = check_location(newurl, self.allow)
        if reason is not None:
            raise UploadError(
                f"{req.get_method()} {req.full_url}: redirect to {where} refused: {reason}"
            )
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _http(data: bytes, location: str, filename: str, timeout: float, allow: Sequence[str]) -> None:
    u = urlsplit(location)
    headers = {}
    if u.username is not None:
        pair = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    directory = public_url(location)
    base, query = directory.split("?", 1) if "?" in directory else (directory, "")
    target = base.rstrip("/") + "/" + quote(filename) + (f"?{query}" if query else "")
    put = Request(
        target,
        data=data,
        method="PUT",
        headers={**headers, "Content-Type": "application/gzip"},
    )
    try:
        _send(put, timeout, allow)
        return
    except HTTPError as e:
        if e.code not in _FALLBACK_TO_POST:
            raise UploadError(f"PUT {target}: HTTP {e.code} {e.reason}") from None
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: application/gzip\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    post = Request(
        directory,
        data=body,
        method="POST",
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        _send(post, timeout, allow)
    except HTTPError as e:
        raise UploadError(f"POST {directory}: HTTP {e.code} {e.reason}") from None


def _send(req: Request, timeout: float, allow: Sequence[str]) -> None:
    opener = build_opener(HTTPSHandler(context=ssl.create_default_context()),
                          _CheckedRedirects(allow))  # fmt: skip
    try:
        with opener.open(req, timeout=timeout) as resp:
            resp.read()
    except HTTPError:
        raise
    except (URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UploadError(f"{req.get_method()} {req.full_url}: {reason}") from None


def _ftp(data: bytes, location: str, filename: str, timeout: float) -> None:
    u = urlsplit(location)
    where = public_url(location)
    ftp = ftplib.FTP(timeout=timeout)
    try:
        ftp.connect(u.hostname or "", u.port or 21)
        ftp.login(unquote(u.username or "anonymous"), unquote(u.password or "anonymous@"))
        ftp.set_pasv(True)
        for segment in u.path.split("/"):
            if segment:
                ftp.cwd(unquote(segment))
        ftp.storbinary(f"STOR {filename}", io.BytesIO(data))
    except (*ftplib.all_errors, EOFError) as e:
        raise UploadError(f"FTP {where.rstrip('/')}/{filename}: {e}") from None
    finally:
        try:
            ftp.quit()
        except (*ftplib.all_errors, EOFError, AttributeError):
            ftp.close()
