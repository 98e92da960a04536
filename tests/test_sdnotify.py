"""sd_notify against a real AF_UNIX datagram socket, as systemd listens (path and abstract)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from agent.sdnotify import Notifier, socket_address, watchdog_interval_s


def _listener(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(socket_address(name))
    sock.settimeout(5)
    return sock


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """(NOTIFY_SOCKET value, the bound receiving socket)."""
    if request.param == "path":
        name = str(tmp_path / "notify.sock")
    else:
        name = f"@evedge-test-{uuid.uuid4().hex}"
    sock = _listener(name)
    yield name, sock
    sock.close()


def _messages(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))


def test_ready_status_watchdog_stopping_arrive_in_order(notify_socket):
    name, sock = notify_socket
    n = Notifier(name, watchdog_interval_s=5)
    assert n.ready("running: 2 devices")
    assert n.status("stuck: poller lan")
    assert n.watchdog()
    assert n.stopping("stopping")
    n.close()
    assert _messages(sock) == {"READY": "1", "STATUS": "running: 2 devices"}
    assert _messages(sock) == {"STATUS": "stuck: poller lan"}
    assert _messages(sock) == {"WATCHDOG": "1"}
    assert _messages(sock) == {"STOPPING": "1", "STATUS": "stopping"}


def test_from_env_reads_socket_and_watchdog(notify_socket, monkeypatch):
    name, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.enabled and n.watchdog_interval_s == 1.5
    assert n.ready()
    assert _messages(sock) == {"READY": "1"}


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    n = Notifier.from_env()
    assert not n.enabled
    assert n.watchdog_interval_s is None  # no pings without somewhere to send them
    assert not n.ready("x")
    assert not n.watchdog()
    assert not n.stopping()


def test_a_missing_socket_is_reported_not_raised(tmp_path):
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert not n.ready()
    assert not n.watchdog()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env, expected):
    assert watchdog_interval_s(env) == expected


def test_abstract_names_get_a_leading_nul():
    assert socket_address("@systemd/notify") == b"\0systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
