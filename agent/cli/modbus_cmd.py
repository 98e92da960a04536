"""`evedge modbus read|write|scan|raw`: profile-aware Modbus tools for the technician (like mbpoll).

A serial line has one master. While the service runs (its API answers, per --config) and
polls the line a command names with --serial, the direct command is refused: `read` and
`write` take `--device NAME` instead, which goes through the service.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agent.api.client import ApiError, Unreachable, call
from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.cli.meaning import with_meaning
from agent.cli.service import control
from agent.events import utcnow
from agent.logsetup import setup_logging
from drivers import quantities
from drivers.device import UNREACHABLE_CODES, CycleResult, Device, WriteVerifyError
from drivers.profile import Profile, ProfileError, load_profile, profile_names
from drivers.transport import Link, ModbusFailure, SerialSettings, TcpSettings, describe

app = typer.Typer(
    help="Read, write and scan Modbus devices, decoded by device profile.", no_args_is_help=True
)

TcpOpt = Annotated[str | None, typer.Option("--tcp", help="HOST:PORT of a Modbus TCP device")]
SerialOpt = Annotated[str | None, typer.Option("--serial", help="serial port, e.g. /dev/ttyUSB0")]
BaudOpt = Annotated[int, typer.Option("--baud", help="serial baud rate")]
ParityOpt = Annotated[str, typer.Option("--parity", help="N, E or O")]
StopOpt = Annotated[int, typer.Option("--stopbits")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds per request")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="station config: the service (--device), and whose line --serial is"
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="a device of the station config, through the running service"),
]
WatchOpt = Annotated[
    float | None,
    typer.Option("--watch", min=0.1, help="repeat every S seconds, changes highlighted"),
]
PollsOpt = Annotated[int | None, typer.Option("--polls", min=1, help="with --watch: stop after N")]
UnitOpt = Annotated[int | None, typer.Option("--unit", help="unit id (default: the profile's)")]


def _settings(
    tcp: str | None, serial: str | None, baud: int, parity: str, stopbits: int
) -> SerialSettings | TcpSettings:
    """The link settings the options give; exit 2 with a clear message if they are wrong.

    Only settings here: a pymodbus client needs a running event loop, so the Link itself
    is made inside asyncio.run().
    """
    if bool(tcp) == bool(serial):
        raise fail("give exactly one of --tcp HOST:PORT or --serial PORT", Exit.USAGE)
    if tcp:
        host, _, port = tcp.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise fail(f"--tcp wants HOST:PORT, got {tcp!r}", Exit.USAGE)
        return TcpSettings(host, int(port))
    if parity.upper() not in ("N", "E", "O"):
        raise fail(f"--parity must be N, E or O, got {parity!r}", Exit.USAGE)
    if stopbits not in (1, 2):
        raise fail(f"--stopbits must be 1 or 2, got {stopbits}", Exit.USAGE)
    assert serial is not None
    return SerialSettings(serial, baud, parity.upper(), stopbits)  # type: ignore[arg-type]


def _only_device(profile: str | None, tcp: str | None, serial: str | None) -> None:
    """Exit 2 when --device (through the service) comes with options of a direct access."""
    if profile or tcp or serial:
        raise fail("--device goes through the service: no --profile/--tcp/--serial", Exit.USAGE)


def _direct(
    config: Path,
    profile: str | None,
    unit: int | None,
    tcp: str | None,
    serial: str | None,
    baud: int,
    parity: str,
    stopbits: int,
    *,
    writes: str | None = None,
) -> tuple[Profile, SerialSettings | TcpSettings, int]:
    """The profile, link settings and unit id of a direct access (no service): exit 2 when
    one is missing or wrong, when the profile cannot write the quantity `writes`, or when the
    running service owns the line."""
    if profile is None:
        raise fail("give --device NAME, or --profile with --tcp/--serial", Exit.USAGE)
    try:
        prof = load_profile(profile)
        if writes is not None:
            prof.writable(writes)
    except ProfileError as e:
        raise fail(str(e), Exit.USAGE) from None
    settings = _settings(tcp, serial, baud, parity, stopbits)
    _refuse_if_service_owns(config, settings)
    return prof, settings, prof.default_unit if unit is None else unit


def _refuse_if_service_owns(config: Path, settings: SerialSettings | TcpSettings) -> None:
    """Exit 2 when the running service polls the serial line `settings` names: a second
    master on an RS-485 line garbles both. No station config, or no service: go ahead."""
    if not isinstance(settings, SerialSettings) or not config.exists():
        return
    cfg = load_or_exit(config)
    port = os.path.realpath(settings.port)
    buses = {b.name for b in cfg.bus if b.kind == "rtu" and os.path.realpath(b.port or "") == port}
    if not buses or cfg.api is None:
        return
    try:
        call(cfg.api.socket, "status", timeout_s=2.0)
    except Unreachable:
        return
    except ApiError:
        pass  # it answered (or its socket is there but not ours): the service runs
    devices = [d.name for d in cfg.device if d.bus in buses]
    raise fail(
        f"the running service polls {settings.port} (bus {', '.join(sorted(buses))}: "
        f"{', '.join(devices)}); a second master on the line would garble both. Go through "
        f"the service: `evedge modbus read --device {devices[0] if devices else 'NAME'}` "
        f"(or `modbus write --device`), or stop the service first",
        Exit.USAGE,
        "line_busy",
    )


@app.command("read")
def read(
    device_name: DeviceOpt = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help=f"one of: {', '.join(profile_names())}")
    ] = None,
    unit: UnitOpt = None,
    tcp: TcpOpt = None,
    serial: SerialOpt = None,
    baud: BaudOpt = 9600,
    parity: ParityOpt = "N",
    stopbits: StopOpt = 1,
    timeout: TimeoutOpt = 1.0,
    watch: WatchOpt = None,
    polls: PollsOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Read every quantity of a device and print it decoded: with --device, the service's
    newest readings (it owns the bus); else directly with --profile and --tcp/--serial.

    Example: `evedge modbus read --profile eastron-sdm630 --tcp 127.0.0.1:15021 --watch 1`
    (repeats every second, changed values highlighted; Ctrl-C stops)."""
    if device_name is not None:
        _only_device(profile, tcp, serial)
        res = control(load_or_exit(config), "readings", device=device_name)
        _print_service_readings(device_name, res["readings"], json)
        return
    prof, settings, unit_id = _direct(config, profile, unit, tcp, serial, baud, parity, stopbits)
    previous: dict[str, Any] | None = None
    for n in itertools.count(1):
        previous = _read_once(prof, settings, unit_id, timeout, json, previous)
        if watch is None or (polls is not None and n >= polls):
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


def _read_once(prof, settings, unit_id: int, timeout: float, json: bool, previous):
    """One direct read of every quantity, printed (changes since `previous` highlighted);
    returns the values. Exits 3 when nothing answered, 1 when some reads failed."""

    async def go() -> tuple[Device, CycleResult, CycleResult]:
        device = Device("cli", prof, Link(settings, timeout_s=timeout), unit_id)
        try:
            ident = await device.read_identity()
            cycle = await device.read_cycle() if not ident.aborted else ident
            return device, ident, cycle
        finally:
            device.link.close()

    try:
        device, ident, cycle = asyncio.run(go())
    except ModbusFailure as e:
        raise fail(str(e), Exit.UNREACHABLE) from None
    link = device.link
    values = {**ident.values, **cycle.values}
    failures = [str(f) for f in ident.failures + cycle.failures]
    if json:
        emit_json(
            {
                "profile": prof.name,
                "link": link.name,
                "unit": device.unit,
                "values": {
                    q: {"value": v, "unit": quantities.get(q).unit} for q, v in values.items()
                },
                "failures": failures,
                "requests": link.requests,
                "latency_ms": round(cycle.latency_s * 1000, 1),
            }
        )
    elif values or not cycle.aborted:
        _print_values(prof, device, link, values, failures, cycle, previous)
    if cycle.aborted:
        last = cycle.failures[-1] if cycle.failures else "no answer"
        raise fail(f"read nothing from unit {device.unit} on {link.name}: {last}", Exit.UNREACHABLE)
    if failures:
        raise typer.Exit(int(Exit.CHECK_FAILED))
    return values


def _print_service_readings(device: str, readings: list[dict[str, Any]], json: bool) -> None:
    """The service's newest reading of each quantity of `device`; exit 1 if it has none."""
    now = utcnow()
    if json:
        values = {
            r["quantity"]: {k: r.get(k) for k in ("value", "unit", "quality", "ts")}
            for r in readings
        }
        emit_json({"device": device, "source": "service", "values": values})
    else:
        table = Table(title=f"{device} — newest readings of the running service")
        for col in ("quantity", "value", "unit", "quality", "age"):
            table.add_column(col, justify="right" if col in ("value", "age") else "left")
        for r in readings:
            age = (now - datetime.fromisoformat(r["ts"])).total_seconds()
            shown = "n/a" if r["value"] is None else str(r["value"])
            table.add_row(r["quantity"], shown, r["unit"], r["quality"], f"{age:.1f} s")
        console.print(table)
    if not readings:
        raise fail(f"the service has no readings of {device} yet", Exit.CHECK_FAILED)


def _print_values(
    prof, device: Device, link: Link, values, failures, cycle: CycleResult, previous=None
) -> None:
    table = Table(title=f"{prof.manufacturer} {prof.model} — unit {device.unit} on {link.name}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("register", style="dim")
    for reg in prof.readable():
        if reg.quantity not in values:
            continue
        v = values[reg.quantity]
        shown = "n/a" if v is None else with_meaning(prof, reg.quantity, v)
        changed = previous is not None and previous.get(reg.quantity) != v
        table.add_row(
            reg.quantity,
            Text(shown, style="bold reverse" if changed else ""),
            quantities.get(reg.quantity).unit,
            f"{reg.function} {reg.address} {reg.type}",
        )
    console.print(table)
    console.print(f"{link.requests} requests, {cycle.latency_s * 1000:.0f} ms")
    for f in failures:
        console.print(Text.assemble(("failed:", "red"), f" {f}"), highlight=False)


def parse_value(text: str) -> bool | int | float | str:
    """A value from the command line: true/false, an integer, a decimal, else text."""
    low = text.strip().lower()
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@app.command("write")
def write(
    quantity: Annotated[str, typer.Argument(help="quantity to write, e.g. offered_current_a")],
    value: Annotated[str, typer.Argument(help="a number, true/false, or text")],
    device: DeviceOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    profile: Annotated[
        str | None, typer.Option("--profile", help="device profile (direct write)")
    ] = None,
    unit: UnitOpt = None,
    tcp: TcpOpt = None,
    serial: SerialOpt = None,
    baud: BaudOpt = 9600,
    parity: ParityOpt = "N",
    stopbits: StopOpt = 1,
    timeout: TimeoutOpt = 1.0,
    json: JsonOpt = False,
) -> None:
    """Write one quantity and read it back. With --device, through the running service
    (it owns the bus); else directly with --profile and --tcp/--serial.

    Example: `evedge modbus write offered_current_a 16 --device evse1`"""
    setup_logging("warning")  # logs to stderr: stdout is the answer (or the JSON)
    parsed = parse_value(value)
    if device is not None:
        _only_device(profile, tcp, serial)
        res = control(load_or_exit(config), "write", device=device, quantity=quantity, value=parsed)
        where = f"{device} (through the service)"
        _written(json, where, quantity, res["written"], res["read_back"])
        return
    prof, settings, unit_id = _direct(
        config, profile, unit, tcp, serial, baud, parity, stopbits, writes=quantity
    )

    async def go():
        dev = Device("cli", prof, Link(settings, timeout_s=timeout), unit_id)
        try:
            return await dev.write(quantity, parsed)
        finally:
            dev.link.close()

    try:
        got = asyncio.run(go())
    except ModbusFailure as e:
        raise fail(str(e), Exit.UNREACHABLE) from None
    except WriteVerifyError as e:
        raise fail(str(e), Exit.CHECK_FAILED) from None
    except (ValueError, TypeError, OverflowError) as e:
        raise fail(f"{quantity}={value!r}: {e}", Exit.USAGE) from None
    _written(json, f"unit {unit_id} on {describe(settings)}", quantity, parsed, got)


def _written(json: bool, where: str, quantity: str, written, read_back) -> None:
    if json:
        emit_json(
            {"target": where, "quantity": quantity, "written": written, "read_back": read_back}
        )
    else:
        console.print(f"{where}: wrote {quantity} = {written}, read back {read_back}")


@app.command("scan")
def scan(
    tcp: TcpOpt = None,
    serial: SerialOpt = None,
    baud: BaudOpt = 9600,
    parity: ParityOpt = "N",
    stopbits: StopOpt = 1,
    timeout: TimeoutOpt = 0.2,
    first: Annotated[int, typer.Option("--from", help="first unit id")] = 1,
    last: Annotated[int, typer.Option("--to", help="last unit id")] = 247,
    address: Annotated[int, typer.Option("--address", help="register to probe")] = 0,
    function: Annotated[str, typer.Option("--function", help="input or holding")] = "holding",
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Find the unit ids that answer on a bus. An exception reply counts: the device is there.

    Refused on a serial line the running service polls (see `evedge status` for its devices).

    Example: `evedge modbus scan --serial /dev/ttyUSB0 --baud 9600 --from 1 --to 10`"""
    if not 0 <= first <= last <= 255:
        raise fail("unit ids must satisfy 0 <= --from <= --to <= 255", Exit.USAGE)
    if function not in ("input", "holding"):
        raise fail("--function must be input or holding", Exit.USAGE)
    settings = _settings(tcp, serial, baud, parity, stopbits)
    _refuse_if_service_owns(config, settings)
    name = describe(settings)
    found: list[dict] = []

    async def go() -> None:
        link = Link(settings, timeout_s=timeout)
        try:
            for unit in range(first, last + 1):
                try:
                    await link.read(function, address, 1, unit)  # type: ignore[arg-type]
                    found.append({"unit": unit, "reply": "data"})
                except ModbusFailure as e:
                    if e.kind == "exception" and e.code in UNREACHABLE_CODES:
                        continue  # a TCP gateway saying this unit did not answer
                    if e.kind == "exception":
                        found.append({"unit": unit, "reply": f"exception {e.code:02d}"})
                    elif e.kind == "disconnected":
                        raise
                    elif e.kind == "bad_frame":
                        found.append({"unit": unit, "reply": "garbled"})
        finally:
            link.close()

    with console.status(f"scanning units {first}..{last} on {name}", spinner="dots"):
        try:
            asyncio.run(go())
        except ModbusFailure as e:
            raise fail(str(e), Exit.UNREACHABLE) from None
    if json:
        emit_json({"link": name, "found": found})
    else:
        table = Table(title=f"units answering on {name}")
        table.add_column("unit", justify="right")
        table.add_column("reply")
        for f in found:
            table.add_row(str(f["unit"]), f["reply"])
        console.print(table if found else "no unit answered")
    if not found:
        raise typer.Exit(int(Exit.CHECK_FAILED))


@app.command("raw")
def raw(
    fc: Annotated[int, typer.Option("--fc", help="3: holding, 4: input registers")] = 3,
    address: Annotated[int, typer.Option("--address", min=0, max=0xFFFF, help="0-based")] = 0,
    count: Annotated[int, typer.Option("--count", min=1, max=60, help="how many values")] = 1,
    type_: Annotated[str, typer.Option("--type", help="u16, s16, u32, s32 or f32")] = "u16",
    order: Annotated[
        str, typer.Option("--order", help="bytes of a 32-bit value: abcd, cdab, badc or dcba")
    ] = "abcd",
    unit: Annotated[int, typer.Option("--unit", min=0, max=255, help="unit id")] = 1,
    profile: Annotated[
        str | None, typer.Option("--profile", help="name the values by this device profile")
    ] = None,
    watch: WatchOpt = None,
    polls: PollsOpt = None,
    tcp: TcpOpt = None,
    serial: SerialOpt = None,
    baud: BaudOpt = 9600,
    parity: ParityOpt = "N",
    stopbits: StopOpt = 1,
    timeout: TimeoutOpt = 1.0,
    config: ConfigOpt = DEFAULT_CONFIG,
    json: JsonOpt = False,
) -> None:
    """Read raw registers of any device and decode them, like mbpoll.

    Example: `evedge modbus raw --tcp 127.0.0.1:15021 --fc 4 --address 0 --count 3 --type f32`
    (an SDM630's three phase voltages); `--watch 1` repeats and highlights changes."""
    from agent.cli.modbus_raw import TYPES, raw_read

    if fc not in (3, 4):
        raise fail(f"--fc must be 3 (holding) or 4 (input registers), got {fc}", Exit.USAGE)
    if type_ not in TYPES:
        raise fail(f"--type must be one of {', '.join(TYPES)}, got {type_!r}", Exit.USAGE)
    if order not in ("abcd", "cdab", "badc", "dcba"):
        raise fail(f"--order must be abcd, cdab, badc or dcba, got {order!r}", Exit.USAGE)
    if address + count * TYPES[type_][1] > 0x10000:
        raise fail(
            f"--address {address} + --count {count} {type_} passes register 65535", Exit.USAGE
        )
    settings = _settings(tcp, serial, baud, parity, stopbits)
    _refuse_if_service_owns(config, settings)
    raw_read(settings, unit, fc, address, count, type_, order, profile, watch, polls, timeout, json)  # type: ignore[arg-type]
