"""The diagnostics bundle: what a technician or the operator needs to understand a station.

A tar.gz with one JSON (or text) member per topic:

    manifest.json   station, when, the window, versions of evedge / Python / key libraries
    faults.json     active faults and those raised in the window, with their evidence
    health.json     the latest communication health of every device
    config.json     the validated station config, secrets masked (no file is ever read)
    ocpp_config.json  OCPP configuration keys the CSMS set, secret-named ones masked
    store.json      store file size, schema version, rows per table
    kpi.json        availability KPIs per connector and month (agent/kpi)
    logs.jsonl      recent log events from this process (agent/support/logring.py)
    journal.txt     the evedge unit's journal in the window, where journalctl can read it

The same bytes serve OCPP GetDiagnostics, MQTT and `evedge bundle --out FILE`. Masking is
`evedge config show`'s (agent/secretnames.py `mask_secrets`): values of secret-named
fields, passwords in URLs, local list tokens; *_file / *_dir / *_path values are locations
and no file is ever read. It is applied to the config, the OCPP keys, the faults, the log
events (already redacted when logged, agent/logsetup.py) and the journal text.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import sqlite3
import subprocess
import tarfile
from datetime import datetime
from importlib import metadata
from typing import Any

from agent.config import StationConfig
from agent.diagnosis.store import FaultRecord
from agent.events import FaultCleared, FaultRaised, utcnow
from agent.kpi.station import station_kpis
from agent.secretnames import mask_secrets
from agent.sessions.times import to_us
from agent.store.db import Store
from agent.support.logring import RING

FORMAT = "evedge-diagnostics/1"
JOURNAL_UNIT = "evedge"
JOURNAL_MAX_LINES = 5000
JOURNAL_TIMEOUT_S = 20
RECENT_FAULTS = 500
_LIBRARIES = ("pymodbus", "ocpp", "websockets", "paho-mqtt", "pydantic", "structlog")


def build_bundle(
    cfg: StationConfig,
    store: Store | None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> bytes:
    """The diagnostics bundle (tar.gz bytes) of the station; `since`/`until` (aware UTC)
    bound the logs and the faults that are no longer active. Blocking: call it from a
    worker thread in the service."""
    now = utcnow()
    members: dict[str, bytes] = {
        "faults.json": _json(_faults(store, since, until)),
        "health.json": _json(
            [] if store is None else [h.model_dump(mode="json") for h in store.health()]
        ),
        "config.json": _json(mask_secrets(cfg.model_dump(mode="json"))),
        "ocpp_config.json": _json(_ocpp_keys(store)),
        "store.json": _json(_store_stats(cfg, store)),
        "kpi.json": _json(_kpis(cfg, store, now)),
        "logs.jsonl": "".join(
            json.dumps(mask_secrets(e), default=str) + "\n" for e in RING.events(since, until)
        ).encode(),
    }
    journal = _journal(since, until)
    if journal is not None:
        members["journal.txt"] = journal
    manifest = {
        "format": FORMAT,
        "station": cfg.station.id,
        "generated_at": now.isoformat(),
        "window": {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        },
        "versions": _versions(),
        "members": sorted(members),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"manifest.json": _json(manifest), **members}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(now.timestamp()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n").encode()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "os": platform.platform()}
    for name in ("evedge", *_LIBRARIES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _tables(c: sqlite3.Connection) -> list[str]:
    rows = c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    return [r[0] for r in rows if not r[0].startswith("sqlite_")]


def _faults(store: Store | None, since: datetime | None, until: datetime | None) -> dict:
    """Active faults, and the newest ones raised in the window."""
    if store is None:
        return {"active": [], "recent": []}
    lo = to_us(since) if since else None
    hi = to_us(until) if until else None
    with store.reading() as c:
        if "faults" not in _tables(c):
            return {"active": [], "recent": []}
        rows = c.execute(
            "SELECT payload, cleared, cleared_ts FROM faults WHERE (? IS NULL OR raised_ts >= ?) "
            "AND (? IS NULL OR raised_ts <= ?) OR cleared_ts IS NULL "
            "ORDER BY raised_ts DESC LIMIT ?",
            (lo, lo, hi, hi, RECENT_FAULTS),
        ).fetchall()
    records = [
        FaultRecord(
            FaultRaised.model_validate_json(p), FaultCleared.model_validate_json(cl) if cl else None
        )
        for p, cl, _ in rows
    ]
    return {
        "active": [mask_secrets(r.as_json()) for r in records if r.active],
        "recent": [mask_secrets(r.as_json()) for r in records if not r.active],
    }


def _kpis(cfg: StationConfig, store: Store | None, now: datetime) -> dict[str, Any]:
    """The KPI report; a failure is reported in the member, never fails the bundle."""
    if store is None:
        return {"error": "no store"}
    try:
        return station_kpis(cfg, store.reading, now=now).model_dump(mode="json")
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def _ocpp_keys(store: Store | None) -> dict[str, str]:
    if store is None:
        return {}
    with store.reading() as c:
        if "ocpp_config" not in _tables(c):
            return {}
        rows = c.execute("SELECT key, value FROM ocpp_config ORDER BY key").fetchall()
    return mask_secrets(dict(rows))


def _store_stats(cfg: StationConfig, store: Store | None) -> dict[str, Any]:
    path = cfg.store.path
    out: dict[str, Any] = {"path": str(path), "exists": path.exists()}
    if path.exists():
        out["size_bytes"] = path.stat().st_size
        wal = path.with_name(path.name + "-wal")
        out["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    if store is None:
        return out
    out["schema_version"] = store.schema_version()
    with store.reading() as c:
        out["rows"] = {
            t: c.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in _tables(c)
        }
    return out


def _journal(since: datetime | None, until: datetime | None) -> bytes | None:
    """The evedge unit's journal (None where there is no journal to read)."""
    exe = shutil.which("journalctl")
    if exe is None:
        return None
    cmd = [
        exe,
        "-u",
        JOURNAL_UNIT,
        "--no-pager",
        "-o",
        "short-iso-precise",
        "-n",
        str(JOURNAL_MAX_LINES),
    ]
    if since is not None:
        cmd += ["--since", since.strftime("%Y-%m-%d %H:%M:%S UTC")]
    if until is not None:
        cmd += ["--until", until.strftime("%Y-%m-%d %H:%M:%S UTC")]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=JOURNAL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip() or done.stdout.startswith(b"-- No entries"):
        return None
    return mask_secrets(done.stdout.decode("utf-8", errors="replace")).encode()
