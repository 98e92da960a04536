"""The simulated station and the agent as real processes: `evedge sim` and `evedge run`.

For tests and benches that need what only a separate process shows (kill -9, SIGTERM and the
exit code, systemd's notify socket, the Last Will of a dead MQTT client):

    st = write_station(tmp, station_id="CHAOS", extra=billing_text)
    with start_sim(st.path, tmp / "sim.log") as sim:
        await sim_ready(st.control)
        agent = start_agent(st.path, tmp / "agent.log")
        await until(lambda: some_condition(), 20, "what we wait for", proc=agent)
        agent.kill9()                       # like a power cut
        agent = start_agent(st.path, tmp / "agent.log")   # the log is appended to
        assert agent.stop() == 0            # SIGTERM: a clean stop

The station file: one TCP (or RTU) bus with an Eastron SDM630 meter (`meter1`, unit 1) and
a Phoenix EV Charge Control (`evse1`, unit 255 on TCP, 2 on RTU) serving connector 1, the
store at `tmp/evedge.db`, and the simulator's control port, every port a free one; further
sections ([billing], [ocpp], [mqtt], [api], ...) are appended as TOML text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hil.control import send_command

EVEDGE = str(Path(sys.executable).parent / "evedge")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class StationFile:
    """A written station config and the ports in it."""

    path: Path
    text: str
    control: int  # the simulator's control port ([sim] control_port)
    meter_port: int | None  # Modbus TCP ports (None on an RTU bus)
    evse_port: int | None
    db: Path  # [store] path


TARIFFS = Path(__file__).resolve().parents[1] / "config" / "tariffs"


def fast_billing(tmp: Path, tariff: str = "energy-parking-flat.json") -> str:
    """[billing] (free vend, the shipped `tariff`) and [sessions] tuned for short sessions and
    quick recovery: samples every 0.5 s, checkpoints every 0.2 s, 1-2 s recovery waits."""
    return f"""
[billing]
tariff = "{TARIFFS / tariff}"
key_dir = "{tmp / "keys"}"
free_vend = true
[billing.sampling]
interval_s = 0.5
clock_aligned_s = 1
checkpoint_s = 0.2
[sessions]
end_reading_timeout_s = 1
recovery_timeout_s = 2
meter_max_age_s = 2
"""


def write_station(
    tmp: Path,
    *,
    station_id: str = "TEST",
    extra: str = "",
    meter_interval_s: float = 0.1,
    evse_interval_s: float = 0.05,
    timeout_s: float = 0.3,
    retries: int = 0,
    log_level: str | None = "info",
    rtu: str | Path | None = None,
    name: str = "station.toml",
) -> StationFile:
    """Write `tmp/name`: the one-connector station on free ports plus the `extra` TOML text.

    With `rtu` (a serial port path) both devices sit on the RS-485 bus `rs485` at 38400 baud
    instead of the TCP bus `lan`. `log_level=None` leaves [log] out (the default level).
    """
    control, db = free_port(), tmp / "evedge.db"
    if rtu is None:
        mport, eport = free_port(), free_port()
        bus = 'name = "lan"\nkind = "tcp"'
        meter_at = f'bus = "lan"\nhost = "127.0.0.1"\nport = {mport}\nunit = 1'
        evse_at = f'bus = "lan"\nhost = "127.0.0.1"\nport = {eport}\nunit = 255'
    else:
        mport = eport = None
        bus = f'name = "rs485"\nkind = "rtu"\nport = "{rtu}"\nbaudrate = 38400'
        meter_at, evse_at = 'bus = "rs485"\nunit = 1', 'bus = "rs485"\nunit = 2'
    log = f'[log]\nlevel = "{log_level}"\n' if log_level else ""
    text = f"""[station]
id = "{station_id}"
[[bus]]
{bus}
timeout_s = {timeout_s}
retries = {retries}
[[device]]
name = "meter1"
profile = "eastron-sdm630"
{meter_at}
interval_s = {meter_interval_s}
[[device]]
name = "evse1"
profile = "phoenix-ev-charge-control"
{evse_at}
interval_s = {evse_interval_s}
[[connector]]
id = 1
evse = "evse1"
meter = "meter1"
max_current_a = 32
[store]
path = "{db}"
{log}[sim]
control_port = {control}
{extra}"""
    path = tmp / name
    path.write_text(text)
    return StationFile(path, text, control, mport, eport, db)


class Proc:
    """One `evedge ARGS` child process, stdout and stderr appended to `log` (or discarded).

    A context manager: leaving the block stops it (`stop()`).
    """

    def __init__(self, *args: str, log: Path | None = None, env: dict[str, str] | None = None):
        self.log = log
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            self.p = subprocess.Popen(
                [EVEDGE, *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        finally:
            if log is not None:
                out.close()

    @property
    def pid(self) -> int:
        return self.p.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.p.poll()

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGSTOP, SIGCONT, SIGABRT, ...) without waiting."""
        os.kill(self.p.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; its code (-N for signal N). subprocess.TimeoutExpired if not."""
        return self.p.wait(timeout)

    def handles(self, sig: int) -> bool:
        """True once the process has its own handler for `sig` (SigCgt in /proc/PID/status):
        from then on the signal is its to act on, not a kill."""
        try:
            status = Path(f"/proc/{self.p.pid}/status").read_text()
        except OSError:
            return False
        caught = next((ln.split()[1] for ln in status.splitlines() if ln[:7] == "SigCgt:"), "0")
        return bool(int(caught, 16) & (1 << (sig - 1)))

    def kill9(self) -> int:
        """SIGKILL (no clean-up runs: a power cut for the process) and reap."""
        if self.p.poll() is None:
            # A stopped process dies of SIGKILL too; nothing else to do first.
            self.p.kill()
        return self.p.wait()

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait for a clean stop; after `timeout` s SIGABRT (stacks to the log)
        and SIGKILL. The exit code (0 for a clean stop); the code it had if it had exited
        already."""
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.p.pid, signal.SIGCONT)  # a SIGSTOPped process must see SIGTERM
            self.p.terminate()
            try:
                return self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                # SIGABRT first: the agent's faulthandler writes every thread's stack to the
                # log, which says where the stop hung.
                self.p.send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.p.wait(2)
                return self.kill9()
        return self.p.wait()

    async def stop_async(self, timeout: float = 15) -> int:
        """`stop()` in a thread, for tests whose event loop runs a peer (the CSMS) that must
        go on answering while the agent flushes its outbox on SIGTERM."""
        return await asyncio.to_thread(self.stop, timeout)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log, for assertion messages."""
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def __enter__(self) -> Proc:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_sim(config: Path, log: Path | None = None) -> Proc:
    """`evedge sim --config CONFIG`; wait for it with `sim_ready`."""
    return Proc("sim", "--config", str(config), log=log)


def start_agent(
    config: Path,
    log: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    console_logs: bool = True,
) -> Proc:
    """`evedge run --config CONFIG [--console-logs]`; `env` replaces the environment."""
    args = ["run", "--config", str(config)] + (["--console-logs"] if console_logs else [])
    return Proc(*args, log=log, env=env)


async def until(
    pred: Callable[[], Any], timeout: float, what: str, *, proc: Proc | None = None
) -> None:
    """Poll `pred` every 0.05 s until true; AssertionError after `timeout` s, or at once if
    `proc` (the process that should make it true) exited, with the end of its log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{what}: the process exited with {proc.poll()}\n{proc.log_tail()}"
            )
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def sim_ready(control: int, timeout: float = 15, *, proc: Proc | None = None) -> dict:
    """Wait until the simulator answers on its control port; its first snapshot.
    AssertionError after `timeout` s, or at once if `proc` exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await send_command(control, {"cmd": "snapshot"})
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(
                    f"the simulator exited with {proc.poll()}\n{proc.log_tail()}"
                ) from None
            if loop.time() >= deadline:
                raise AssertionError(
                    f"the simulator's control port {control} did not answer in {timeout} s"
                ) from None
            await asyncio.sleep(0.1)
