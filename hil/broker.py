"""A real mosquitto broker on loopback, for the demo, the MQTT tests and the MQTT bench.

    broker = Mosquitto(tmp / "broker", persistence=True)   # a free port unless one is given
    broker.start()            # or `await broker.start_async()`, or `with broker: ...`
    ... connect to 127.0.0.1:broker.port ...
    broker.stop()             # SIGTERM: mosquitto writes its persistence database

The config is written once, so a stopped broker starts again on the same port with the same
sessions (with `persistence`). Options: `tls` (server certificate, optionally requiring a
client certificate), `users` (password file; anonymous access is then refused), `acl` (an
`acl_file`, e.g. config/mosquitto-acl.example, read at every start). The working
directory holds mosquitto.conf, mosquitto.log and mosquitto.stderr. When mosquitto exits
instead of listening, RuntimeError carries its own error lines.

`mosquitto_path()` finds the binary: $EVEDGE_MOSQUITTO when set (a path that does not exist
means "not installed": the demo's tests run as if it were absent), else /usr/sbin/mosquitto,
else `mosquitto` on PATH.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from hil.procs import free_port

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto",)
MOSQUITTO_ENV = "EVEDGE_MOSQUITTO"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def mosquitto_path() -> str | None:
    """The mosquitto binary, or None when it is not installed. $EVEDGE_MOSQUITTO names
    another one (a path that does not exist: run as if mosquitto were absent)."""
    chosen = os.environ.get(MOSQUITTO_ENV)
    if chosen is not None:
        return chosen if os.access(chosen, os.X_OK) else None
    for p in MOSQUITTO_PATHS:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("mosquitto")


@dataclass(frozen=True)
class ServerTls:
    """The listener's TLS: CA, certificate and key files; `require_client_cert` for mTLS."""

    ca: Path
    cert: Path
    key: Path
    require_client_cert: bool = False


class Mosquitto:
    """mosquitto on 127.0.0.1:`port` (a free one by default); see the module docstring."""

    def __init__(
        self,
        d: Path,
        port: int | None = None,
        *,
        binary: str | None = None,
        persistence: bool = False,
        tls: ServerTls | None = None,
        users: dict[str, str] | None = None,
        acl: Path | None = None,
    ):
        self.dir = d
        self.acl = acl
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.binary = binary
        self.persistence = persistence
        self.server_tls = tls
        self.users = users
        self.proc: subprocess.Popen | None = None
        self._from: dict[Path, int] = {}
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.stderr = self.dir / "mosquitto.stderr"
        self.conf.write_text(self._config())

    def _config(self) -> str:
        lines = [f"user {getpass.getuser()}"]  # as root, mosquitto would switch to its own user
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.dir.resolve()}/",
                "autosave_interval 0",  # the database is written at shutdown
            ]
        else:
            lines.append("persistence false")
        lines += [
            f"log_dest file {self.log.resolve()}",
            "log_type all",
            "max_inflight_messages 0",
            "max_queued_messages 0",  # a backlog of 100k must not be dropped for a subscriber
            "persistent_client_expiration 1d",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pw.resolve()}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            lines.append(f"acl_file {self.acl.resolve()}")
        if self.server_tls is not None:
            t = self.server_tls
            lines += [f"cafile {t.ca}", f"certfile {t.cert}", f"keyfile {t.key}"]
            if t.require_client_cert:
                lines.append("require_certificate true")
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        binary = self.binary or mosquitto_path()
        if binary is None:
            raise RuntimeError(
                "mosquitto is not installed (not at /usr/sbin/mosquitto nor on PATH)"
            )
        # Where this start's words begin in the files that outlive a restart.
        self._from = {f: f.stat().st_size if f.exists() else 0 for f in (self.stderr, self.log)}
        with self.stderr.open("ab") as err:
            # Its own process group: a Ctrl-C in the terminal reaches the program that
            # started it, which stops it after its clients delivered (evedge demo drains
            # its outboxes through it first).
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                process_group=0,
            )

    def _listening(self) -> bool:
        """True once the port accepts connections; RuntimeError if mosquitto exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.proc = None
            raise RuntimeError(f"mosquitto exited: {self._error()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
        except OSError:
            return False

    def _error(self) -> str:
        """mosquitto's own error lines of this start: from stderr (config errors) and from
        the log (listener errors such as a port in use), else its last words."""
        lines = []
        for f in (self.stderr, self.log):
            if f.exists():
                with f.open("rb") as fh:
                    fh.seek(self._from[f])
                    lines += [ln.strip() for ln in fh.read().decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        errors = [ln for ln in lines if "Error" in ln]
        return "; ".join(errors) if errors else (lines[-1] if lines else "no message")

    def _not_listening(self) -> RuntimeError:
        self.stop()
        return RuntimeError(
            f"mosquitto did not listen on port {self.port} within {START_TIMEOUT_S:g} s"
        )

    def start(self) -> None:
        """Start and wait until the port accepts connections (RuntimeError if not)."""
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening():
            if time.monotonic() > deadline:
                raise self._not_listening()
            time.sleep(0.05)

    async def start_async(self) -> None:
        """`start()` without blocking the event loop while waiting."""
        self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not self._listening():
            if loop.time() > deadline:
                raise self._not_listening()
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence database) and wait; SIGKILL after
        STOP_TIMEOUT_S. Nothing when it is not running."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    async def stop_async(self) -> None:
        """`stop()` in a thread, so the event loop keeps running while mosquitto exits."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
