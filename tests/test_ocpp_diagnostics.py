"""GetDiagnostics against a real CSMS on loopback: the bundle uploaded to a loopback HTTP
server (PUT, and POST where PUT is refused) and a pyftpdlib FTP server; a failed upload.
Bounded transfers (issue 17): loopback needs `[ocpp] upload_allow` (listed here; one test
shows it refused without), retries clamped, redirects only to allowed https, one upload at
a time, cancelled by Reset."""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port
from ocpp.v16 import call
from ocpp_helpers import csms_running, ocpp_service
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
from test_ocpp_core import plain_config

from agent.ocpp.config import OcppConfig
from agent.support.upload import check_location


class Uploads(ThreadingHTTPServer):
    """Keeps what was uploaded: (method, path) -> body. `put_allowed=False` answers 405;
    `status` answers every request with that code, `redirect` with a 303 to that URL."""

    def __init__(self, put_allowed: bool = True, status: int | None = None,
                 redirect: str | None = None):  # fmt: skip
        self.put_allowed, self.status, self.redirect = put_allowed, status, redirect
        self.got: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Uploads

    def _answer(self, code: int, **headers: str) -> None:
        self.send_response(code)
        for k, v in {"Content-Length": "0", **headers}.items():
            self.send_header(k, v)
        self.end_headers()

    def _store(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.command, self.path))
        if self.server.redirect is not None:
            self._answer(303, Location=self.server.redirect)
        elif self.server.status is not None:
            self._answer(self.server.status)
        elif self.command == "PUT" and not self.server.put_allowed:
            self._answer(405)
        else:
            self.server.got[(self.command, self.path)] = body
            self.server.auth.append(self.headers.get("Authorization"))
            self._answer(201)

    do_PUT = do_POST = do_GET = _store

    def log_message(self, *args) -> None:
        """Quiet."""


@contextlib.contextmanager
def http_server(put_allowed: bool = True, **kw) -> Iterator[Uploads]:
    srv = Uploads(put_allowed, **kw)
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


# Loopback is where the test servers listen: listed, as an operator would list a LAN host.
LOOPBACK = 'upload_allow = ["127.0.0.1"]\nupload_retry_interval_min_s = 0\n'


def diag_config(tmp_path, url: str, extra: str = LOOPBACK):
    return plain_config(tmp_path, url, extra)


def statuses(csms) -> list[str]:
    return [
        r.payload["status"]
        for r in csms.received["TEST"]
        if r.action == "DiagnosticsStatusNotification"
    ]


async def test_upload_over_http_put_and_post(tmp_path):
    async with csms_running() as csms, ocpp_service(diag_config(tmp_path, csms.url)):
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
    async with csms_running() as csms, ocpp_service(diag_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", "TEST")  # online: the boot was accepted
        with ftp_server(root) as port:
            name = await diagnostics(csms, f"ftp://diag:ftp-pw@127.0.0.1:{port}/diag/")
            await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "Uploaded"})
        assert '"format": "evedge-diagnostics/1"' in manifest_of(
            (root / "diag" / name).read_bytes()
        )


async def test_failed_upload_is_retried_then_reported(tmp_path):
    async with csms_running() as csms, ocpp_service(diag_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", "TEST")  # online: the boot was accepted
        nobody = f"http://127.0.0.1:{free_port()}/"
        name = await diagnostics(csms, nobody, retries=1, retry_interval=0)
        assert name is not None
        await csms.wait_for("DiagnosticsStatusNotification", "TEST", {"status": "UploadFailed"})
        assert statuses(csms) == ["Uploading", "UploadFailed"]
        # A location we cannot upload to gets no file name at all.
        assert await diagnostics(csms, "sftp://127.0.0.1/x") is None


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "[::1]",
     "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1", "192.168.1.1", "[fe80::1]",
     "100.64.0.1", "0.0.0.0", "224.0.0.1"],
)  # fmt: skip
def test_non_public_destinations_are_refused_unless_listed(host):
    # No allow-list: public hosts only, whatever the address is written as.
    reason = check_location(f"http://{host}:8080/diag/")
    assert reason is not None and "upload_allow" in reason, reason
    # Listed as written: allowed; listed in another form: still refused.
    bare = host.strip("[]")
    assert check_location(f"http://{host}:8080/diag/", [bare]) is None
    assert check_location(f"http://{host}/", ["127.0.0.1" if bare != "127.0.0.1" else "::1"])


def test_allow_list_patterns_and_public_hosts():
    assert check_location("https://diag.csms.example/x", ["*.csms.example"]) is None
    assert check_location("https://evil.example/x", ["*.csms.example"]) is not None
    assert check_location("https://93.184.215.14/x") is None  # a public address
    assert "scheme" in check_location("file:///etc/passwd")
    assert "not a URL" in check_location("http://127.0.0.1:99999/")


async def test_loopback_is_refused_without_upload_allow(tmp_path):
    async with csms_running() as csms, ocpp_service(diag_config(tmp_path, csms.url, "")):
        await csms.wait_for("StatusNotification", "TEST")
        with http_server() as srv:
            for host in ("127.0.0.1", "localhost", "2130706433", "0x7f.1"):
                assert await diagnostics(csms, f"http://{host}:{srv.server_port}/up/") is None
            assert srv.requests == []
        assert statuses(csms) == []  # nothing started


async def test_retries_are_clamped_and_redirects_checked(tmp_path):
    async with csms_running() as csms:
        cfg = diag_config(tmp_path, csms.url, LOOPBACK + "upload_retries_max = 2\n")
        async with ocpp_service(cfg):
            await csms.wait_for("StatusNotification", "TEST")
            with http_server(status=500) as srv:
                url = f"http://127.0.0.1:{srv.server_port}/up/"
                assert await diagnostics(csms, url, retries=2**31 - 1, retry_interval=0)
                await csms.wait_for("DiagnosticsStatusNotification", "TEST",
                                    {"status": "UploadFailed"})  # fmt: skip
                assert len(srv.requests) == 3  # 1 + upload_retries_max, not 2^31
            # A redirect to plain http, to a host not allowed: not followed.
            with http_server() as target:
                for where in (f"http://127.0.0.1:{target.server_port}/x",
                              "https://10.1.2.3/x", "ftp://127.0.0.1/x"):  # fmt: skip
                    with http_server(redirect=where) as srv:
                        url = f"http://127.0.0.1:{srv.server_port}/up/"
                        name = await diagnostics(csms, url, retries=0)
                        n = statuses(csms).count("UploadFailed") + 1
                        await csms.wait_for("DiagnosticsStatusNotification", "TEST",
                                            {"status": "UploadFailed"}, count=n)  # fmt: skip
                        assert srv.requests == [("PUT", f"/up/{name}")]
                assert target.requests == []


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a stuck upload)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_one_upload_at_a_time_and_reset_cancels_it(tmp_path):
    cfg_extra = LOOPBACK + "upload_timeout_s = 3\n"
    async with csms_running() as csms:
        async with ocpp_service(diag_config(tmp_path, csms.url, cfg_extra)) as svc:
            await csms.wait_for("StatusNotification", "TEST")
            with silent_server() as port:
                stuck = f"http://127.0.0.1:{port}/up/"
                assert await diagnostics(csms, stuck, retries=0)
                await csms.wait_for("DiagnosticsStatusNotification", "TEST",
                                    {"status": "Uploading"})  # fmt: skip
                # Another request while it runs: no file name.
                assert await diagnostics(csms, stuck) is None
                assert (await csms.call("TEST", call.Reset(type="Soft"))).status == "Accepted"
                await csms.wait_for("StatusNotification", "TEST", count=2)  # online again
                assert not svc.ctx.parts["diagnostics"].uploading
                with http_server() as srv:
                    url = f"http://127.0.0.1:{srv.server_port}/up/"
                    name = await diagnostics(csms, url)
                    assert name is not None
                    await csms.wait_for("DiagnosticsStatusNotification", "TEST",
                                        {"status": "Uploaded"})  # fmt: skip
                    assert ("PUT", f"/up/{name}") in srv.got
        # The cancelled upload never reported an outcome.
        assert statuses(csms) == ["Uploading", "Uploading", "Uploaded"]


@pytest.mark.parametrize("pattern", ["", "https://diag.example/", "user@host", "[::1]", "a b"])
def test_a_bad_upload_allow_pattern_is_a_clear_config_error(pattern):
    with pytest.raises(ValueError, match=r"upload_allow: .* is not a host pattern"):
        OcppConfig(url="ws://csms.example/ocpp", upload_allow=[pattern])
