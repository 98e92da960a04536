"""`evedge bundle --out FILE`: the diagnostics bundle (the one GetDiagnostics uploads), locally."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.store.db import Store, StoreError
from agent.support.bundle import build_bundle


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option} {value!r}: use ISO 8601, e.g. 2025-03-01T08:00Z", Exit.USAGE
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def bundle(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the .tar.gz")],
    since: Annotated[
        str | None, typer.Option("--since", help="logs and past faults from (ISO 8601, UTC)")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="... up to (ISO 8601)")] = None,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="station config (TOML)")
    ] = DEFAULT_CONFIG,
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Write the diagnostics bundle: faults, device health, config without secrets, logs.

    Example: `evedge bundle -o /tmp/evedge-bundle.tar.gz --since 2025-03-01T00:00:00Z`"""
    cfg = load_or_exit(config)
    lo, hi = _when(since, "--since"), _when(until, "--until")
    store = None
    if cfg.store.path.exists():  # never create a store the agent has not made
        try:
            store = Store(cfg.store.path, readonly=True)
        except StoreError as e:
            raise fail(str(e), Exit.CHECK_FAILED) from None
    try:
        data = build_bundle(cfg, store, since=lo, until=hi)
    finally:
        if store is not None:
            store.close()
    try:
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600)  # it describes the station: not for every local user
        tmp.replace(out)
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}", Exit.USAGE) from None
    if json:
        emit_json({"ok": True, "file": str(out), "bytes": len(data), "store": store is not None})
    else:
        note = "" if store is not None else f" (no store at {cfg.store.path}: config and logs only)"
        console.print(f"wrote {out} ({len(data)} bytes){note}", highlight=False)
