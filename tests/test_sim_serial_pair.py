"""SerialPair: a socat null-modem cable, usable with `with` and `async with`."""

from __future__ import annotations

import os
import time

import pytest

from hil import serial_pair
from hil.serial_pair import SerialPair, SerialPairError


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_bytes_cross_and_socat_stops():
    pair = SerialPair()
    with pair as (agent_end, sim_end):
        pid = pair._proc.pid
        a = os.open(agent_end, os.O_RDWR | os.O_NOCTTY)
        b = os.open(sim_end, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(a, b"\x01\x04\x00\x00\x00\x02")
            deadline = time.monotonic() + 2
            got = b""
            while len(got) < 6 and time.monotonic() < deadline:
                got += os.read(b, 64)
            assert got == b"\x01\x04\x00\x00\x00\x02"
        finally:
            os.close(a)
            os.close(b)
    assert not os.path.exists(agent_end)
    assert not _pid_alive(pid)


async def test_async_and_chosen_link(tmp_path):
    link = tmp_path / "ttyAGENT"
    async with SerialPair(agent_link=link) as (agent_end, _):
        assert agent_end == str(link)
        assert os.readlink(link).startswith("/dev/pts/")
    assert not link.exists()


def test_existing_file_is_not_replaced(tmp_path):
    taken = tmp_path / "ttyUSB0"
    taken.write_text("a real device, say")
    with pytest.raises(SerialPairError, match="refusing to replace"):
        SerialPair(agent_link=taken).start()
    assert taken.read_text() == "a real device, say"


def test_missing_socat_says_how_to_install(monkeypatch):
    monkeypatch.setattr(serial_pair.shutil, "which", lambda name: None)
    monkeypatch.setattr(serial_pair.os, "access", lambda path, mode: False)
    with pytest.raises(SerialPairError, match=r"install socat: apt-get install socat"):
        SerialPair().start()
