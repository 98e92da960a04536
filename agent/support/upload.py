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

Blocking (urllib / ftplib): call from a worker thread. Errors are `UploadError` with a
message a technician can act on; URLs in messages and logs never carry the password.
"""

from __future__ import annotations

import base64
import ftplib
import io
import ssl
import uuid
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from urllib.request import Request, urlopen

SCHEMES = ("http", "https", "ftp")
_FALLBACK_TO_POST = (405, 501)


class UploadError(Exception):
    """The upload failed; the message says where and why (without credentials)."""


def check_location(location: str) -> str | None:
    """Why `location` cannot be uploaded to (None: it can be tried)."""
    try:
        u = urlsplit(location)
    except ValueError as e:
        return f"not a URL: {e}"
    if u.scheme.lower() not in SCHEMES:
        return f"scheme {u.scheme or '(none)'!r} is not supported; use {', '.join(SCHEMES)}"
    if not u.hostname:
        return "the URL names no host"
    return None


def public_url(location: str) -> str:
    """The URL without user info, for logs."""
    u = urlsplit(location)
    host = u.hostname or ""
    netloc = f"{host}:{u.port}" if u.port else host
    return urlunsplit((u.scheme, netloc, u.path, u.query, ""))


def upload(data: bytes, location: str, filename: str, *, timeout: float = 60) -> None:
    """Put `data` as `filename` into the directory URL `location`; UploadError on failure."""
    reason = check_location(location)
    if reason is not None:
        raise UploadError(f"{public_url(location)}: {reason}")
    u = urlsplit(location)
    if u.scheme.lower() == "ftp":
        _ftp(data, location, filename, timeout)
    else:
        _http(data, location, filename, timeout)


def _http(data: bytes, location: str, filename: str, timeout: float) -> None:
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
        _send(put, timeout)
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
        _send(post, timeout)
    except HTTPError as e:
        raise UploadError(f"POST {directory}: HTTP {e.code} {e.reason}") from None


def _send(req: Request, timeout: float) -> None:
    try:
        with urlopen(req, timeout=timeout, context=ssl.create_default_context()) as resp:
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
