"""The service unit (systemd/evedge.service) and its installer (systemd/install.sh).

The unit is parsed for the directives the service relies on and checked with
`systemd-analyze verify` and `systemd-analyze security` (exposure score <= 2.0; the figures
against an unhardened baseline are printed by bench/systemd_security.py) where systemd is
installed. On a machine without it (a fresh Debian container: systemd-analyze comes with the
`systemd` package, which the Makefile's SYSTEM_DEPS deliberately leaves out: it is heavy and
meant to run as PID 1) those tests skip and say so. MemoryDenyWriteExecute= is exercised
for real: the agent charges a car under the kernel's equivalent (prctl PR_SET_MDWE).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.billing.keys import load_or_create_key, public_key_hex
from agent.config import load_config
from agent.sessions.records import verify_records
from agent.sessions.store import SessionStore
from hil.control import execute, parse_command
from hil.procs import EVEDGE, fast_billing, until, write_station
from hil.station import SimStation

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "evedge.service"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
INSTALL = ROOT / "systemd" / "install.sh"
ANALYZE = shutil.which("systemd-analyze")
NO_ANALYZE = (
    "systemd-analyze is not installed (Debian: package systemd, left out of the Makefile's "
    "SYSTEM_DEPS on purpose: too heavy for a CI container)"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (keys like DeviceAllow= repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        assert section is not None, f"directive outside a section: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_notify_watchdog_restart_and_stop_timeout(unit):
    svc = unit["Service"]
    assert svc["Type"] == ["notify"]
    assert svc["NotifyAccess"] == ["main"]
    assert svc["WatchdogSec"] == ["30s"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["RestartForceExitStatus"] == ["75"]  # the OCPP hard reset
    # The agent's flush budget (10 s) plus commit and close fit in the stop timeout.
    assert svc["TimeoutStopSec"] == ["30s"]
    assert svc["ExecStart"] == [
        "/opt/evedge/current/venv/bin/evedge run --config /etc/evedge/station.toml"
    ]
    # The boot check of agent/update/probation.py, privileged ('+') and outside the releases.
    assert svc["ExecStartPre"] == [
        "+/usr/bin/python3 /opt/evedge/boot-check.py /var/lib/evedge/update"
    ]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_descriptor_limit_leaves_room_beyond_the_local_api(unit):
    from agent.api.config import ApiConfig

    (limit,) = unit["Service"]["LimitNOFILE"]
    # The API's connections all together take at most max_connections descriptors: the
    # store, Modbus, OCPP and MQTT keep the rest (tests/test_api_limits.py floods it).
    assert int(limit) >= 4 * ApiConfig().max_connections


def test_user_directories_and_serial_ports(unit):
    svc = unit["Service"]
    assert (svc["User"], svc["Group"]) == (["evedge"], ["evedge"])
    assert svc["SupplementaryGroups"] == ["dialout"]
    assert svc["StateDirectory"] == ["evedge"]
    assert svc["ConfigurationDirectory"] == ["evedge"]
    assert svc["RuntimeDirectory"] == ["evedge"]
    assert svc["RuntimeDirectoryMode"] == ["0750"]  # group evedge reaches the API socket
    assert svc["DevicePolicy"] == ["closed"]
    assert set(svc["DeviceAllow"]) == {
        f"char-{tty} rw" for tty in ("ttyUSB", "ttyACM", "ttyS", "ttyAMA")
    }
    assert "PrivateDevices" not in svc  # it would hide the RS-485 adapters


def test_hardening(unit):
    svc = unit["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RemoveIPC": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "UMask": "0077",
    }
    assert {k: svc.get(k, ["<missing>"])[0] for k in expected} == expected
    assert svc["SystemCallFilter"][0] == "@system-service"


@pytest.mark.skipif(ANALYZE is None, reason=NO_ANALYZE)
def test_systemd_analyze_verify(tmp_path):
    # verify insists the ExecStart binary exists: point it at this checkout's venv.
    copy = tmp_path / "evedge.service"
    copy.write_text(UNIT.read_text().replace("/opt/evedge/current/venv/bin/evedge", EVEDGE))
    res = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


@pytest.mark.skipif(ANALYZE is None, reason=NO_ANALYZE)
def test_systemd_analyze_verify_names_a_missing_binary(tmp_path):
    copy = tmp_path / "evedge.service"
    copy.write_text(UNIT.read_text().replace("/opt/evedge/current/venv", str(tmp_path / "nowhere")))
    res = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode != 0
    assert "is not executable: No such file or directory" in res.stderr


def _bench_security():
    """bench/systemd_security.py as a module (bench/ is scripts, not a package)."""
    path = ROOT / "bench" / "systemd_security.py"
    spec = importlib.util.spec_from_file_location("systemd_security", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(ANALYZE is None, reason=NO_ANALYZE)
def test_exposure_score_is_at_most_two(tmp_path):
    """systemd-analyze security: 0 is locked down, 10 fully exposed; the goal is <= 2.0."""
    bench = _bench_security()
    score, verdict, still_counted = bench.analyze(UNIT)
    assert score <= bench.GOAL, f"exposure {score} {verdict}; counted: {still_counted}"
    # The score measures the hardening: the same unit without it is far more exposed.
    baseline = tmp_path / UNIT.name
    baseline.write_text(bench.baseline_of(UNIT.read_text()))
    assert bench.analyze(baseline)[0] > 2 * bench.GOAL


# -------------------------------------------------------------- MemoryDenyWriteExecute=

# python -c MDWE_EXEC PROGRAM ARGS...: exec PROGRAM with prctl(PR_SET_MDWE (65),
# PR_MDWE_REFUSE_EXEC_GAIN (1)) set; children and exec'd programs inherit it.
MDWE_EXEC = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE) failed: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""


def _kernel_has_mdwe() -> bool:
    # Probe in a child: the flag cannot be cleared once set.
    res = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", "pass"], capture_output=True
    )
    return res.returncode == 0


@pytest.mark.skipif(
    not _kernel_has_mdwe(),
    reason=f"kernel {platform.release()} has no prctl(PR_SET_MDWE) (Linux >= 6.3): "
    "MemoryDenyWriteExecute= cannot be reproduced outside systemd",
)
async def test_agent_charges_a_car_with_write_xor_execute_enforced(tmp_path):
    """The kernel refuses writable+executable memory, as MemoryDenyWriteExecute=yes does;
    the agent polls, runs a session and signs its record (cryptography) all the same."""
    refused = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, sys.executable, "-c",
         "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "Permission denied" in refused.stderr

    station = write_station(tmp_path, extra=fast_billing(tmp_path))
    config, db = station.path, station.db
    sim = SimStation(load_config(config))
    await sim.start()
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", MDWE_EXEC, EVEDGE, "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def active():
        with SessionStore(db) as st:
            return [r for r in st.active_sessions() if r.billed_wh]

    def records():
        with SessionStore(db) as st:
            return st.records()

    try:
        await asyncio.sleep(0.5)
        execute(sim, parse_command({"cmd": "plug_in", "connector": 1}))
        await until(active, 20, "a session with energy")
        (session,) = active()
        execute(sim, parse_command({"cmd": "unplug", "connector": 1}))
        await until(records, 20, "the charge record")
        (rec,) = records()
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        await sim.stop()
    assert rec.session_id == session.id
    with SessionStore(db) as st:
        report = verify_records(st, public_key_hex(load_or_create_key(tmp_path / "keys")))
    assert report.ok and report.records == 1 and report.signatures, report.problems


# -------------------------------------------------------------- install.sh


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(INSTALL), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def test_install_dry_run_shows_every_step_and_changes_nothing(tmp_path):
    res = install("--dry-run", "--now", "--prefix", str(tmp_path / "opt"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    release = tmp_path / "opt" / "releases" / VERSION
    assert f"-m venv {release / 'venv'}" in out
    assert f"mv -T {tmp_path / 'opt' / '.current.new'} {tmp_path / 'opt' / 'current'}" in out
    assert f"pip install --quiet --upgrade {ROOT}" in out
    assert "/etc/systemd/system/evedge.service" in out
    assert "systemctl enable evedge.service" in out
    assert "systemctl restart evedge.service" in out
    if subprocess.run(["getent", "passwd", "evedge"], capture_output=True).returncode:
        assert "useradd --system --gid evedge" in out
    assert not (tmp_path / "opt").exists()


def test_install_into_a_destdir_is_idempotent_and_keeps_the_station_config(tmp_path):
    root = tmp_path / "root"
    res = install("--destdir", str(root), "--skip-venv", "--prefix", "/srv/evedge")
    assert res.returncode == 0, res.stderr
    assert "skip: user evedge" in res.stdout and "skip: systemctl" in res.stdout
    conf = root / "etc" / "evedge" / "station.toml"
    unit_file = root / "etc" / "systemd" / "system" / "evedge.service"
    assert conf.read_text() == (ROOT / "config" / "station.example.toml").read_text()
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    assert oct(unit_file.stat().st_mode & 0o777) == "0o644"
    svc = parse_unit(unit_file.read_text())["Service"]
    assert svc["ExecStart"] == [
        "/srv/evedge/current/venv/bin/evedge run --config /etc/evedge/station.toml"
    ]
    # The boot check runs with the real interpreter behind the venvs, not a shim.
    py, script, state = svc["ExecStartPre"][0].removeprefix("+").split()
    assert os.path.isfile(py) and os.access(py, os.X_OK) and os.path.isabs(py)
    assert (script, state) == ("/srv/evedge/boot-check.py", "/var/lib/evedge/update")
    boot_check = root / "srv" / "evedge" / "boot-check.py"
    assert boot_check.read_text() == (ROOT / "agent" / "update" / "probation.py").read_text()

    conf.write_text('[station]\nid = "EDITED"\n')
    again = install("--skip-venv", "--prefix", "/srv/evedge", env={"DESTDIR": str(root)})
    assert again.returncode == 0, again.stderr
    assert f"keep: {conf} exists" in again.stdout
    assert conf.read_text() == '[station]\nid = "EDITED"\n'
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "etc",
        "etc/evedge",
        "etc/evedge/station.toml",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/evedge.service",
        "srv",
        "srv/evedge",
        "srv/evedge/README.md",
        "srv/evedge/boot-check.py",
        "srv/evedge/systemd",
        "srv/evedge/systemd/README.md",
    ]
    assert parse_unit(unit_file.read_text())["Unit"]["Documentation"] == [
        "file:///srv/evedge/README.md file:///srv/evedge/systemd/README.md"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option '--bogus'"),
        (["--destdir"], "--destdir needs a directory"),
        (["--prefix", "relative/dir", "--dry-run"], "--prefix must be absolute"),
    ],
)
def test_install_rejects_bad_arguments(args, message):
    res = install(*args)
    assert res.returncode == 2
    assert message in res.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_service_runs_the_installer():
    res = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "install-service", "ARGS=--dry-run"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "systemctl enable evedge.service" in res.stdout and res.stdout.endswith("done\n")
