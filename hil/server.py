"""Modbus servers for the simulated devices: TCP per (host, port), RTU per serial bus.

Each server routes requests by unit id to a device's register image and applies the
communication faults: exceptions in the data context, silence / delay / mangled bytes in
the request handler, which sees the request, the response and the device together.
Optional baud-accurate timing makes an RTU answer take as long as it would on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from hil import faults as F
from hil.image import READ_FC, WRITE_FC, DeviceImage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- wire timing


def char_bits(bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits one character really takes on the line: start, data, parity, stop.

    Modbus over Serial Line (V1.02, §2.5.1) asks for 11-bit characters (8E1 or 8N2), but
    most meters ship configured 8N1, which sends 10; the link is simulated as configured.
    """
    return 1 + bytesize + (parity != "N") + stopbits


def frame_gap_s(baudrate: int, bits: int = 10) -> float:
    """The 3.5-character silence that ends an RTU frame (fixed 1.75 ms above 19200 baud)."""
    return 3.5 * bits / baudrate if baudrate <= 19200 else 0.00175


def wire_time_s(request_bytes: int, response_bytes: int, baudrate: int, bits: int = 10) -> float:
    """Time on an RTU line for one request and its response, with one inter-frame gap."""
    return (request_bytes + response_bytes) * bits / baudrate + frame_gap_s(baudrate, bits)


# ------------------------------------------------------------------------ the routing


@dataclass
class ServedDevice:
    """A device as one server sees it: name, unit id, register image."""

    name: str
    unit: int
    image: DeviceImage


FaultLookup = Callable[[str], list[F.ActiveFault]]
# Per answer to a device: (lose it, extra delay in s) — the station's realistic noise.
AnswerNoise = Callable[[str], tuple[bool, float]]


class RoutingContext(ModbusServerContext):
    """Routes requests by unit id to device images and answers injected exceptions.

    It subclasses ModbusServerContext only because pymodbus 3.16 wraps any other context
    in its own SimCore; with `old_simulator` set, the server calls our async_getValues /
    async_setValues / device_ids directly. (The base __init__ is not called: it expects
    pymodbus datastores.)
    """

    def __init__(
        self,
        devices: list[ServedDevice],
        faults: FaultLookup,
        rtu: bool,
        noise: AnswerNoise | None = None,
    ):
        self.old_simulator = True  # makes ModbusBaseServer use this object as is
        self.simdevices = []
        self.devices = {d.unit: d for d in devices}
        self.faults = faults
        self.rtu = rtu
        self.noise = noise

    def device_ids(self) -> list[int]:
        """Unit ids served."""
        return list(self.devices)

    def device(self, unit: int) -> ServedDevice | None:
        """The device served at `unit`, or None."""
        return self.devices.get(unit)

    def _lookup(self, unit: int) -> ServedDevice | ExcCodes:
        dev = self.devices.get(unit)
        if dev is not None:
            return dev
        if self.rtu:
            # An RS-485 slave ignores frames for other units: no answer at all.
            raise NoSuchIdException(f"no unit {unit} on this bus")
        # On TCP the unit id selects a device behind the endpoint, as a gateway does:
        # 0x0B GATEWAY TARGET DEVICE FAILED TO RESPOND.
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _injected(self, dev: ServedDevice, table: str, address: int, count: int) -> ExcCodes | None:
        for fault in self.faults(dev.name):
            req = fault.request
            if req.kind == "exception" and req.hits(table, address, count):
                return ExcCodes(req.code)
        return None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Serve a read (FC1-4), or the read-back pymodbus does after FC5/6."""
        dev = self._lookup(device_id)
        if isinstance(dev, ExcCodes):
            return dev
        if func_code in WRITE_FC:
            # Echo of a single write: return what was just stored, no checks.
            return dev.image.peek(WRITE_FC[func_code], address, count)
        table = READ_FC.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        rc = self._injected(dev, table, address, count)
        return rc if rc is not None else dev.image.read(func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        """Serve a write (FC5/6/15/16)."""
        dev = self._lookup(device_id)
        if isinstance(dev, ExcCodes):
            return dev
        table = WRITE_FC.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        rc = self._injected(dev, table, address, len(values))
        return rc if rc is not None else dev.image.write(func_code, address, list(values))


# ---------------------------------------------------------------- request handling


@dataclass
class ResponsePlan:
    """How one response goes out: not at all, later, or mangled."""

    silent: bool = False
    delay_s: float = 0.0
    mangle: Callable[[bytes], bytes] | None = None


class _SimRequestHandler(ServerRequestHandler):
    """pymodbus' request handler, with the simulator's fault and timing hooks.

    It mirrors ServerRequestHandler.handle_request (pymodbus 3.16) but takes the request
    at entry — a delayed answer must not pick up the next request's transaction id — and
    sends the frame itself so it can be delayed, dropped or mangled per device.
    """

    async def handle_request(self) -> None:
        """Answer the request just framed: fault plan, datastore, wire delay, send."""
        request, addr = self.last_pdu, self.last_addr
        if request is None:
            return
        started = self.loop.time()
        server: _SimServerMixin = self.server  # type: ignore[assignment]
        plan = server.plan(request.dev_id)
        if plan.silent:
            return
        try:
            response = await request.datastore_update(server.context, request.dev_id)
        except NoSuchIdException:
            return  # unknown unit on RTU: silence, like a real slave
        except Exception:  # a bug in the image must not kill the server: device failure
            log.exception("simulated device failed on %s", request)
            response = ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        frame = self.framer.buildFrame(response)
        delay = plan.delay_s + server.wire_delay(request, frame, self)
        remaining = delay - (self.loop.time() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if plan.mangle is not None:
            frame = plan.mangle(frame)
        if self.transport:
            self.low_level_send(self.trace_packet(True, frame), addr=addr)


class _SimServerMixin:
    """What the RTU and TCP servers share: the routing context and the response plan."""

    context: RoutingContext
    rtu: bool
    wire_timing: bool
    baudrate: int
    bits: int
    rng: random.Random

    def callback_new_connection(self) -> ServerRequestHandler:
        """pymodbus hook: a handler for a new connection (or the serial line)."""
        return _SimRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[attr-defined]

    def plan(self, unit: int) -> ResponsePlan:
        """Collect the communication faults of the addressed device into one plan."""
        dev = self.context.device(unit)
        plan = ResponsePlan()
        if dev is None:
            return plan
        if self.context.noise is not None:
            plan.silent, plan.delay_s = self.context.noise(dev.name)
        for fault in self.context.faults(dev.name):
            kind = fault.kind
            if kind == "no_response":
                plan.silent = True
            elif kind == "slow":
                plan.delay_s += fault.request.delay_s
            elif kind == "garbage":
                plan.mangle = lambda b: F.garbage_frame(b, self.rng, self.rtu)
            elif kind == "truncated" and plan.mangle is None:
                plan.mangle = F.truncate_frame
            elif kind == "crc_error" and plan.mangle is None:
                plan.mangle = F.corrupt_crc
        return plan

    def wire_delay(self, request: ModbusPDU, response_frame: bytes, handler) -> float:
        """Baud-accurate time for request + response on an RTU line (0 if off)."""
        if not (self.rtu and self.wire_timing):
            return 0.0
        request_bytes = len(handler.framer.buildFrame(request))
        return wire_time_s(request_bytes, len(response_frame), self.baudrate, self.bits)


class SimTcpServer(_SimServerMixin, ModbusTcpServer):
    """A Modbus TCP endpoint serving several simulated devices by unit id."""

    def __init__(self, context: RoutingContext, host: str, port: int, seed: int = 0):
        super().__init__(context, address=(host, port), ignore_missing_devices=True)
        self.rtu = False
        self.wire_timing = False
        self.baudrate = 0
        self.bits = 11
        self.rng = random.Random(seed)


class SimRtuServer(_SimServerMixin, ModbusSerialServer):
    """A Modbus RTU slave set on one serial port: every device of the bus, by unit id."""

    def __init__(
        self,
        context: RoutingContext,
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        wire_timing: bool = False,
        seed: int = 0,
    ):
        super().__init__(
            context,
            framer=FramerType.RTU,
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            ignore_missing_devices=True,
        )
        self.rtu = True
        self.wire_timing = wire_timing
        self.baudrate = baudrate
        self.bits = char_bits(bytesize, parity, stopbits)
        self.rng = random.Random(seed)


class ListenError(RuntimeError):
    """A simulated device cannot listen where the config puts it (port taken, bad path)."""


async def start_server(server: ModbusTcpServer | ModbusSerialServer, where: str) -> None:
    """Start listening in the background; RuntimeError naming `where` if it can't."""
    try:
        await server.serve_forever(background=True)
    except RuntimeError as e:
        raise ListenError(f"simulator cannot listen on {where}: {e}") from None
