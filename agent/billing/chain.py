"""A tamper-evident hash chain over charge records.

Each record carries its sequence number and the SHA-256 of the previous record's canonical
bytes, so editing, removing or reordering any stored record breaks a link that `verify_chain`
finds and names. Truncating the newest records, or editing the last one, is only visible
against a head hash kept elsewhere (e.g. last sent to the cloud): pass it as `head`.

Canonical bytes are sorted-key, compact, ASCII JSON, so the hash survives a round trip
through storage that reorders keys. Money is Decimal and is hashed as its text; floats are
refused (their text is not stable enough to bill on).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

GENESIS = "0" * 64  # prev_hash of the very first record


class ChainError(ValueError):
    """A record cannot be chained (e.g. a float in its body)."""


class ChainBroken(ChainError):
    """The chain does not verify; `index` is the list position of the offending record."""

    def __init__(self, index: int, kind: str, message: str) -> None:
        super().__init__(f"record {index}: {message}")
        self.index = index
        self.kind = kind  # "edited", "removed", "reordered", "start", "head"


@dataclass(frozen=True)
class ChainedRecord:
    """One charge record in the chain: `body` is JSON-like data (str, int, bool, None,
    Decimal, lists, str-keyed mappings), e.g. session id, OCMF strings, energy, cost."""

    seq: int
    prev_hash: str
    body: Mapping[str, Any]


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ChainError(f"{where}: {value} is not a finite amount")
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ChainError(f"{where}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    raise ChainError(f"{where}: {type(value).__name__} cannot be hashed canonically")


def canonical_bytes(record: ChainedRecord) -> bytes:
    """The bytes a record's hash is computed over (its seq, prev_hash and body)."""
    doc = {"seq": record.seq, "prev": record.prev_hash, "body": _plain(record.body, "body")}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def record_hash(record: ChainedRecord) -> str:
    """Hex SHA-256 of the record's canonical bytes: what the next record stores."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def append(previous: ChainedRecord | None, body: Mapping[str, Any]) -> ChainedRecord:
    """The record that follows `previous` (None for the first: seq 1, prev GENESIS)."""
    if previous is None:
        record = ChainedRecord(seq=1, prev_hash=GENESIS, body=body)
    else:
        record = ChainedRecord(seq=previous.seq + 1, prev_hash=record_hash(previous), body=body)
    canonical_bytes(record)  # refuse an unhashable body now, not at verification time
    return record


def verify_chain(
    records: Sequence[ChainedRecord],
    *,
    prev_hash: str = GENESIS,
    first_seq: int | None = 1,
    head: str | None = None,
) -> None:
    """Walk `records` in order; raise `ChainBroken` at the first broken link.

    `prev_hash`/`first_seq` are what the first record must link to and be numbered (the
    defaults describe a chain from its start; pass first_seq=None to accept any start when
    checking a window). `head`, if given, must be the hash of the last record. The error's
    `index` is the list position of the record to look at and `kind` the likely cause.
    """
    if not records:
        if head is not None and head != prev_hash:
            raise ChainBroken(0, "head", "the chain is empty but a head hash was expected")
        return
    first = records[0]
    if first_seq is not None and first.seq != first_seq:
        kind = "removed" if first.seq > first_seq else "reordered"
        raise ChainBroken(0, kind, f"seq {first.seq}, expected {first_seq}")
    if first.prev_hash != prev_hash:
        raise ChainBroken(0, "start", "does not link to the expected predecessor hash")
    for i in range(1, len(records)):
        before, rec = records[i - 1], records[i]
        if rec.seq > before.seq + 1:
            # A skipped number that turns up later means a reorder, else a removal.
            later = any(before.seq < r.seq < rec.seq for r in records[i + 1 :])
            kind, what = ("reordered", "out of order") if later else ("removed", "records missing")
            raise ChainBroken(i, kind, f"seq {rec.seq} follows seq {before.seq}: {what}")
        if rec.seq <= before.seq:
            raise ChainBroken(
                i, "reordered", f"seq {rec.seq} follows seq {before.seq}: out of order"
            )
        if rec.prev_hash != record_hash(before):
            # Sequence numbers are contiguous, so the previous record's content changed
            # after this one was chained (or this record's link itself was altered).
            raise ChainBroken(
                i - 1,
                "edited",
                f"seq {before.seq} no longer hashes to what seq {rec.seq} stored: it was edited",
            )
    if head is not None and record_hash(records[-1]) != head:
        raise ChainBroken(
            len(records) - 1,
            "head",
            "the last record does not match the expected head hash (edited, or later records "
            "were removed)",
        )
