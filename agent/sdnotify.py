"""sd_notify: tell systemd the service is ready, alive, or stopping (no library needed).

The protocol is one datagram of newline-separated `KEY=value` lines sent to the AF_UNIX
socket named in $NOTIFY_SOCKET; a name starting with "@" is in the abstract namespace.
Without $NOTIFY_SOCKET (not run by systemd, or Type= is not notify) every call is a no-op.

    notifier = Notifier.from_env()
    notifier.ready("polling 2 devices")   # READY=1 + STATUS=
    notifier.watchdog()                   # WATCHDOG=1, every notifier.watchdog_interval_s
    notifier.stopping()                   # STOPPING=1
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)

# A notify datagram must never stall the event loop: systemd reads its socket promptly,
# so a send that cannot complete within this time is dropped with a warning.
SEND_TIMEOUT_S = 1.0


def socket_address(name: str) -> str | bytes:
    """The sendto() address of $NOTIFY_SOCKET: "@name" is abstract (a leading NUL byte)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval_s(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Half of $WATCHDOG_USEC in seconds (systemd's advice for the ping period), or None.

    None when the watchdog is off, its value is malformed, or $WATCHDOG_PID names another
    process (the variables were inherited, not meant for us).
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """Sends sd_notify messages to one socket; a no-op without one."""

    def __init__(self, address: str | None, watchdog_interval_s: float | None = None):
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s if address else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls) -> Notifier:
        """The notifier systemd asked for through $NOTIFY_SOCKET and $WATCHDOG_USEC."""
        return cls(os.environ.get("NOTIFY_SOCKET") or None, watchdog_interval_s(os.environ))

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere."""
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send one message of KEY=value lines; False if it could not be delivered."""
        if self.address is None:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto(message, socket_address(self.address))
        except OSError as e:
            # Once per run: a lost ping is the watchdog's business, not a reason to crash.
            if not self._warned:
                log.warning("sdnotify.send_failed", socket=self.address, error=str(e))
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished (READY=1), with an optional status line."""
        return self.send(READY="1", **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Still alive (WATCHDOG=1)."""
        return self.send(WATCHDOG="1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (STOPPING=1)."""
        return self.send(STOPPING="1", **({"STATUS": status} if status else {}))

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
