"""`evedge billing verify`: walk the hash chain and verify every signed charge record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from agent.billing.keys import KEY_FILE, KeyFileError, load_or_create_key, public_key_hex
from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, err_console, fail, note
from agent.cli.store_open import config_and_store
from agent.sessions.integrity import reseal as reseal_store
from agent.sessions.records import verify_records
from agent.sessions.store import SessionStore

app = typer.Typer(help="Charge records: verify the chain and signatures.", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.command("verify")
def verify(config: ConfigOpt = DEFAULT_CONFIG, json: JsonOpt = False) -> None:
    """Check every charge record: hash chain (edited, deleted, reordered records), the
    store's guard triggers and its head against the signed checkpoint (newest records
    deleted, anchor rewritten), OCMF signatures, signed readings vs. billed energy, every
    column copied from a record's body, and that no closed session lacks its record. Exit 1
    naming each record with a problem.

    Example: `evedge billing verify -c /etc/evedge/station.toml --json`"""
    cfg, store = config_and_store(config)
    agent_key = None
    if cfg.billing is not None and (cfg.billing.key_dir / KEY_FILE).exists():
        try:
            agent_key = public_key_hex(load_or_create_key(cfg.billing.key_dir))
        except KeyFileError as e:
            note(f"{e}; checking with each record's key only", "warning")
    with store:
        report = verify_records(store, agent_key, cfg.station.id)
    if json:
        emit_json(
            {
                "ok": report.ok,
                "records": report.records,
                "signatures": report.signatures,
                "flagged_for_review": report.flagged,
                "problems": [
                    {
                        "seq": p.seq,
                        "record": p.record_id,
                        "session": p.session_id,
                        "message": p.message,
                    }
                    for p in report.problems
                ],
            }
        )
    else:
        for p in report.problems:
            err_console.print(Text.assemble(("problem", "red"), f": {p}"), highlight=False)
        verdict = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        console.print(
            f"{report.records} records, {report.signatures} OCMF signatures checked, "
            f"{report.flagged} flagged for review: {verdict}",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(int(Exit.CHECK_FAILED))


@app.command("reseal")
def reseal(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """After a tamper finding was investigated (and the store restored if records were lost):
    re-create the store's guard triggers and sign its present chain head as the checkpoint.
    Run it as the agent's user: it needs the OCMF signing key. What was accepted is logged
    (security.resealed).

    Example: `evedge billing reseal -c /etc/evedge/station.toml`"""
    cfg, readonly = config_and_store(config)
    readonly.close()
    if cfg.billing is None:
        raise fail("no [billing] section: this station keeps no charge records", Exit.USAGE)
    if not (cfg.billing.key_dir / KEY_FILE).exists():  # a new key would sign nothing old
        raise fail(f"no OCMF key in {cfg.billing.key_dir}: run as the agent's user", Exit.USAGE)
    try:
        key = load_or_create_key(cfg.billing.key_dir)
    except KeyFileError as e:
        raise fail(str(e), Exit.CHECK_FAILED) from None
    with SessionStore(cfg.store.path) as store:
        for line in reseal_store(store, cfg.station.id, key):
            console.print(line, highlight=False)
