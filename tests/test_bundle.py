"""The diagnostics bundle: its members, the time window, and no secret in any member."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import UTC, datetime, timedelta

import structlog
from conftest import station_config
from fault_helpers import rule_fault
from typer.testing import CliRunner

from agent.cli.main import app
from agent.diagnosis.rules import load_rules
from agent.diagnosis.store import FaultLog
from agent.events import FaultCleared, FaultRaised
from agent.logsetup import setup_logging
from agent.store.db import Store
from agent.support.bundle import build_bundle
from agent.support.logring import RING

FILE_SECRET = "FILE-SECRET-9f3a7c1e55"
URL_SECRET = "URL-SECRET-b81d"
LOG_SECRET = "LOG-SECRET-77e0"
CARD = "CARD-SECRET-123456"


def fault(n: int, ts: datetime) -> FaultRaised:
    """Fault number `n` of the first rule (its own id and scope)."""
    rule_id = next(iter(load_rules()))
    return rule_fault(rule_id, [1], ts=ts, fault_id=f"f{n}", scope=f"connector:{n}")


def secret_config(tmp_path):
    pw = tmp_path / "ocpp.pass"
    pw.write_text(FILE_SECRET + "\n")
    os.chmod(pw, 0o600)
    extra = (
        f'[store]\npath = "{tmp_path / "evedge.db"}"\n'
        f'[auth]\nlocal_list = [{{ id = "{CARD}" }}]\n'
        f'[ocpp]\nurl = "ws://127.0.0.1:9/ocpp"\nsecurity_profile = 1\npassword_file = "{pw}"\n'
    )
    return station_config(extra=extra)


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_bundle_has_every_topic_and_no_secret(tmp_path):
    cfg = secret_config(tmp_path)
    RING.clear()
    setup_logging("info", json=True, stream=io.StringIO())
    log = structlog.get_logger("test")
    log.info("bundle.test_event", password=LOG_SECRET, detail="kept")
    log.info("bundle.test_url", location=f"ftp://diag:{URL_SECRET}@example.net/up/")
    now = datetime.now(UTC)
    with FaultLog(cfg.store.path) as faults:
        old = fault(1, now - timedelta(days=3))
        faults.record(old)
        faults.record(
            FaultCleared(
                ts=now - timedelta(days=2),
                fault_id="f1",
                rule=old.rule,
                scope=old.scope,
                connectors=[1],
                devices=[],
                raised_ts=old.ts,
                reason="resolved",
            )
        )
        faults.record(fault(2, now - timedelta(hours=1)))
    with Store(cfg.store.path) as store:
        got = members(build_bundle(cfg, store, since=now - timedelta(days=1)))
    assert set(got) >= {
        "manifest.json",
        "faults.json",
        "health.json",
        "config.json",
        "ocpp_config.json",
        "store.json",
        "logs.jsonl",
    }
    for name, data in got.items():
        for secret in (FILE_SECRET, URL_SECRET, LOG_SECRET, CARD):
            assert secret.encode() not in data, f"{secret} in {name}"
    manifest = json.loads(got["manifest.json"])
    assert manifest["station"] == "TEST"
    assert manifest["versions"]["ocpp"]
    config = json.loads(got["config.json"])
    assert config["ocpp"]["password_file"] == str(tmp_path / "ocpp.pass")  # where, not what
    assert config["auth"]["local_list"][0]["id"].startswith("CA*")
    faults = json.loads(got["faults.json"])
    assert [f["fault_id"] for f in faults["active"]] == ["f2"]
    assert faults["recent"] == []  # f1 was raised and cleared before the window
    logs = [json.loads(line) for line in got["logs.jsonl"].splitlines()]
    ours = {e["event"]: e for e in logs if e["event"].startswith("bundle.")}
    assert ours["bundle.test_event"]["detail"] == "kept"
    assert ours["bundle.test_url"]["location"] == "ftp://diag:***@example.net/up/"
    stats = json.loads(got["store.json"])
    assert stats["rows"]["faults"] == 2
    with Store(cfg.store.path) as store:
        everything = members(build_bundle(cfg, store))
    assert [f["fault_id"] for f in json.loads(everything["faults.json"])["recent"]] == ["f1"]


def test_cli_writes_the_same_bundle(tmp_path):
    cfg_file = tmp_path / "station.toml"
    cfg_file.write_text(
        f'[station]\nid = "CLI1"\n[store]\npath = "{tmp_path / "evedge.db"}"\n'
        f'[ocpp]\nurl = "ws://127.0.0.1:9/ocpp"\n'
    )
    out = tmp_path / "bundle.tar.gz"
    res = CliRunner().invoke(app, ["bundle", "--out", str(out), "--config", str(cfg_file),
                                   "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["store"] is False  # no store yet: none is created
    assert not (tmp_path / "evedge.db").exists()
    got = members(out.read_bytes())
    assert json.loads(got["manifest.json"])["station"] == "CLI1"
    assert json.loads(got["config.json"])["ocpp"]["url"] == "ws://127.0.0.1:9/ocpp"
    bad = CliRunner().invoke(app, ["bundle", "--out", str(out), "--config", str(cfg_file),
                                   "--since", "yesterday"])  # fmt: skip
    assert bad.exit_code == 2
