"""`evedge update`: apply a signed update, show releases, roll back, the unit's boot check."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, fail, load_or_exit
from agent.config import StationConfig

app = typer.Typer(
    help="Signed updates of the agent: apply, status, rollback, boot-check.", no_args_is_help=True
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _state(cfg: StationConfig) -> Path:
    from agent.update.health import state_dir

    return state_dir(cfg.store.path)


@app.command("apply")
def apply(
    location: Annotated[str, typer.Argument(help="update archive: a file or an http(s) URL")],
    config: ConfigOpt = DEFAULT_CONFIG,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="download and verify only, install nothing")
    ] = False,
    retries: Annotated[int | None, typer.Option(help="download retries (clamped)")] = None,
    retry_interval: Annotated[
        float | None, typer.Option(help="seconds between download tries (clamped)")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="install at this time (ISO 8601 with offset, OCPP installDateTime)"),
    ] = None,
) -> None:
    """Verify and install a signed update, restart into it, roll back if it is not healthy.

    Prints each OCPP status; exit 1 with the final status when the update is refused."""
    from agent.logsetup import setup_logging
    from agent.store.migrations import LATEST_VERSION
    from agent.update.apply import Request, Updater, systemctl_restart
    from agent.update.status import UpdateRefused

    cfg = load_or_exit(config)
    install_at = _instant(at) if at is not None else None
    setup_logging("warning")  # stderr: security events and failures; stdout: the statuses
    u = cfg.update
    updater = Updater(
        u,
        _state(cfg),
        LATEST_VERSION,
        report=lambda s: console.print(f"status: {s}", highlight=False),
        restart=systemctl_restart(u.restart_command),
        api_socket=cfg.api.socket if cfg.api else None,
    )
    try:
        m = updater.apply(Request(location, retries, retry_interval, install_at), dry_run=dry_run)
    except UpdateRefused as e:
        raise fail(f"{e.status}: {e}", Exit.CHECK_FAILED) from None
    if dry_run:
        console.print(f"release {m.version}: signature and files verified (dry run)")
        return
    outcome = updater.settle(m.version)
    if outcome != "committed":
        raise fail(f"release {m.version} was not healthy: rolled back", Exit.CHECK_FAILED)
    console.print(f"release {m.version} installed and healthy")


def _instant(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--at {text!r} is not an ISO 8601 time", Exit.USAGE) from None
    if t.tzinfo is None:
        raise fail("--at needs a UTC offset, e.g. 2026-12-08T02:00:00+00:00", Exit.USAGE)
    return t


@app.command("status")
def status(config: ConfigOpt = DEFAULT_CONFIG, json: JsonOpt = False) -> None:
    """The running release, the installed ones, a probation and the last outcome."""
    from agent.update import probation, releases

    cfg = load_or_exit(config)
    sd = _state(cfg)
    doc = {
        "current": releases.current_version(cfg.update.current_link),
        "installed": releases.installed(cfg.update.releases_dir),
        "probation": probation.read(sd),
        "last": probation.read(sd, probation.LAST),
    }
    if json:
        emit_json(doc)
        return
    console.print(f"current   {doc['current'] or '(none)'}", highlight=False)
    console.print(f"installed {', '.join(doc['installed']) or '(none)'}", highlight=False)
    if p := doc["probation"]:
        console.print(f"probation {p['version']}: {p['boots']} of {p['max_boots']} starts")
    if last := doc["last"]:
        console.print(f"last      {last['version']}: {last['outcome']} ({last['reason']})")


@app.command("rollback")
def rollback(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Switch back to the release before the last update and restart the service."""
    from agent.update import probation, releases
    from agent.update.apply import systemctl_restart

    cfg = load_or_exit(config)
    sd = _state(cfg)
    if probation.read(sd) is not None:
        probation.rollback(sd, "asked by a user")
    else:
        last = probation.read(sd, probation.LAST)
        if last is None or last["outcome"] != "committed":
            raise fail("no committed update to roll back", Exit.CHECK_FAILED)
        releases.switch(cfg.update.current_link, Path(last["previous"]))
        probation.forget(sd)
    systemctl_restart(cfg.update.restart_command)()
    console.print(f"current: {releases.current_version(cfg.update.current_link)}")


@app.command("boot-check")
def boot_check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Count a start of a release on probation; roll back after max_boots or its deadline.

    For the unit's ExecStartPre (systemd/install.sh installs a copy outside the releases)."""
    from agent.update import probation

    cfg = load_or_exit(config)
    console.print(probation.check(_state(cfg), boot=True))
