"""GetDiagnostics against a real CSMS on loopback: the bundle uploaded to a loopback HTTP
server (PUT, and POST where PUT is refused) and a pyftpdlib FTP server; a failed upload."""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import free_port
from ocpp.v16 import call
from ocpp_helpers import csms_running, ocpp_service
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
from test_ocpp_core import plain_config


class Uploads(ThreadingHTTPServer):
    """Keeps what was uploaded: (method, path) -> body. `put_allowed=False` answers 405."""

    def __init__(self, put_allowed: bool = True):
        self.put_allowed = put_allowed
        self.got: dict[tuple[str, str], bytes] = {}
        self.auth: list[str | None] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Uploads

    def _store(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.got[(self.command, self.path)] = body
        self.server.auth.append(self.headers.get("Authorization"))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        if not self.server.put_allowed:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._store()

    do_POST = _store

    def log_message(self, *args) -> None:
        """Quiet."""


@contextlib.contextmanager
def http_server(put_allowed: bool = True) -> Iterator[Uploads]:
    srv = Uploads(put_allowed)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def ftp_server(root: Path) -> Iterator[int]:
    auth = DummyAuthorizer()
    auth.add_user("diag", "ftp-pw", str(root), perm="elradfmw")
    handler = type("Handler", (FTPHandler,), {"authorizer": auth})
    srv = FTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"timeout": 0.1}, daemon=True)
    t.start()
    try:
        yield srv.address[1]
    finally:
        srv.close_all()
        t.join(5)


def manifest_of(data: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.extractfile("manifest.json").read().decode()


async def diagnostics(csms, location: str, **kw) -> str | None:
    res = await csms.call("TEST", call.GetDiagnostics(location=location, **kw))
    return res.file_name


async def test_upload_over_http_put_and_post(tmp_path):
    async with csms_running() as csms, ocpp_service(plain_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", "TEST")  # online: the boot was accepted
        with http_server() as srv:
            url = f"http://diag:http-pw@127.0.0.1:{srv.server_port}/upload/"
            name = await diagnostics(csms, url, start_time="2025-01-01T00:00:00Z")
            assert name is not None and name.startswith("TEST-diagnostics-")
            await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "Uploading"})
            await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "Uploaded"})
            body = srv.got[("PUT", f"/upload/{name}")]
            assert '"station": "TEST"' in manifest_of(body)
            assert srv.auth[0] is not None and srv.auth[0].startswith("Basic ")
        with http_server(put_allowed=False) as srv:
            name = await diagnostics(csms, f"http://127.0.0.1:{srv.server_port}/in")
            await csms.wait_for(
                "DiagnosticsStatusNotification", "TEST", {"status": "Uploaded"}, count=2
            )
            body = srv.got[("POST", "/in")]
            assert f'filename="{name}"'.encode() in body
            assert b"\x1f\x8b" in body  # the gzip inside the form
        # Once done, a trigger reports Idle.
        await csms.call(
            "TEST", call.TriggerMessage(requested_message="DiagnosticsStatusNotification")
        )
        await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "Idle"})


async def test_upload_over_ftp(tmp_path):
    root = tmp_path / "ftp"
    (root / "diag").mkdir(parents=True)
    async with csms_running() as csms, ocpp_service(plain_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", "TEST")  # online: the boot was accepted
        with ftp_server(root) as port:
            name = await diagnostics(csms, f"ftp://diag:ftp-pw@127.0.0.1:{port}/diag/")
            await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "Uploaded"})
        assert '"format": "evedge-diagnostics/1"' in manifest_of(
            (root / "diag" / name).read_bytes()
        )


async def test_failed_upload_is_retried_then_reported(tmp_path):
    async with csms_running() as csms, ocpp_service(plain_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", "TEST")  # online: the boot was accepted
        nobody = f"http://127.0.0.1:{free_port()}/"
        name = await diagnostics(csms, nobody, retries=1, retry_interval=0)
        assert name is not None
        await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "UploadFailed"})
        statuses = [
            r.payload["status"]
            for r in csms.received["TEST"]
            if r.action == "DiagnosticsStatusNotification"
        ]
        assert statuses == ["Uploading", "UploadFailed"]
        # A location we cannot upload to gets no file name at all.
        assert await diagnostics(csms, "sftp://127.0.0.1/x") is None
