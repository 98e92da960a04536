"""One update, start to end, reporting OCPP statuses: the CLI and an OCPP handler drive this.

    Downloading → Downloaded → SignatureVerified → (installDateTime, sessions end) →
    Installing → InstallRebooting → Installed, or a failure status that ends it
    (DownloadFailed, InvalidSignature, InstallVerificationFailed, InstallationFailed).

`Updater.apply` stops at InstallRebooting (the service restarts into the new release);
`Updater.settle` then waits for the release's health marker and reports Installed, or rolls
back (InstallationFailed). Every refusal raises UpdateRefused after reporting its status.
Both block (downloads, pip, waits): an async caller such as an OCPP handler runs them with
asyncio.to_thread, and its report callback is called from that thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.update import probation, releases
from agent.update.archive import ArchiveError, Manifest, unpack
from agent.update.config import UpdateConfig
from agent.update.download import clamp_retries, download
from agent.update.sessions import wait_idle
from agent.update.status import Reporter, UpdateRefused, UpdateStatus
from agent.update.verify import load_roots, verify

log = structlog.get_logger(__name__)

HEALTH_POLL_S = 1.0


@dataclass(frozen=True)
class Request:
    """An update request (OCPP SignedUpdateFirmware / UpdateFirmware fields)."""

    location: str  # a local file or an http(s) URL
    retries: int | None = None
    retry_interval_s: float | None = None
    install_at: datetime | None = None  # installDateTime; None: as soon as possible


def systemctl_restart(cmd: list[str]) -> Callable[[], None]:
    """A restart callable running `cmd` (the config's restart_command)."""

    def restart() -> None:
        subprocess.run(cmd, check=True, timeout=120)

    return restart


class Updater:
    """Applies updates to the releases under `cfg`; see the module docstring."""

    def __init__(
        self,
        cfg: UpdateConfig,
        state_dir: Path,
        running_schema: int,
        report: Reporter,
        restart: Callable[[], None],
        api_socket: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.cfg = cfg
        self.state_dir = state_dir
        self.running_schema = running_schema
        self._report = report
        self.restart = restart
        self.api_socket = api_socket
        self.sleep = sleep
        self.clock = clock  # wall clock for installDateTime

    def report(self, status: UpdateStatus) -> None:
        log.info("update.status", status=str(status))
        self._report(status)

    def apply(self, req: Request, dry_run: bool = False) -> Manifest:
        """Fetch, verify and (unless `dry_run`) install and switch to the release; restart."""
        try:
            with self._exclusive():
                return self._apply(req, dry_run)
        except UpdateRefused as e:
            log.warning("update.refused", status=str(e.status), reason=str(e))
            self.report(e.status)
            raise

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One update at a time (the CLI and an OCPP request could overlap)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "apply.lock").open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UpdateRefused(
                    UpdateStatus.INSTALLATION_FAILED, "another update is being applied"
                ) from None
            yield

    def _apply(self, req: Request, dry_run: bool) -> Manifest:
        with tempfile.TemporaryDirectory(prefix="evedge-update-") as tmp:
            work = Path(tmp)
            archive = self._fetch(req, work)
            try:
                u = unpack(archive, work / "unpacked")
            except ArchiveError as e:
                raise UpdateRefused(UpdateStatus.INSTALL_VERIFICATION_FAILED, str(e)) from e
            verify(u, load_roots(self.cfg.root_ca_file), self.running_schema)
            self.report(UpdateStatus.SIGNATURE_VERIFIED)
            m = u.manifest
            if dry_run:
                return m
            current = os.path.realpath(self.cfg.current_link)
            if not os.path.isdir(current):
                raise UpdateRefused(
                    UpdateStatus.INSTALLATION_FAILED,
                    f"{self.cfg.current_link} names no release: nothing to roll back to",
                )
            if releases.current_version(self.cfg.current_link) == m.version:
                raise UpdateRefused(
                    UpdateStatus.INSTALLATION_FAILED, f"release {m.version} is already running"
                )
            self._wait_until(req.install_at)
            wait_idle(
                self.api_socket,
                self.cfg.during_session,
                self.cfg.session_wait_max_s,
                sleep=self.sleep,
                on_wait=lambda busy: log.info("update.waiting_for_sessions", connectors=busy),
            )
            self.report(UpdateStatus.INSTALLING)
            target = releases.install(self.cfg.releases_dir, m.version, u.wheelhouse, m.requirement)
        probation.begin(
            self.state_dir,
            m.version,
            current,
            self.cfg.current_link,
            self.cfg.healthy_within_s,
            self.cfg.max_boots,
        )
        releases.switch(self.cfg.current_link, target)
        self.report(UpdateStatus.INSTALL_REBOOTING)
        self.restart()
        return m

    def _fetch(self, req: Request, work: Path) -> Path:
        if not req.location.startswith(("http://", "https://")):
            path = Path(req.location)
            if not path.is_file():
                raise UpdateRefused(UpdateStatus.DOWNLOAD_FAILED, f"{path}: no such file")
            return path
        self.report(UpdateStatus.DOWNLOADING)
        n, gap = clamp_retries(
            req.retries, req.retry_interval_s, self.cfg.max_retries, self.cfg.retry_interval_s
        )
        dest = work / "update.tar"
        download(req.location, dest, n, gap, sleep=self.sleep, ca_file=self.cfg.download_ca_file)
        self.report(UpdateStatus.DOWNLOADED)
        return dest

    def _wait_until(self, at: datetime | None) -> None:
        while at is not None and (left := (at - self.clock()).total_seconds()) > 0:
            log.info("update.waiting_for_install_time", install_at=at.isoformat())
            self.sleep(min(left, 60.0))

    def settle(self, version: str) -> str:
        """After the restart: wait for the health marker up to healthy_within_s, then decide.

        Returns "committed" (Installed) or "rolled_back" (InstallationFailed; the service runs
        the previous release again). The boot check at each start decides the same way, so a
        settle cut short (power loss) is finished by the next start, and one that finds the
        boot check decided already (a crash loop) reports that outcome."""
        deadline = time.monotonic() + self.cfg.healthy_within_s
        mark = probation.marker(self.state_dir, version)
        while not mark.exists() and time.monotonic() < deadline:
            if probation.read(self.state_dir) is None:
                break
            self.sleep(HEALTH_POLL_S)
        if probation.read(self.state_dir) is None:
            last = probation.read(self.state_dir, probation.LAST) or {}
            outcome = last.get("outcome") if last.get("version") == version else None
            outcome = outcome or "rolled_back"
        elif mark.exists():
            outcome = probation.check(self.state_dir)
        else:
            outcome = probation.rollback(
                self.state_dir, f"not healthy within {self.cfg.healthy_within_s:g} s"
            )
            self.restart()
        ok = outcome == "committed"
        if ok:  # keep the new release and its fallback; older ones only take room
            last = probation.read(self.state_dir, probation.LAST) or {}
            releases.prune(self.cfg.releases_dir, {version, Path(last.get("previous", "")).name})
        self.report(UpdateStatus.INSTALLED if ok else UpdateStatus.INSTALLATION_FAILED)
        return outcome
