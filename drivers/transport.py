"""Modbus links: one pymodbus client per TCP endpoint or serial port, one request at a time.

A link classifies every failure so device health can tell a silent device (timeout) from
a noisy line (bytes arrived but no valid frame: CRC, framing, garbage) from a device that
refuses the request (Modbus exception code) from a link that is down (port gone, refused).
Retries are the poller's job, so each failed attempt is counted; pymodbus is run with
retries=0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from drivers.profile import Function

# pymodbus logs every failure at ERROR on its own; evedge logs them once, with context.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

FailureKind = Literal["timeout", "bad_frame", "exception", "disconnected"]


class ModbusFailure(Exception):
    """A request failed; `kind` says how, `code` is the Modbus exception code if any."""

    def __init__(self, kind: FailureKind, message: str, code: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.code = code


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


@dataclass(frozen=True)
class SerialSettings:
    """RS-485 line settings."""

    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8

    def char_time_s(self) -> float:
        """Time of one character on the wire: start + data + parity + stop bits."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def frame_gap_s(self) -> float:
        """The 3.5-character silence that ends an RTU frame (1.75 ms fixed above 19200 baud)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time_s()


@dataclass(frozen=True)
class TcpSettings:
    host: str
    port: int = 502


class Link:
    """One Modbus connection (TCP endpoint or serial port) shared by the devices on it."""

    def __init__(
        self,
        settings: SerialSettings | TcpSettings,
        timeout_s: float = 1.0,
        inter_request_delay_s: float | None = None,
        name: str = "",
    ):
        self.settings = settings
        self.timeout_s = timeout_s
        self.name = name or describe(settings)
        if inter_request_delay_s is None:
            inter_request_delay_s = (
                settings.frame_gap_s() if isinstance(settings, SerialSettings) else 0.0
            )
        self.inter_request_delay_s = inter_request_delay_s
        self._lock = asyncio.Lock()
        self._rx_bytes = 0
        self._tx_tid = b""
        self._last_done = 0.0
        self.requests = 0
        if isinstance(settings, SerialSettings):
            self.client: AsyncModbusSerialClient | AsyncModbusTcpClient = AsyncModbusSerialClient(
                settings.port,
                framer=FramerType.RTU,
                baudrate=settings.baudrate,
                parity=settings.parity,
                stopbits=settings.stopbits,
                bytesize=settings.bytesize,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        else:
            self.client = AsyncModbusTcpClient(
                settings.host,
                port=settings.port,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._tx_tid = data[:2]
        else:
            self._rx_bytes = len(data) - self._stale_tcp_bytes(data)
        return data

    def _stale_tcp_bytes(self, data: bytes) -> int:
        """Leading bytes that are whole answers to earlier requests: a slow device answering
        after its timeout. pymodbus skips them by transaction id; they are not line noise."""
        if not isinstance(self.settings, TcpSettings):
            return 0
        used = 0
        while len(data) - used >= 8:
            size = 6 + int.from_bytes(data[used + 4 : used + 6], "big")
            if (
                data[used + 2 : used + 4] != b"\0\0"  # protocol id: Modbus is 0
                or data[used : used + 2] == self._tx_tid
                or len(data) - used < size
            ):
                break
            used += size
        return used

    async def connect(self) -> None:
        """Open the connection if it is not open; ModbusFailure('disconnected') if it can't."""
        if self.client.connected:
            return
        try:
            ok = await self.client.connect()
        except (OSError, ModbusException) as e:
            raise ModbusFailure("disconnected", f"{self.name}: cannot open: {e}") from None
        if not ok:
            why = "cannot connect"
            if isinstance(self.settings, SerialSettings) and not os.path.exists(self.settings.port):
                why = f"cannot open: no serial port {self.settings.port} (adapter unplugged?)"
            raise ModbusFailure("disconnected", f"{self.name}: {why}")

    def close(self) -> None:
        """Close the connection (it reopens on the next request)."""
        self.client.close()

    async def _pace(self, extra_delay_s: float) -> None:
        # pymodbus sends back to back; RS-485 needs the frame gap, some devices need more.
        wait = self._last_done + max(self.inter_request_delay_s, extra_delay_s) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def read(
        self, function: Function, address: int, count: int, unit: int, delay_s: float = 0.0
    ) -> list[int] | list[bool]:
        """Read `count` registers (or bits) at `address` from device `unit`."""
        calls = {
            "input": self.client.read_input_registers,
            "holding": self.client.read_holding_registers,
            "coil": self.client.read_coils,
            "discrete": self.client.read_discrete_inputs,
        }
        rsp = await self._execute(
            calls[function],
            address,
            unit,
            delay_s,
            f"read {function} {address}+{count}",
            count=count,
        )
        if function in ("coil", "discrete"):
            return list(rsp.bits[:count])
        regs = list(rsp.registers)
        if len(regs) != count:
            raise ModbusFailure(
                "bad_frame", f"asked {count} registers at {address}, got {len(regs)}"
            )
        return regs

    async def write(
        self, function: Function, address: int, values: list[int], unit: int, delay_s: float = 0.0
    ) -> None:
        """Write registers (FC06/FC16) or a coil (FC05) of device `unit`."""
        what = f"write {function} {address}={values}"
        if function == "coil":
            await self._execute(
                self.client.write_coil, address, unit, delay_s, what, value=bool(values[0])
            )
        elif function == "holding" and len(values) == 1:
            await self._execute(
                self.client.write_register, address, unit, delay_s, what, value=values[0]
            )
        elif function == "holding":
            await self._execute(
                self.client.write_registers, address, unit, delay_s, what, values=values
            )
        else:
            raise ValueError(f"cannot write a {function} register")

    async def _execute(self, call, address: int, unit: int, delay_s: float, what: str, **kw):
        async with self._lock:
            cancels = _cancels()
            await self.connect()
            _raise_swallowed_cancel(cancels)
            await self._pace(delay_s)
            self._rx_bytes = 0
            self.requests += 1
            try:
                rsp = await call(address, device_id=unit, **kw)
            except ConnectionException as e:
                self.close()
                raise ModbusFailure(
                    "disconnected", f"{self.name}: {what}: link lost: {e}"
                ) from None
            except (TimeoutError, ModbusException) as e:
                if not self.client.connected:
                    self.close()
                if self._rx_bytes:
                    raise ModbusFailure(
                        "bad_frame",
                        f"{what}: {self._rx_bytes} bytes but no valid frame "
                        "(CRC/framing error or garbage)",
                    ) from None
                raise ModbusFailure(
                    "timeout", f"{what}: no response within {self.timeout_s} s"
                ) from e
            except OSError as e:
                self.close()
                raise ModbusFailure("disconnected", f"{self.name}: {what}: {e}") from None
            finally:
                self._last_done = time.monotonic()
            _raise_swallowed_cancel(cancels)
            if rsp.isError():
                code = getattr(rsp, "exception_code", None)
                name = EXCEPTION_NAMES.get(code, "unknown exception")
                raise ModbusFailure("exception", f"{what}: exception {code:02d} ({name})", code)
            return rsp


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_swallowed_cancel(before: int) -> None:
    """Re-raise a cancel pymodbus swallowed. Its asyncio.wait_for (Python 3.11) returns the
    answer instead of raising when the cancel lands as the answer arrives; the task would
    then poll on, and whoever awaits its end (the agent's stop) would hang. Only a cancel
    that came during the call counts: a task cleaning up after a cancel may still talk."""
    if _cancels() > before:
        raise asyncio.CancelledError


def describe(settings: SerialSettings | TcpSettings) -> str:
    """Short human name of a link, for logs: '/dev/ttyUSB0@9600 8N1' or 'tcp://host:502'."""
    if isinstance(settings, SerialSettings):
        s = settings
        return f"{s.port}@{s.baudrate} {s.bytesize}{s.parity}{s.stopbits}"
    return f"tcp://{settings.host}:{settings.port}"
