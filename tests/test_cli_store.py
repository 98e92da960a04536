"""The technician CLI with the service down: the store is read read-only (never created or
migrated), the outbox backlogs show, errors are plain text and JSON objects with --json,
and `config show` prints TOML that parses back. Every command a real `evedge` subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import tomllib
from pathlib import Path

from agent.cli.config_show import mask_secrets
from agent.config import load_config
from agent.store.db import open_db, transaction
from agent.store.migrations import LATEST_VERSION, MIGRATIONS, statements
from hil.procs import EVEDGE, write_station

US = 1_000_000


def ev(*args: str) -> subprocess.CompletedProcess[str]:
    """`evedge ARGS`; rich does not wrap what the tests look for."""
    return subprocess.run(
        [EVEDGE, *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def old_store(path: Path, version: int) -> None:
    """A store as an older evedge left it: migrations 1..version only."""
    conn = sqlite3.connect(path, isolation_level=None)
    for m in MIGRATIONS[:version]:
        with transaction(conn):
            for stmt in statements(m.sql):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {m.version}")
    conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_older_store_is_read_never_migrated(tmp_path):
    st = write_station(tmp_path)
    old_store(st.db, 4)
    before = digest(st.db)
    cfg = str(st.path)

    status = ev("status", "--config", cfg, "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["source"] == "store" and report["connectors"][0]["connector"] == 1
    # Schema 4 has no outboxes: nothing to count, no error.
    assert report["backlog"] == {"charge_records": 0} and report["sync"] == {}

    # Commands that need the newer tables refuse, saying why and what to do.
    want = f"the store is at schema 4, this evedge expects {LATEST_VERSION}; start the service"
    for cmd in (("sessions", "list"), ("billing", "verify"), ("report",)):
        out = ev(*cmd, "--config", cfg)
        assert out.returncode == 1, (cmd, out.stdout, out.stderr)
        assert want in " ".join(out.stderr.split()), cmd
    faults = ev("faults", "--config", cfg, "--json")  # faults came with schema 3: readable
    assert faults.returncode == 0 and json.loads(faults.stdout)["faults"] == []
    bundle = ev("bundle", "--config", cfg, "--out", str(tmp_path / "b.tar.gz"), "--json")
    assert bundle.returncode == 0 and json.loads(bundle.stdout)["store"] is True

    assert digest(st.db) == before
    conn = sqlite3.connect(st.db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    conn.close()
    assert not Path(f"{st.db}-wal").exists() or Path(f"{st.db}-wal").stat().st_size == 0


def test_a_missing_store_is_said_and_not_created(tmp_path):
    st = write_station(tmp_path)
    out = ev("status", "--config", str(st.path), "--json")
    assert out.returncode == 3
    err = json.loads(out.stdout)
    assert err["ok"] is False and err["error"]["code"] == "unreachable"
    assert f"no store at {st.db}" in err["error"]["message"]
    for cmd in (("faults",), ("sessions", "list")):
        out = ev(*cmd, "--config", str(st.path))
        assert out.returncode in (1, 3) and "no store at" in " ".join(out.stderr.split())
    assert not st.db.exists()


def test_store_status_shows_the_outbox_backlogs(tmp_path):
    st = write_station(tmp_path)
    conn = open_db(st.db)
    with transaction(conn):
        for seq, (delivered, exhausted, parked) in enumerate(
            [(None, 0, 0), (None, 2, 1), (5 * US, 0, 0)], 1
        ):
            conn.execute(
                "INSERT INTO ocpp_outbox (seq, session_id, connector, action, payload, "
                "created_ts, exhausted, parked, delivered_ts) "
                "VALUES (?, 's1', 1, 'MeterValues', '{}', ?, ?, ?, ?)",
                (seq, seq * US, exhausted, parked, delivered),
            )
        for i, stream in enumerate(["telemetry", "telemetry", "faults"], 1):
            conn.execute(
                "INSERT INTO mqtt_outbox (stream, seq, msg_id, topic, payload, kind, created_ts) "
                "VALUES (?, ?, ?, 't', x'00', 'keep', 0)",
                (stream, i, f"m{i}"),
            )
    conn.close()

    out = ev("status", "--config", str(st.path), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["backlog"] == {"charge_records": 0, "ocpp": 2, "mqtt": 3}
    assert report["sync"]["ocpp"]["outbox"] == {"pending": 2, "parked": 1, "exhausted": 1}
    assert report["sync"]["mqtt"]["backlog_by_stream"] == {"telemetry": 2, "faults": 1}
    human = " ".join(ev("status", "--config", str(st.path)).stdout.split())
    assert "ocpp 2, mqtt 3" in human and "exhausted" in human


def test_section_names_in_messages_are_printed_not_eaten(tmp_path):
    st = write_station(tmp_path)  # no [api] section
    cfg = str(st.path)
    started = ev("start", "1", "--config", cfg)
    assert started.returncode == 3
    assert "the config has no [api] section" in " ".join(started.stderr.split())
    as_json = ev("start", "1", "--config", cfg, "--json")
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "error": {
            "code": "unreachable",
            "message": "the config has no [api] section: the service has no API; "
            "`start` needs the running service",
        },
    }
    down = ev("status", "--config", cfg)  # the note before the store fallback
    assert "no [api] section" in " ".join(down.stderr.split())
    keys = ev("keys", "show", "--config", cfg, "--json")
    assert (
        keys.returncode == 2
        and "no [billing] section" in json.loads(keys.stdout)["error"]["message"]
    )


def test_invalid_config_is_a_json_error_and_config_check_takes_both_forms(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[station]\nid = "has space"\n')
    for cmd in (("status", "--config", str(bad)), ("config", "check", "--config", str(bad))):
        out = ev(*cmd, "--json")
        assert out.returncode == 2, cmd
        doc = json.loads(out.stdout)
        assert doc["ok"] is False and doc["error"]["code"] == "invalid_config"
        assert any(p["path"].startswith("station.id") for p in doc["error"]["problems"])
    good = write_station(tmp_path).path
    by_arg, by_opt = (ev("config", "check", *a, "--json") for a in ([str(good)], ["-c", str(good)]))
    assert by_arg.returncode == by_opt.returncode == 0
    assert json.loads(by_arg.stdout) == json.loads(by_opt.stdout)
    both = ev("config", "check", str(good), "--config", str(bad))
    assert both.returncode == 2 and "two configs given" in both.stderr


def test_config_show_prints_toml_that_parses_back(tmp_path):
    st = write_station(
        tmp_path,
        extra=f'[api]\nsocket = "{tmp_path / "api.sock"}"\nmode = 0o640\n'
        '[auth]\nlocal_list = [{ id = "DE-SECRET-TOKEN-42" }]\n',
    )
    out = ev("config", "show", "--config", str(st.path))
    assert out.returncode == 0, out.stderr
    shown = tomllib.loads(out.stdout)

    def drop_none(v):
        if isinstance(v, dict):
            return {k: drop_none(i) for k, i in v.items() if i is not None}
        if isinstance(v, list):
            return [drop_none(i) for i in v if i is not None]
        return v

    expected = drop_none(mask_secrets(load_config(st.path).model_dump(mode="json")))
    assert shown == expected
    assert shown["api"]["mode"] == 0o640 and "mode = 0o640" in out.stdout
    assert "billing" not in shown and "# billing: not set" in out.stdout
    assert "DE-SECRET-TOKEN-42" not in out.stdout
