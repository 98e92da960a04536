"""Every config and store error is a clear message and an exit code, never a traceback
(issue 17 item 8): unreadable config and profile files, bad OCPP URLs, a damaged store at the
service's start (and the unit that does not restart into it), files a non-root user may not
read, and a report over an absurd date range."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from datetime import date
from pathlib import Path

import pytest

from agent.cli.common import Exit
from agent.config import ConfigError, load_config, parse_config
from agent.ocpp.config import OcppConfig
from agent.sessions.report import ReportError, build_report, day_after
from agent.sessions.store import SessionStore
from drivers import tomlfile
from hil.procs import EVEDGE

ROOT = Path(__file__).resolve().parents[1]
STATION = '[station]\nid = "ERR-1"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return [f"{p}: {m}" for p, m in err.value.problems]


# ------------------------------------------------------------------ files


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda d: d, "is a directory"),
        (lambda d: Path("/dev/zero"), "not a regular file"),
        (lambda d: (os.mkfifo(d / "f"), d / "f")[1], "not a regular file"),
        (lambda d: (d / "z").write_bytes(b"id = '\xfc'") and d / "z", "not UTF-8 text"),
        (lambda d: (d / "big").write_bytes(b"#" * 1_000_001) and d / "big", "too large"),
        (lambda d: d / "missing", "cannot read"),
        (lambda d: Path("a\x00b"), "NUL byte"),
        (lambda d: Path("x" * 300), "longer than 255"),
        (lambda d: Path("/x" * 3000), "longer than 4096"),
    ],
)
def test_unreadable_files_are_named_with_the_reason(tmp_path, make, said):
    path = make(tmp_path)
    with pytest.raises(tomlfile.TomlFileError, match=said):
        tomlfile.read_text(path)
    with pytest.raises(ConfigError, match=said):
        load_config(path)


def test_nesting_and_nul_in_values_are_config_errors():
    assert problems("x = " + "[" * 2000 + "]" * 2000) == [
        "(syntax): not valid TOML: nested too deeply"
    ]
    assert problems(STATION + '[store]\npath = "a\\u0000b"\n') == [
        "store.path: contains a NUL byte"
    ]
    deep_ok = "x = " + "[" * 200 + "]" * 200  # parses: an unknown key, as any other
    assert problems(deep_ok + "\n" + STATION) == ["x: unknown key"]


@pytest.mark.parametrize(
    ("profile", "said"),
    [
        ("/tmp", "not a shipped profile name"),
        ("/dev/zero", "not a shipped profile name"),
        ("x" * 300, "not a shipped profile name"),
        ("eastron\\u0000sdm630", "contains a NUL byte"),
        ("no-such-profile", "unknown profile"),
    ],
)
def test_bad_profile_references_are_config_errors(profile, said):
    text = STATION + textwrap.dedent(f"""\
        [[bus]]
        name = "lan"
        kind = "tcp"
        [[device]]
        name = "m"
        profile = "{profile}"
        bus = "lan"
        host = "127.0.0.1"
        unit = 1
        """)
    assert any(said in p for p in problems(text)), problems(text)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ws://127.0.0.1:99999", "Port out of range"),
        ("ws://[::1", "Invalid IPv6 URL"),
        ("ws://:9000/ocpp", "has no host"),
        ("ws://h:0/ocpp", "port must be 1..65535"),
    ],
)
def test_ocpp_urls_need_a_host_and_a_port_in_range(url, said):
    with pytest.raises(ValueError, match=said):
        OcppConfig(url=url)
    assert OcppConfig(url="ws://[::1]:9000/ocpp").url.endswith("/ocpp")


# ------------------------------------------------------------------ the store at start


def store_station(tmp_path: Path) -> Path:
    cfg = tmp_path / "station.toml"
    cfg.write_text(STATION + f'[store]\npath = "{tmp_path / "evedge.db"}"\n')
    SessionStore(tmp_path / "evedge.db").close()  # a real store, then damaged below
    return cfg


def damage(db: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(db, 100_000)
    else:  # a page in the middle overwritten
        with open(db, "r+b") as f:
            f.seek(4096 * 20)
            f.write(b"\xff" * 4096)


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_a_damaged_store_stops_the_service_with_exit_5_and_no_traceback(tmp_path, how):
    cfg = store_station(tmp_path)
    damage(tmp_path / "evedge.db", how)
    before = (tmp_path / "evedge.db").read_bytes()
    out = subprocess.run(
        [EVEDGE, "run", "--config", str(cfg), "--console-logs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = " ".join(out.stderr.split())
    assert out.returncode == Exit.STORE == 5, out.stderr
    assert "Traceback" not in out.stderr
    assert "left untouched" in said and "billing data" in said
    assert (tmp_path / "evedge.db").read_bytes() == before  # never "repaired" or recreated


def test_the_unit_does_not_restart_into_a_config_or_store_error():
    lines = (ROOT / "systemd" / "evedge.service").read_text().splitlines()
    prevent = [ln.split("=", 1)[1].split() for ln in lines if ln.startswith("RestartPrevent")]
    assert prevent == [[str(int(Exit.USAGE)), str(int(Exit.STORE))]]
    assert str(int(Exit.DISK_FULL)) not in prevent[0]  # freeing space is enough: retried


# ------------------------------------------------------------------ a non-root user

AS_NOBODY = """
import os, sys
from agent.cli.main import app

def run(args):
    try:
        app(args, prog_name="evedge")
    except SystemExit as e:
        return e.code

args = sys.argv[1:]
# As root first: every module the command imports lazily is loaded before the interpreter's
# own files (under /root here) become unreadable.
saved = os.dup(1), os.dup(2)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1), os.dup2(null, 2)
run(args)
os.dup2(saved[0], 1), os.dup2(saved[1], 2)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(run(args))
"""


@pytest.fixture
def public_dir():
    """A directory anyone may enter (pytest's tmp_path sits under a 0700 one)."""
    d = Path(tempfile.mkdtemp(prefix="evedge-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody (os.setuid)")
@pytest.mark.parametrize("command", [["billing", "verify"], ["keys", "show"], ["sessions", "list"]])
def test_a_user_who_may_not_read_the_store_gets_denied_not_a_traceback(public_dir, command):
    state = public_dir / "state"
    cfg = public_dir / "station.toml"
    cfg.write_text(
        STATION
        + f'[store]\npath = "{state / "evedge.db"}"\n'
        + f'[billing]\nkey_dir = "{state / "keys"}"\nfree_vend = true\n'
    )
    from agent.billing.keys import load_or_create_key

    SessionStore(state / "evedge.db").close()
    load_or_create_key(state / "keys")
    state.chmod(0o700)  # the service's StateDirectoryMode
    out = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *command, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == Exit.DENIED == 4, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "permission denied" in out.stderr and "sudo -u evedge" in " ".join(out.stderr.split())


# ------------------------------------------------------------------ report ranges


def test_a_report_over_all_of_time_is_a_clear_error_not_an_overflow(tmp_path):
    store = SessionStore(tmp_path / "evedge.db")

    def report(start: date, end: date, period: str = "day"):
        return build_report(
            store, period=period, start=start, end=end, tz="Europe/Berlin", connectors=[1]
        )

    with pytest.raises(ReportError, match="last date there is"):
        day_after(date(9999, 12, 31))
    with pytest.raises(ReportError, match=r"about 3652058 days \(at most 10000\)"):
        report(date(1, 1, 1), day_after(date(9999, 12, 30)))
    with pytest.raises(ReportError, match=r"reach outside 0001-01-01 \.\. 9999-12-31"):
        report(date(9999, 12, 1), day_after(date(9999, 12, 30)), "month")
    with pytest.raises(ReportError, match="reach outside"):  # Berlin's midnight is in year 0
        report(date(1, 1, 1), day_after(date(1, 12, 31)), "month")
    rows = report(date(1, 2, 1), day_after(date(1, 12, 31)), "month")
    assert [r.period for r in rows][:2] == ["1-02", "1-03"] and len(rows) == 11
    store.close()
    cfg = tmp_path / "station.toml"
    cfg.write_text(STATION + f'[store]\npath = "{tmp_path / "evedge.db"}"\n')
    out = subprocess.run(
        [EVEDGE, "report", "--from", "0001-01-01", "--to", "9999-12-31", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == Exit.USAGE and "last date there is" in out.stderr, out.stderr


def test_an_error_names_a_huge_bad_value_without_pasting_it():
    (said,) = problems(STATION + '[log]\nlevel = "' + "x" * 5000 + '"\n')
    assert said.startswith("log.level: must be 'debug'") and len(said) < 200
