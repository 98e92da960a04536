"""The whole update cycle with real installs (pip into real venvs), a real HTTP server and a
systemd stand-in (update_helpers.Supervisor): a good update, a release that never becomes
healthy, a crash loop, a manual rollback, an update during a charging session."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sessions_helpers import billed_config, record_sessions, running
from typer.testing import CliRunner
from update_helpers import Pki, Supervisor, http_server, make_pki, standin_wheels, wait_for

from agent.cli.main import app
from agent.store.migrations import LATEST_VERSION
from agent.update import probation, releases
from agent.update.apply import Request, Updater
from agent.update.config import UpdateConfig
from agent.update.status import UpdateRefused
from agent.update.status import UpdateStatus as S

pytestmark = pytest.mark.timeout(300)


class Site:
    """A station's releases: 1.0.0 installed and running under the supervisor."""

    def __init__(self, tmp: Path, pki: Pki):
        self.tmp, self.pki = tmp, pki
        self.releases, self.link, self.state = tmp / "releases", tmp / "current", tmp / "update"
        self.runs = tmp / "runs.log"  # the stand-ins log each start here
        self.sup = Supervisor(self.link, self.state)
        self.seen: list[S] = []

    def release(self, version: str, behaviour: str) -> Path:
        """The signed archive of a stand-in release, in tmp/www."""
        wheels = standin_wheels(self.tmp / f"wheels-{version}", version, behaviour)
        (self.tmp / "www").mkdir(exist_ok=True)
        return self.pki.archive(self.tmp / "www" / f"evedge-{version}.update", wheels, version)

    def updater(self, **cfg) -> Updater:
        c = UpdateConfig(root_ca_file=self.pki.roots_file, releases_dir=self.releases,
                         current_link=self.link, **cfg)  # fmt: skip
        return Updater(c, self.state, LATEST_VERSION, self.seen.append, self.sup.restart, **{})

    def started(self) -> list[str]:
        """The releases the supervisor started, in order."""
        return list(self.sup.started)


@pytest.fixture
def site(tmp_path) -> Site:
    s = Site(tmp_path, make_pki(tmp_path))
    wheels = standin_wheels(tmp_path / "wheels-1.0.0", "1.0.0", "healthy")
    releases.switch(s.link, releases.install(s.releases, "1.0.0", wheels[0].parent, "evedge"))
    s.sup.start()
    wait_for(lambda: probation.marker(s.state, "1.0.0").exists(), what="1.0.0 healthy")
    yield s
    s.sup.close()


def test_good_update_installs_side_by_side_and_is_committed(site):
    site.release("2.0.0", "healthy")
    up = site.updater()
    # installDateTime an hour ahead: a test clock that the updater's waits move on.
    now = [datetime(2026, 12, 8, 2, 0, tzinfo=UTC)]
    waits: list[float] = []
    up.clock = lambda: now[0]
    up.sleep = lambda s: (waits.append(s), now.__setitem__(0, now[0] + timedelta(seconds=s)))
    at = now[0] + timedelta(hours=1)
    with http_server(site.tmp / "www") as url:
        m = up.apply(Request(f"{url}/evedge-2.0.0.update", retries=1, install_at=at))
    assert sum(waits) == 3600 and now[0] == at  # installed once the time came, not before
    up.sleep = time.sleep  # settle waits for the real marker
    assert site.seen == [
        S.DOWNLOADING, S.DOWNLOADED, S.SIGNATURE_VERIFIED, S.INSTALLING, S.INSTALL_REBOOTING
    ]  # fmt: skip
    assert up.settle(m.version) == "committed"
    assert site.seen[-1] == S.INSTALLED
    assert releases.current_version(site.link) == "2.0.0"
    assert releases.installed(site.releases) == ["1.0.0", "2.0.0"]  # the previous one kept
    assert site.started() == ["1.0.0", "2.0.0"]
    # The dependency came from the signed wheelhouse into the new venv.
    assert "2.0.0 healthy locked" in site.runs.read_text()
    assert probation.read(site.state) is None
    assert probation.read(site.state, probation.LAST)["outcome"] == "committed"
    # A later start of the committed release is no probation any more.
    site.sup.restart()
    assert site.started()[-1] == "2.0.0"


def test_release_never_healthy_is_rolled_back_and_charge_records_kept(site, tmp_path):
    cfg, toml = record_sessions(tmp_path / "station", 2)  # real signed charge records
    db_before = _records(cfg.store.path)
    assert len(db_before) == 2
    a = site.release("2.0.0", "never")
    up = site.updater(healthy_within_s=3)
    up.apply(Request(str(a)))
    assert up.settle("2.0.0") == "rolled_back"
    assert site.seen[-2:] == [S.INSTALL_REBOOTING, S.INSTALLATION_FAILED]
    assert releases.current_version(site.link) == "1.0.0"
    assert site.started() == ["1.0.0", "2.0.0", "1.0.0"]
    wait_for(lambda: site.runs.read_text().count("1.0.0 healthy") == 2, what="1.0.0 back")
    last = probation.read(site.state, probation.LAST)
    assert last["outcome"] == "rolled_back" and "not healthy within 3 s" in last["reason"]
    # The store is shared, never touched by an update or a rollback: every record, verifying.
    assert _records(cfg.store.path) == db_before
    r = CliRunner().invoke(app, ["billing", "verify", "--config", str(toml)])
    assert r.exit_code == 0, r.output


def _records(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT * FROM charge_records ORDER BY 1").fetchall()


def test_crash_loop_rolls_back_after_max_boots(site):
    a = site.release("2.0.0", "crash")
    up = site.updater(max_boots=2, healthy_within_s=600)
    up.apply(Request(str(a)))
    # Restart=on-failure starts it again; the third start's boot check rolls back, so that
    # very start runs 1.0.0 (settle finds the probation decided and does not wait it out).
    assert up.settle("2.0.0") == "rolled_back"
    assert site.started() == ["1.0.0", "2.0.0", "2.0.0", "1.0.0"]
    assert releases.current_version(site.link) == "1.0.0"
    last = probation.read(site.state, probation.LAST)
    assert last["reason"] == "2 starts without becoming healthy" and last["boots"] == 3
    assert site.seen[-1] == S.INSTALLATION_FAILED


def test_deadline_passed_while_nobody_watched_rolls_back_at_next_start(site):
    # `update apply` was cut off (power loss) after the switch: the next start decides.
    a = site.release("2.0.0", "never")
    site.updater(healthy_within_s=600).apply(Request(str(a)))
    p = probation.read(site.state)
    p["since"] -= 601  # the deadline passed while the station was off
    (site.state / probation.PROBATION).write_text(json.dumps(p))
    site.sup.restart()
    assert site.started()[-1] == "1.0.0"
    assert "not healthy within 600 s" in probation.read(site.state, probation.LAST)["reason"]


def test_reinstalling_the_running_release_is_refused(site):
    a = site.release("1.0.0", "healthy")
    with pytest.raises(UpdateRefused, match="already running"):
        site.updater().apply(Request(str(a)))
    assert site.seen[-1] == S.INSTALLATION_FAILED
    assert site.started() == ["1.0.0"]


def test_cli_status_and_manual_rollback(site, tmp_path):
    a = site.release("2.0.0", "healthy")
    up = site.updater()
    up.apply(Request(str(a)))
    assert up.settle("2.0.0") == "committed"
    # The CLI restarts with [update] restart_command: here a file the test then acts on.
    flag = tmp_path / "restart-asked"
    conf = tmp_path / "station.toml"
    conf.write_text(
        f'[station]\nid = "T"\n[store]\npath = "{tmp_path / "evedge.db"}"\n[update]\n'
        f'root_ca_file = "{site.pki.roots_file}"\nreleases_dir = "{site.releases}"\n'
        f'current_link = "{site.link}"\nrestart_command = ["touch", "{flag}"]\n'
    )
    r = CliRunner().invoke(app, ["update", "status", "--config", str(conf), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["current"] == "2.0.0" and doc["installed"] == ["1.0.0", "2.0.0"]
    assert doc["last"]["outcome"] == "committed"
    r = CliRunner().invoke(app, ["update", "rollback", "--config", str(conf)])
    assert r.exit_code == 0, r.output
    assert flag.exists() and releases.current_version(site.link) == "1.0.0"
    r = CliRunner().invoke(app, ["update", "rollback", "--config", str(conf)])
    assert r.exit_code == 1 and "no committed update" in r.output


@pytest.mark.parametrize("policy", ["wait", "refuse"])
def test_update_during_a_session(site, tmp_path, sockdir, policy):
    sock = sockdir / "api.sock"
    cfg = billed_config(
        tmp_path / "station", diagnosis=f'[api]\nsocket = "{sock}"\nmode = "0666"\n'
    )
    a = site.release("2.0.0", "healthy")
    up = site.updater(during_session=policy)
    up.api_socket = sock
    ended = threading.Event()
    waiting = threading.Event()
    at_install: list[bool] = []

    def report(s: S) -> None:
        site.seen.append(s)
        if s == S.INSTALLING:
            at_install.append(ended.is_set())

    up._report = report
    up.sleep = lambda s: (waiting.set(), ended.wait(0.05))

    async def scenario() -> None:
        async with running(cfg) as rig:
            await rig.card_charging()
            task = asyncio.create_task(asyncio.to_thread(_apply, up, a))
            if policy == "wait":
                await asyncio.to_thread(waiting.wait, 60)
                assert site.seen == [S.SIGNATURE_VERIFIED]  # verified, now waiting
                rig.sim.unplug(1)
                await rig.record(1)
                ended.set()
            outcome = await task
            if policy == "refuse":
                assert isinstance(outcome, UpdateRefused) and "connectors [1]" in str(outcome)

    asyncio.run(scenario())
    if policy == "wait":
        assert at_install == [True]  # installing only once the session had ended
        assert releases.current_version(site.link) == "2.0.0"
    else:
        assert site.seen == [S.SIGNATURE_VERIFIED, S.INSTALLATION_FAILED]
        assert releases.current_version(site.link) == "1.0.0"
        assert not (site.releases / "2.0.0").exists()


def _apply(up: Updater, archive: Path):
    try:
        return up.apply(Request(str(archive)))
    except UpdateRefused as e:
        return e


def test_boot_check_script_is_standalone(tmp_path):
    # The unit runs the file with the system python, outside any release: stdlib only.
    src = Path(probation.__file__).read_text()
    imports = [line for line in src.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in {"__future__", "json", "os", "sys", "time",
               "pathlib"} for line in imports), imports  # fmt: skip
    assert os.access(probation.__file__, os.R_OK)


def test_failed_install_keeps_the_running_release(site):
    # The stand-in needs evedge-fakedep; a wheelhouse without it cannot install offline.
    wheels = standin_wheels(site.tmp / "w", "2.0.0", "healthy")[:1]
    a = site.pki.archive(site.tmp / "a.update", wheels, "2.0.0")
    with pytest.raises(UpdateRefused, match="pip install failed") as e:
        site.updater().apply(Request(str(a)))
    assert e.value.status == S.INSTALLATION_FAILED and "evedge-fakedep" in str(e.value)
    assert site.seen == [S.SIGNATURE_VERIFIED, S.INSTALLING, S.INSTALLATION_FAILED]
    assert releases.installed(site.releases) == ["1.0.0"]
    assert not (site.releases / "2.0.0").exists()
    assert releases.current_version(site.link) == "1.0.0" and site.started() == ["1.0.0"]
    assert probation.read(site.state) is None


def test_prune_keeps_the_current_and_previous_release(tmp_path):
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        (tmp_path / v / "venv").mkdir(parents=True)
        (tmp_path / v / releases.COMPLETE).write_text("x")
    assert releases.prune(tmp_path, {"3.0.0", "2.0.0"}) == ["1.0.0"]
    assert releases.installed(tmp_path) == ["2.0.0", "3.0.0"]


def test_one_update_at_a_time(tmp_path):
    import fcntl

    pki = make_pki(tmp_path)
    c = UpdateConfig(root_ca_file=pki.roots_file, releases_dir=tmp_path / "r",
                     current_link=tmp_path / "c")  # fmt: skip
    state = tmp_path / "update"
    state.mkdir()
    seen: list = []
    with (state / "apply.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running `update apply` holds it
        with pytest.raises(UpdateRefused, match="another update is being applied"):
            Updater(c, state, LATEST_VERSION, seen.append, lambda: None).apply(
                Request(str(tmp_path / "x.update")), dry_run=True
            )
    assert seen == [S.INSTALLATION_FAILED]
