"""`evedge billing verify`: walk the hash chain and verify every signed charge record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from agent.billing.keys import KEY_FILE, KeyFileError, load_or_create_key, public_key_hex
from agent.cli.common import DEFAULT_CONFIG, Exit, console, emit_json, err_console, note
from agent.cli.store_open import config_and_store
from agent.sessions.records import verify_records

app = typer.Typer(help="Charge records: verify the chain and signatures.", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.command("verify")
def verify(config: ConfigOpt = DEFAULT_CONFIG, json: JsonOpt = False) -> None:
    """Check every charge record: hash chain (edited, deleted, reordered records), OCMF
    signatures, signed readings vs. billed energy, and that no closed session lacks its
    record. Exit 1 naming each record with a problem."""
    cfg, store = config_and_store(config)
    agent_key = None
    if cfg.billing is not None and (cfg.billing.key_dir / KEY_FILE).exists():
        try:
            agent_key = public_key_hex(load_or_create_key(cfg.billing.key_dir))
        except KeyFileError as e:
            note(f"{e}; checking with each record's key only", "warning")
    with store:
        report = verify_records(store, agent_key)
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
