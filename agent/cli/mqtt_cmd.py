"""`evedge mqtt schemas|check`: the MQTT contract's JSON Schemas, and a broker connection test."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.logsetup import setup_logging
from agent.mqtt.config import MqttConfigError
from agent.mqtt.connection import Connection, Handlers
from agent.mqtt.schema import COMMITTED, render, schemas, write_schemas
from agent.mqtt.topics import Stream, Topics

app = typer.Typer(help="MQTT cloud sync: payload schemas, broker check.", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.command("schemas")
def schemas_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder to write the schemas to")] = COMMITTED,
    check: Annotated[
        bool, typer.Option("--check", help="compare with the files in --out, write nothing")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Generate the JSON Schema of every MQTT payload from its model (exit 1 with --check
    when the folder differs).

    Example: `evedge mqtt schemas --out docs/mqtt --check`"""
    if check:
        docs = schemas()
        stale = sorted(
            f
            for f, d in docs.items()
            if not (out / f).exists() or (out / f).read_text(encoding="utf-8") != render(d)
        )
        extra = sorted(p.name for p in out.glob("*.json") if p.name not in docs)
        if json:
            emit_json({"ok": not (stale or extra), "stale": stale, "unexpected": extra})
        else:
            for f in stale:
                console.print(f"[red]differs or missing[/]: {out / f}", highlight=False)
            for f in extra:
                console.print(f"[red]not generated[/]: {out / f}", highlight=False)
            if not (stale or extra):
                console.print(f"{len(docs)} schemas in {out} are up to date", highlight=False)
        if stale or extra:
            raise typer.Exit(int(Exit.CHECK_FAILED))
        return
    written = write_schemas(out)
    if json:
        emit_json({"ok": True, "out": str(out), "files": [p.name for p in written]})
    else:
        console.print(f"wrote {len(written)} schemas to {out}", highlight=False)


@app.command("check")
def check(
    config: ConfigOpt = DEFAULT_CONFIG,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the broker")] = 3.0,
    json: JsonOpt = False,
) -> None:
    """Connect to the configured broker once (TLS, credentials) and disconnect: exit 0 when
    it accepted us, 3 when it could not be reached or refused, 2 for a config problem.

    A broker that is down is one line at once (a TCP connect first), not retries.
    Example: `evedge mqtt check -c /etc/evedge/station.toml`"""
    cfg = load_or_exit(config)
    if cfg.mqtt is None:
        raise fail(f"{config}: no [mqtt] section", Exit.USAGE)
    setup_logging("critical")  # the client's reconnect lines: the verdict is the one line
    broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    try:
        socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout).close()
    except OSError as e:
        raise fail(
            f"broker {broker}: cannot connect: {e.strerror or e}", Exit.UNREACHABLE
        ) from None
    topics = Topics(cfg.mqtt.topic_prefix, cfg.station.id)
    up = threading.Event()
    # A separate client id: the check must not take over the running service's session.
    client_id = f"{cfg.mqtt.client_id or f'evedge-{cfg.station.id}'}-check"

    def on_up(_gen: int, client: Any) -> None:
        up.set()
        client.disconnect()

    try:
        conn = Connection(
            cfg.mqtt.model_copy(update={"session_expiry_s": 0}),
            client_id,
            f"{topics.base}/check",  # not the status topic: the service owns that
            topics.stream(Stream.STATUS) + "/check",
            Handlers(
                birth=lambda: (b"", b""),
                up=on_up,
                down=lambda _g: None,
                acked=lambda *_: None,
                message=lambda _m: None,
            ),
        )
    except MqttConfigError as e:
        raise fail(str(e), Exit.USAGE) from None
    conn.start()
    ok = up.wait(timeout)
    conn.stop(None)
    result = {
        "ok": ok,
        "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
        "protocol": cfg.mqtt.protocol,
        "tls": cfg.mqtt.tls,
        "mtls": cfg.mqtt.cert_file is not None,
        "error": None if ok else (conn.last_error or f"no answer within {timeout:g} s"),
    }
    if json:
        emit_json(result)
    elif ok:
        console.print(f"broker {result['broker']} accepted the connection", highlight=False)
    if not ok:
        raise fail(f"broker {result['broker']}: {result['error']}", Exit.UNREACHABLE)
