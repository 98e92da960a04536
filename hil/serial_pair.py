"""A virtual null-modem cable: two linked pseudo-terminals made by socat.

    with SerialPair() as (agent_end, sim_end): ...
    async with SerialPair() as (agent_end, sim_end): ...

The agent opens one end like /dev/ttyUSB0, the simulator serves the other. A pty has no
baud rate: bytes arrive at once, so the servers add wire timing themselves when asked.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "install socat: apt-get install socat"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the forked child, before exec: the kernel sends socat SIGTERM when the process
    (thread) that started it dies, so a simulator killed by SIGKILL leaves no socat behind."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class SerialPairError(RuntimeError):
    """socat is missing, failed, or did not create the links in time."""


class SerialPair:
    """Two linked ptys from `socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B`.

    `agent_link` / `sim_link` choose where the links are made (default: a fresh temp
    dir). Entering gives (agent_end, sim_end) as paths; leaving stops socat by its PID.
    """

    def __init__(
        self,
        agent_link: str | os.PathLike[str] | None = None,
        sim_link: str | os.PathLike[str] | None = None,
        timeout_s: float = 5.0,
    ):
        self._agent_link = Path(agent_link) if agent_link else None
        self._sim_link = Path(sim_link) if sim_link else None
        self.timeout_s = timeout_s
        self.agent_end = ""
        self.sim_end = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log = Path()

    def start(self) -> tuple[str, str]:
        """Start socat and wait for both links; returns (agent_end, sim_end)."""
        socat = shutil.which("socat") or next(
            (p for p in ("/usr/bin/socat", "/usr/sbin/socat") if os.access(p, os.X_OK)), None
        )
        if socat is None:
            raise SerialPairError(f"socat not found; {INSTALL_HINT}")
        self._tmp = tempfile.TemporaryDirectory(prefix="evedge-serial-")
        agent = self._agent_link or Path(self._tmp.name) / "agent"
        sim = self._sim_link or Path(self._tmp.name) / "sim"
        for link in (agent, sim):
            _clear_stale_link(link)
        # socat's log goes to a file, not a pipe nobody drains during a long run.
        self._log = Path(self._tmp.name) / "socat.log"
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [socat, "-d", "-d", f"pty,raw,echo=0,link={agent}", f"pty,raw,echo=0,link={sim}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        deadline = time.monotonic() + self.timeout_s
        while not (agent.exists() and sim.exists()):
            if self._proc.poll() is not None:
                err = self._log.read_text(errors="replace").strip()
                code = self._proc.returncode
                self.stop()
                raise SerialPairError(f"socat exited with {code}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise SerialPairError(f"socat made no links within {self.timeout_s} s")
            time.sleep(0.01)
        self.agent_end, self.sim_end = str(agent), str(sim)
        return self.agent_end, self.sim_end

    def stop(self) -> None:
        """Stop socat (by its PID) and remove the temp dir; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> tuple[str, str]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> tuple[str, str]:
        return self.start()  # socat makes its links within milliseconds

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def _clear_stale_link(link: Path) -> None:
    """Remove a link a killed socat left behind; refuse to replace anything else."""
    if link.is_symlink():
        target = os.readlink(link)
        if target.startswith("/dev/pts/") and not Path(target).exists():
            link.unlink()
            return
        raise SerialPairError(f"{link} already exists (-> {target}); is another simulator running?")
    if link.exists():
        raise SerialPairError(f"{link} exists and is not a pty link; refusing to replace it")
