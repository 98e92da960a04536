"""Tamper evidence of the store beyond the hash chain: its guard triggers, and its chain head
compared with the signed checkpoint beside it (agent/billing/checkpoint.py).

Whoever can write the store file can drop the triggers that keep records immutable, delete
the newest records with their sessions, or delete the oldest and rewrite `chain_anchor`;
the chain alone then looks intact. `billing verify`, the agent's start and a check every
minute while it runs compare the store with what the agent signed. A finding is a security
event: the log event `security.tamper_detected` (event TamperDetectionActivated, the OCPP
2.0.1 SecurityEventNotification type) and the diagnosis fact `station.billing_tamper`
(rule `billing_tamper_detected`). After a finding the checkpoint is no longer advanced, so
the evidence stays until a person has looked (`evedge billing reseal`).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import structlog

from agent.billing import chain, checkpoint
from agent.billing.checkpoint import CheckpointError, Head
from agent.billing.keys import PrivateKey, public_key_hex
from agent.security.log import SecurityEvents
from agent.sessions.signing import PAGINATION_KEY
from agent.sessions.store import SessionStore, chain_head, get_state, set_state
from agent.store.migrations import MIGRATIONS, statements

log = structlog.get_logger(__name__)

ANCHOR_KEY = "chain_anchor"
# billing_state: seq of the head when a checkpoint was first written, so a checkpoint file
# that goes missing later is a deletion, not a store from before checkpoints existed.
MARK_KEY = "chain_checkpoint"
EVENT = "TamperDetectionActivated"
RECHECK_S = 60.0


def _norm(sql: str) -> str:
    sql = sql[sql.upper().index("CREATE TRIGGER") :]
    return " ".join(sql.rstrip().rstrip(";").split())


def guard_triggers() -> dict[str, str]:
    """Name -> the CREATE statement of every trigger the store's migrations create."""
    out: dict[str, str] = {}
    for m in MIGRATIONS:
        for stmt in statements(m.sql):
            found = re.search(r"CREATE TRIGGER\s+(\w+)", stmt, re.I)
            if found:
                out[found[1]] = stmt[found.start() :]
    return out


def trigger_findings(c: sqlite3.Connection) -> dict[str, str]:
    """Name -> what is wrong, for each guard trigger dropped or replaced (empty: all fine)."""
    present = dict(c.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    out = {}
    for name, sql in guard_triggers().items():
        if name not in present:
            out[name] = f"store trigger {name} was dropped: the store was written around the agent"
        elif _norm(present[name] or "") != _norm(sql):
            out[name] = f"store trigger {name} was replaced by another definition"
    return out


def trigger_problems(c: sqlite3.Connection) -> list[str]:
    """A line per guard trigger that was dropped or replaced (empty: all in place)."""
    return list(trigger_findings(c).values())


def store_head(c: sqlite3.Connection, station: str) -> Head:
    """The head as the store has it now (newest record, or the anchor when none is left)."""
    head = chain_head(c) or (0, chain.GENESIS)
    return Head(
        station=station,
        seq=head[0],
        hash=head[1],
        anchor=get_state(c, ANCHOR_KEY),
        pagination=int(get_state(c, PAGINATION_KEY) or 0),
    )


def _hash_at(c: sqlite3.Connection, seq: int) -> str | None:
    row = c.execute("SELECT hash FROM charge_records WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else row[0]


def head_problems(c: sqlite3.Connection, signed: Head) -> list[str]:
    """What differs between the store and the signed checkpoint `signed`.

    The store may be ahead of the checkpoint (a crash between a record's commit and the
    checkpoint write; the agent catches up at start), never behind it: fewer records than
    signed, another hash at the signed head, or an anchor other than the signed one (except a
    retention pruning whose checkpoint was written but whose commit did not happen).
    """
    now = store_head(c, signed.station)
    out = []
    if now.anchor != signed.anchor:
        pending = signed.anchor is not None and now.anchor_seq < signed.anchor_seq
        a_seq, a_hash = (signed.anchor or ":").split(":")
        if not (pending and _hash_at(c, int(a_seq)) == a_hash):
            out.append(
                f"chain_anchor is {now.anchor or 'unset'}, the signed checkpoint says "
                f"{signed.anchor or 'unset'}: the oldest records were deleted and the anchor "
                "rewritten"
            )
    if now.seq < signed.seq:
        out.append(
            f"records seq {now.seq + 1}..{signed.seq} are missing: the signed checkpoint's head "
            f"is seq {signed.seq}, the store's newest record is seq {now.seq} (deleted)"
        )
    elif signed.seq > 0:
        at = _hash_at(c, signed.seq)
        if at is None and signed.anchor is not None and signed.seq == signed.anchor_seq:
            at = signed.anchor.split(":")[1]
        if at != signed.hash:
            out.append(
                f"record seq {signed.seq} is not the one the checkpoint signed as head "
                "(hash differs): the chain was rebuilt"
            )
    if now.pagination < signed.pagination:
        out.append(
            f"OCMF pagination counter is {now.pagination}, the signed checkpoint says "
            f"{signed.pagination}: it was set back"
        )
    return out


def checkpoint_problems(
    c: sqlite3.Connection, path: Path, station: str | None, public_key: str | None
) -> list[str]:
    """The store against its signed checkpoint file (see head_problems); `station` None:
    whichever station signed it."""
    try:
        signed = checkpoint.read(path, public_key)
    except FileNotFoundError:
        if get_state(c, MARK_KEY) is not None:
            return [f"the signed chain checkpoint {path} was deleted"]
        return []  # a store from before checkpoints: the agent writes one at its next start
    except CheckpointError as e:
        return [str(e)]
    if station is not None and signed.station != station:
        return [f"{path} is the checkpoint of station {signed.station}, not {station}"]
    return head_problems(c, signed)


class Integrity:
    """The agent's side: writes the checkpoint after every record, checks the store at start
    and every RECHECK_S while running, and raises the security event on a finding."""

    def __init__(
        self,
        store: SessionStore,
        station: str,
        key: PrivateKey,
        security: SecurityEvents | None = None,
    ):
        self.store = store
        self.security = security  # the agent's port (agent/security/); None: log line only
        self.station = station
        self.key = key
        self.path = checkpoint.checkpoint_path(store.path)
        self.findings: list[str] = []
        self.sealed = True  # False after a head problem: the evidence must stay
        self._checked = 0.0

    def start(self) -> list[str]:
        """Check the store; when its head agrees with the checkpoint, bring that up to date."""
        with self.store.tx() as c:
            heads = checkpoint_problems(c, self.path, self.station, public_key_hex(self.key))
            new = self._report(trigger_problems(c) + heads)
            self.sealed = not heads
            if self.sealed:
                self._write(c)
        if new:  # after the commit: the port writes to the store (the OCPP outbox)
            self._security_event()
        return self.findings

    def record_written(self) -> None:
        """A record was committed: move the checkpoint to the new head."""
        if self.sealed:
            with self.store.reading() as c:
                self._write(c)

    def pruned(self, c: sqlite3.Connection) -> None:
        """Inside the retention transaction, before its commit: the new anchor is signed
        first, so a crash leaves a checkpoint ahead of the store, never a rewritten anchor."""
        if self.sealed:
            self._write(c)

    def tamper_count(self) -> int:
        """How many findings now (re-checked at most every RECHECK_S): the diagnosis fact.
        A head that agrees with the checkpoint again (after `billing reseal`) unfreezes it."""
        if time.monotonic() - self._checked >= RECHECK_S:
            self._checked = time.monotonic()
            with self.store.reading() as c:
                heads = checkpoint_problems(c, self.path, self.station, public_key_hex(self.key))
                new = self._report(trigger_problems(c) + heads)
                if not heads and not self.sealed:
                    self.sealed = True
                    self._write(c)
            if new:
                self._security_event()
        return len(self.findings)

    def _write(self, c: sqlite3.Connection) -> None:
        try:
            checkpoint.write(self.path, store_head(c, self.station), self.key)
        except OSError as e:
            # The record is committed; charging must not stop over its second copy. The
            # checkpoint lags (which verify allows) until the next record or start.
            log.error("security.checkpoint_not_written", file=str(self.path), error=str(e))
            return
        if get_state(c, MARK_KEY) is None and c.in_transaction:
            set_state(c, MARK_KEY, "1")

    def _report(self, found: list[str]) -> bool:
        """Keep the findings; True (and logged) when they are new."""
        new = bool(found) and found != self.findings
        if new:
            log.error("security.tamper_detected", security_event=EVENT, store=str(self.store.path),
                      findings=found)  # fmt: skip
        self.findings = found
        return new

    def _security_event(self) -> None:
        if self.security is not None:
            self.security.record(EVENT, "; ".join(self.findings))


def reseal(store: SessionStore, station: str, key: PrivateKey) -> list[str]:
    """After a finding was looked into: re-create dropped or replaced guard triggers and sign
    the store's present head as its checkpoint. Returns what was done, one line each."""
    done = []
    with store.tx() as c:
        for name in trigger_findings(c):
            c.execute(f"DROP TRIGGER IF EXISTS {name}")
            c.execute(guard_triggers()[name])
            done.append(f"re-created store trigger {name}")
        head = store_head(c, station)
        checkpoint.write(checkpoint.checkpoint_path(store.path), head, key)
        set_state(c, MARK_KEY, "1")
        done.append(f"signed the chain head seq {head.seq} (anchor {head.anchor or 'unset'})")
    log.warning("security.resealed", store=str(store.path), done=done)
    return done
