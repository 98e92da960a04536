"""Drive a running simulator from another process: JSON lines over TCP on 127.0.0.1.

One request per line, one reply per line:

    {"cmd": "plug_in", "connector": 1, "ev_max_current_a": 16, "phases": 1}
    {"cmd": "unplug", "connector": 1}
    {"cmd": "suspend", "connector": 1, "suspended": true}
    {"cmd": "inject", "fault": {"kind": "no_response", "device": "meter1"}}
    {"cmd": "clear", "id": "f1"}          (no id, or "all": every fault)
    {"cmd": "snapshot"}
    {"cmd": "list_faults"}

Replies are {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.config import StationConfig
from hil import faults as F
from hil.serial_pair import SerialPair
from hil.station import SimError, SimStation

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlugIn(_Cmd):
    """A car arrives at `connector`."""

    cmd: Literal["plug_in"]
    connector: int
    ev_max_current_a: float | None = Field(default=None, gt=0, le=100)
    phases: Literal[1, 3] | None = None


class Unplug(_Cmd):
    """The car at `connector` leaves."""

    cmd: Literal["unplug"]
    connector: int


class Suspend(_Cmd):
    """The car pauses (suspended=true) or resumes charging."""

    cmd: Literal["suspend"]
    connector: int
    suspended: bool = True


class Inject(_Cmd):
    """Inject a fault (see hil.faults for the kinds and parameters)."""

    cmd: Literal["inject"]
    fault: F.FaultRequest


class Clear(_Cmd):
    """Clear one fault by id, or all (no id, or 'all')."""

    cmd: Literal["clear"]
    id: str | None = Field(default=None, description="fault id; none or 'all' clears all")


class Snapshot(_Cmd):
    """Every device's values, every connector's state, the active faults."""

    cmd: Literal["snapshot"]


class ListFaults(_Cmd):
    """The active faults and every injectable kind with what it does."""

    cmd: Literal["list_faults"]


Command = Annotated[
    PlugIn | Unplug | Suspend | Inject | Clear | Snapshot | ListFaults,
    Field(discriminator="cmd"),
]
_COMMANDS: TypeAdapter[Any] = TypeAdapter(Command)
COMMAND_NAMES = ("plug_in", "unplug", "suspend", "inject", "clear", "snapshot", "list_faults")


def parse_command(data: Any) -> Any:
    """Validate one control request; ValueError with a readable message if it is wrong."""
    if not isinstance(data, dict):
        raise ValueError('a request is a JSON object like {"cmd": "snapshot"}')
    try:
        return _COMMANDS.validate_python(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] in COMMAND_NAMES:
                loc = loc[1:]  # the union tag pydantic puts first
            if len(loc) >= 2 and loc[0] == "fault" and loc[1] in F.FAULT_DOCS:
                loc = [loc[0], *loc[2:]]
            path = ".".join(loc) or "(request)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "union_tag_invalid":
                tag = err["input"].get("cmd" if path == "(request)" else "kind")
                known = COMMAND_NAMES if path == "(request)" else tuple(F.FAULT_DOCS)
                what = "command" if path == "(request)" else "fault kind"
                msg = f"unknown {what} {tag!r}; known: {', '.join(known)}"
            elif err["type"] == "union_tag_not_found":
                field = "cmd" if path == "(request)" else "kind"
                msg = f"{field!r} is required"
            elif err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required"
            lines.append(f"{path}: {msg}")
        raise ValueError("; ".join(lines)) from None


def execute(station: SimStation, command: Any) -> Any:
    """Carry out a validated command on the station; returns the reply's result."""
    match command:
        case PlugIn():
            station.plug_in(command.connector, command.ev_max_current_a, command.phases)
            return {"connector": command.connector, "cp_state": _cp(station, command.connector)}
        case Unplug():
            station.unplug(command.connector)
            return {"connector": command.connector, "cp_state": _cp(station, command.connector)}
        case Suspend():
            station.ev_suspend(command.connector, command.suspended)
            return {"connector": command.connector, "cp_state": _cp(station, command.connector)}
        case Inject():
            return {"id": station.inject(command.fault)}
        case Clear():
            return {"cleared": station.clear(command.id)}
        case Snapshot():
            return station.snapshot()
        case ListFaults():
            return {
                "active": [f.describe() for f in station.faults.active()],
                "kinds": F.FAULT_DOCS,
            }
    raise ValueError(f"unhandled command {command!r}")


def _cp(station: SimStation, cid: int) -> str:
    return station.connectors[cid].evse.cp_state


def handle_line(station: SimStation, line: bytes | str) -> dict[str, Any]:
    """One request line in, one reply object out; never raises for bad input."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return {"ok": False, "error": f"request is not valid JSON: {e}"}
    try:
        return {"ok": True, "result": execute(station, parse_command(data))}
    except (SimError, F.FaultError, ValueError) as e:
        return {"ok": False, "error": str(e)}
    except Exception as e:  # a simulator bug: answer, log, keep serving
        log.exception("control request %r failed", data)
        return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}


class ControlServer:
    """The control port of a running simulator (127.0.0.1 only: it injects faults)."""

    def __init__(self, station: SimStation, port: int, host: str = "127.0.0.1"):
        self.station = station
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; with port 0 the chosen port is in `.port` afterwards."""
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, limit=MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close the server."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE
                    reply = {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
                    writer.write(json.dumps(reply).encode() + b"\n")
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                reply = handle_line(self.station, line)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def send_command(
    port: int, command: dict[str, Any], host: str = "127.0.0.1", timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one command to a simulator's control port; returns its reply
    ({"ok": true, "result": ...} or {"ok": false, "error": ...})."""

    async def _exchange() -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(host, port, limit=16 * MAX_LINE)
        try:
            writer.write(json.dumps(command).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if not line:
            raise ConnectionError(f"simulator on {host}:{port} closed without a reply")
        return json.loads(line)

    return await asyncio.wait_for(_exchange(), timeout_s)


async def run_sim(
    cfg: StationConfig,
    *,
    serial_ports: dict[str, str] | None = None,
    wire_timing: bool = False,
    seed: int = 0,
    control_port: int | None = None,
    on_ready: Callable[[SimStation, ControlServer], None] | None = None,
) -> None:
    """Run the simulated station and its control port until cancelled.

    Every rtu bus without an entry in `serial_ports` gets a SerialPair whose agent end is
    linked at the bus's configured port (e.g. port = "/tmp/evedge-rs485" in the config),
    so an agent started with the same config finds the simulator there. `control_port`
    defaults to cfg.sim.control_port. `on_ready(station, control)` is called once both
    are serving.
    """
    ports = dict(serial_ports or {})
    pairs: list[SerialPair] = []
    station: SimStation | None = None
    control: ControlServer | None = None
    try:
        for bus in cfg.bus:
            if bus.kind == "rtu" and bus.name not in ports:
                pair = SerialPair(agent_link=bus.port)
                _, sim_end = pair.start()
                pairs.append(pair)
                ports[bus.name] = sim_end
                log.info("bus %s: agent end at %s", bus.name, bus.port)
        station = SimStation(cfg, ports, wire_timing=wire_timing, seed=seed)
        await station.start()
        port = cfg.sim.control_port if control_port is None else control_port
        control = ControlServer(station, port)
        await control.start()
        if on_ready is not None:
            on_ready(station, control)
        await asyncio.Event().wait()  # until cancelled
    finally:
        if control is not None:
            await control.stop()
        if station is not None:
            await station.stop()
        for pair in pairs:
            pair.stop()
