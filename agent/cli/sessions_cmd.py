"""`evedge sessions [list | show ID]`: charging sessions and their records, from the store."""

from __future__ import annotations

import json as jsonlib
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from rich.text import Text

from agent.billing.pricing import CostResult
from agent.billing.tariff_cmd import _cost_table
from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail
from agent.cli.fmt import duration, when
from agent.cli.store_open import config_and_store
from agent.sessions.model import mask
from agent.sessions.store import SessionRow, SessionStore
from agent.sessions.times import from_us

app = typer.Typer(help="Charging sessions and their charge records.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


UtcOpt = Annotated[bool, typer.Option("--utc", help="times in UTC, not the station's zone")]


def _tz(cfg, utc: bool = False) -> ZoneInfo:
    return ZoneInfo("UTC" if utc or cfg.billing is None else cfg.billing.timezone)


def _summary(s: SessionRow, store: SessionStore) -> dict[str, Any]:
    rec = store.record_of(s.id) if s.state == "closed" else None
    body = rec.data if rec else {}
    cost = body.get("cost") or {}
    return {
        "session_id": s.id,
        "connector": s.connector,
        "state": s.state,
        "status": s.status,
        "start": from_us(s.started_ts).isoformat(),
        "end": None if s.ended_ts is None else from_us(s.ended_ts).isoformat(),
        "auth_method": s.auth_method,
        "id_token": mask(s.id_token),
        "energy_wh": body.get("energy_wh", s.billed_wh),
        "total_excl_vat": cost.get("total_excl_vat"),
        "total_incl_vat": cost.get("total_incl_vat"),
        "currency": cost.get("currency"),
        "stop_reason": s.stop_reason,
        "record_id": None if rec is None else rec.id,
        "review": bool(body.get("review", {}).get("required")),
    }


@app.callback(invoke_without_command=True)
def sessions(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest N sessions")] = 50,
    utc: UtcOpt = False,
    json: JsonOpt = False,
) -> None:
    """List sessions, newest first (same as `evedge sessions list`)."""
    if ctx.invoked_subcommand is None:
        list_sessions(config=config, limit=limit, utc=utc, json=json)


@app.command("list")
def list_sessions(
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest N sessions")] = 50,
    utc: UtcOpt = False,
    json: JsonOpt = False,
) -> None:
    """List sessions, newest first: energy, cost, stop reason, record (tokens masked).

    The session column shows the first 8 characters of the id: `sessions show` takes them.
    Example: `evedge sessions list --limit 10 --utc`"""
    cfg, store = config_and_store(config)
    with store:
        rows = [_summary(s, store) for s in store.sessions(limit=limit)]
    if json:
        emit_json(rows)
        return
    tz = _tz(cfg, utc)
    title = f"sessions of station {cfg.station.id} (newest {limit}; times {tz.key})"
    # No box, and long cells wrap (fold), never cut: an 80-column terminal shows everything.
    table = Table(title=title, box=None, header_style="bold underline")
    for col in ("session", "conn", "start", "duration", "token", "kWh", "total", "stop"):
        table.add_column(
            col,
            justify="right" if col in ("kWh", "total") else "left",
            no_wrap=col in ("session", "start", "duration"),
            overflow="fold",
        )
    for r in rows:
        start = from_us(0).fromisoformat(r["start"])
        end = r["end"] and from_us(0).fromisoformat(r["end"])
        dur = "running" if not end else duration((end - start).total_seconds())
        total = (
            "—"
            if r["total_incl_vat"] is None and r["total_excl_vat"] is None
            else (f"{r['total_incl_vat'] or r['total_excl_vat']} {r['currency']}")
        )
        stop = r["stop_reason"] or r["status"]
        if r["review"]:
            stop += " [yellow](review)[/]"
        table.add_row(
            r["session_id"][:8],
            str(r["connector"]),
            f"{start.astimezone(tz):%Y-%m-%d %H:%M}",
            dur,
            f"{r['id_token']} ({r['auth_method']})",
            f"{Decimal(r['energy_wh']).scaleb(-3):.3f}",
            total,
            stop,
        )
    console.print(table)


@app.command("show")
def show(
    session_id: Annotated[str, typer.Argument(help="session id (or a unique prefix)")],
    config: ConfigOpt = DEFAULT_CONFIG,
    utc: UtcOpt = False,
    json: JsonOpt = False,
) -> None:
    """One session: its record with cost breakdown, signed OCMF data, samples and events.

    Example: `evedge sessions show 0f3c9a52` (the id's first characters are enough)."""
    cfg, store = config_and_store(config)
    with store:
        s = store.session(session_id)
        if s is None:
            raise fail(f"no session {session_id!r} (or the prefix is not unique)", Exit.USAGE)
        rec = store.record_of(s.id)
        samples = store.samples(s.id)
        events = store.events(s.id)
    body = rec.data if rec else None
    if json:
        emit_json(
            {
                "session": _summary_row(s),
                "record": None
                if rec is None
                else {
                    "seq": rec.seq,
                    "id": rec.id,
                    "hash": rec.hash,
                    "prev_hash": rec.prev_hash,
                    "delivered": rec.delivered_ts is not None,
                    "body": body,
                },
                "samples": [vars(x) for x in samples],
                "events": [
                    {"ts": from_us(t).isoformat(), "status": st, "kind": k, "detail": d}
                    for t, st, k, d in events
                ],
            }
        )
        return
    tz = _tz(cfg, utc)
    console.print(f"[bold]session {s.id}[/] — connector {s.connector}, {s.state}, {s.status}")
    console.print(
        f"started {when(from_us(s.started_ts), tz)}, "
        f"authorized by {s.auth_method} ({mask(s.id_token)}), meter {s.meter_device} "
        f"(serial {s.meter_serial or '?'}), start register {s.start_wh:,} Wh",
        highlight=False,
    )
    if body is None:
        console.print(f"running: {s.billed_wh:,} Wh so far (no charge record yet)")
    else:
        _show_record(rec, body, tz)
    ev = Table(title="events")
    for col in (f"time ({tz.key})", "status", "event", "detail"):
        ev.add_column(col)
    for t, st, k, d in events:
        ev.add_row(when(from_us(t), tz, date=False), st, k, d)
    console.print(ev)
    console.print(f"{len(samples)} meter samples kept", highlight=False)


def _summary_row(s: SessionRow) -> dict[str, Any]:
    d = vars(s).copy()
    d.pop("tariff_json", None)
    d["id_token"] = mask(s.id_token)
    return d


def _show_record(rec, body: dict[str, Any], tz: ZoneInfo) -> None:
    m, stop = body["meter"], body["stop"]
    console.print(
        f"record {rec.id} (seq {rec.seq}, hash {rec.hash[:16]}…), "
        f"{'delivered' if rec.delivered_ts else 'not yet confirmed by the cloud'}",
        highlight=False,
    )
    console.print(
        f"ended {when(datetime.fromisoformat(body['end']), tz)} — {stop['reason']} by {stop['by']}"
        + (f": {stop['detail']}" if stop["detail"] else ""),
        highlight=False,
    )
    console.print(
        f"energy {body['energy_wh']:,} Wh (register {m['start_wh']:,} → {m['end_wh']:,} Wh), "
        f"charging {duration(float(body['charging_s']))}, "
        f"parking {duration(float(body['parking_s']))}",
        highlight=False,
    )
    if body.get("cost"):
        result = CostResult.model_validate({**body["cost"], "periods": body["charging_periods"]})
        console.print(_cost_table(result, tz))
    else:
        console.print("[yellow]not priced[/] (free vend, or no tariff could price it)")
    for g in body.get("gaps", []):
        console.print(
            Text.assemble(("metering gap", "yellow"), f" {g['start']} → {g['end']}: {g['cause']}"),
            highlight=False,
        )
    review = body.get("review", {})
    for reason in review.get("reasons", []):
        console.print(Text.assemble(("review", "yellow"), f": {reason}"), highlight=False)
    for note in body.get("notes", []):
        console.print(f"note: {note}", highlight=False, markup=False)
    o = body["ocmf"]
    console.print(f"OCMF ({o['signer']}-signed), public key {o['public_key'][:24]}…")
    console.print(o["begin"], highlight=False, soft_wrap=True)
    console.print(o["end"], highlight=False, soft_wrap=True)
    if body.get("payment"):
        console.print(f"payment: {jsonlib.dumps(body['payment'])}", highlight=False)
