"""GetLog (OCPP 1.6J security extension): the security log and the diagnostics bundle uploaded
to real HTTP and FTP servers on loopback, the window honoured, LogStatusNotification with the
requestId; refusals answered Rejected."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ocpp.v16 import call
from ocpp_helpers import csms_running, ocpp_service
from test_ocpp_diagnostics import diag_config, ftp_server, http_server, manifest_of

from agent.security.log import SecurityLog, log_path_for

CP = "TEST"


def log_statuses(csms, request_id: int) -> list[str]:
    return [
        r.payload["status"]
        for r in csms.received[CP]
        if r.action == "LogStatusNotification" and r.payload["requestId"] == request_id
    ]


def seed(tmp_path) -> SecurityLog:
    """A security log holding three old events a day apart (plus what the run adds)."""
    path = log_path_for(tmp_path / "evedge.db")
    days = [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3)]
    path.write_text(
        "".join(
            json.dumps({"ts": t.isoformat(), "seq": n, "type": "InvalidMessages",
                        "critical": False, "tech_info": f"day {n}"}) + "\n"
            for n, t in enumerate(days, 1)
        )
    )  # fmt: skip
    return SecurityLog(path)


async def test_security_log_over_http_within_the_window(tmp_path):
    seed(tmp_path)
    async with csms_running() as csms, ocpp_service(diag_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", CP)
        with http_server() as srv:
            url = f"http://127.0.0.1:{srv.server_port}/logs/"
            window = {
                "remoteLocation": url,
                "oldestTimestamp": "2026-01-02T00:00:00Z",
                "latestTimestamp": "2026-01-03T00:00:00Z",
            }
            res = await csms.call(CP, call.GetLog(log=window, log_type="SecurityLog", request_id=7))
            assert res.status == "Accepted" and res.filename.endswith(".jsonl")
            await csms.wait_for("LogStatusNotification", CP, {"status": "Uploaded"})
            body = srv.got[("PUT", f"/logs/{res.filename}")].decode()
            # Everything: the whole log since the first day, with the events of this run.
            res2 = await csms.call(
                CP,
                call.GetLog(log={"remoteLocation": url}, log_type="SecurityLog", request_id=8),
            )
            await csms.wait_for("LogStatusNotification", CP, {"requestId": 8, "status": "Uploaded"})
            whole = srv.got[("PUT", f"/logs/{res2.filename}")].decode()
    assert [json.loads(x)["tech_info"] for x in body.splitlines()] == ["day 2", "day 3"]
    assert log_statuses(csms, 7) == ["Uploading", "Uploaded"]
    lines = [json.loads(x) for x in whole.splitlines()]
    assert [x["seq"] for x in lines][:3] == [1, 2, 3] and len(lines) >= 3


async def test_diagnostics_log_over_ftp_and_refusals(tmp_path):
    root = tmp_path / "ftp"
    (root / "in").mkdir(parents=True)
    async with csms_running() as csms, ocpp_service(diag_config(tmp_path, csms.url)):
        await csms.wait_for("StatusNotification", CP)
        with ftp_server(root) as port:
            where = {
                "remoteLocation": f"ftp://diag:ftp-pw@127.0.0.1:{port}/in/",
                "oldestTimestamp": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            }
            res = await csms.call(
                CP, call.GetLog(log=where, log_type="DiagnosticsLog", request_id=1)
            )
            assert res.status == "Accepted" and res.filename.endswith(".tar.gz")
            await csms.wait_for("LogStatusNotification", CP, {"requestId": 1, "status": "Uploaded"})
        assert '"format": "evedge-diagnostics/1"' in manifest_of(
            (root / "in" / res.filename).read_bytes()
        )
        # A destination the allow list does not name: Rejected, nothing uploaded.
        away = {"remoteLocation": "http://10.1.2.3/x"}
        res = await csms.call(CP, call.GetLog(log=away, log_type="SecurityLog", request_id=2))
        assert res.status == "Rejected" and res.filename is None
        # An upload nobody receives: retried, then UploadFailure.
        dead = {"remoteLocation": "http://127.0.0.1:9/x"}
        res = await csms.call(
            CP,
            call.GetLog(
                log=dead, log_type="SecurityLog", request_id=3, retries=1, retry_interval=0
            ),
        )
        assert res.status == "Accepted"
        await csms.wait_for(
            "LogStatusNotification", CP, {"requestId": 3, "status": "UploadFailure"}
        )
    assert log_statuses(csms, 2) == []
