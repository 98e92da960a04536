"""Shared fixtures of the Modbus integration tests: free ports, a socat pair, station configs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from leftovers import leftovers, mark_run

from agent.config import StationConfig, parse_config
from hil.procs import free_port  # noqa: F401  (tests import it from here)
from hil.serial_pair import SerialPair


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def station_config(
    *devices: dict,
    rtu_port: str | None = None,
    baudrate: int = 38400,
    timeout_s: float = 0.2,
    retries: int = 0,
    connectors: tuple[dict, ...] = (),
    extra: str = "",
) -> StationConfig:
    """A validated station config.

    Each device is a dict of [[device]] keys (name, profile, unit, ...); one with a `port`
    is served over TCP on 127.0.0.1, one without sits on the rtu bus `rs485` (`rtu_port`).
    """
    lines = [
        '[station]\nid = "TEST"',
        f'[[bus]]\nname = "lan"\nkind = "tcp"\ntimeout_s = {timeout_s}\nretries = {retries}',
    ]
    if rtu_port is not None:
        lines.append(
            f'[[bus]]\nname = "rs485"\nkind = "rtu"\nport = "{rtu_port}"\n'
            f"baudrate = {baudrate}\ntimeout_s = {timeout_s}\nretries = {retries}"
        )
    for d in devices:
        d = dict(d)
        if "port" in d:
            d.setdefault("bus", "lan")
            d.setdefault("host", "127.0.0.1")
        else:
            d.setdefault("bus", "rs485")
        body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in d.items())
        lines.append(f"[[device]]\n{body}")
    for c in connectors:
        body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in c.items())
        lines.append(f"[[connector]]\n{body}")
    return parse_config("\n\n".join(lines) + "\n" + extra)


@pytest.fixture
def broker(tmp_path):
    """A running mosquitto with persistent sessions (tests/mqtt_helpers.py `Broker`)."""
    from mqtt_helpers import Broker  # paho and cryptography: only for the tests that use it

    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def serial_pair():
    """A running socat null-modem pair: (agent_end, sim_end); the pair object is attached."""
    pair = SerialPair()
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A short directory in /tmp everyone may enter, for Unix sockets (a socket path is at
    most 107 bytes, pytest's tmp_path can be longer; an unprivileged peer must reach it)."""
    d = Path(tempfile.mkdtemp(prefix="evapi-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sockdir():
    """`short_tmpdir()` for one test."""
    with short_tmpdir() as d:
        yield d


_RUN_TAG = mark_run()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a process a test started outlives the run (and stop it)."""
    left = leftovers(_RUN_TAG)
    if left:
        lines = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items()))
        print(f"\nerror: {len(left)} process(es) started by the tests outlived them:\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
