"""The chain head kept in a second place: a checkpoint file beside the store, signed with the
agent's OCMF key.

The hash chain shows an edited or removed record *between* two others, but not the newest
records removed, nor a rewritten `chain_anchor` with the oldest ones deleted: whoever can
write the store file can make both look like a shorter, intact chain. The checkpoint holds
the head (seq and hash of the newest record), the anchor and the OCMF pagination counter,
signed by a key that the store's writer cannot use to sign (the key file is readable by the
agent's user only), so `billing verify` compares the store with it. Replacing it by an older
checkpoint is the one thing it cannot show locally; the cloud, which receives every record's
(seq, hash), can.

File format (JSON): {"head": {station, seq, hash, anchor, pagination}, "public_key": hex DER,
"signature": base64 DER ECDSA-SHA256 over the compact, sorted-key JSON of "head"}.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.billing.atomic import write_atomic
from agent.billing.keys import PrivateKey, load_public_key, public_key_hex

SUFFIX = ".chain-head.json"


class CheckpointError(ValueError):
    """The checkpoint file cannot be trusted: unreadable, malformed or not signed by the key."""


@dataclass(frozen=True)
class Head:
    """Where the chain stands: its newest record, where it starts, the OCMF counter."""

    station: str
    seq: int  # newest record; 0 = none yet
    hash: str  # that record's hash; chain.GENESIS when none
    anchor: str | None  # "seq:hash" the chain starts after (retention pruning), None: genesis
    pagination: int  # the OCMF pagination counter (PG T<n>) of the agent's signer

    def payload(self) -> bytes:
        """The bytes the signature covers."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @property
    def anchor_seq(self) -> int:
        """Seq of the anchor (0 when the chain starts at genesis)."""
        return 0 if self.anchor is None else int(self.anchor.split(":")[0])


def checkpoint_path(store_path: Path) -> Path:
    """The checkpoint of a store: `<store file>.chain-head.json` in the same directory."""
    return store_path.with_name(store_path.name + SUFFIX)


def write(path: Path, head: Head, key: PrivateKey) -> None:
    """Sign `head` and replace the checkpoint atomically (fsynced: it must survive a power cut
    exactly as the store's commit does)."""
    doc = {
        "head": asdict(head),
        "public_key": public_key_hex(key),
        "signature": base64.b64encode(key.sign(head.payload())).decode("ascii"),
    }
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read(path: Path, public_key: str | None) -> Head:
    """The checkpoint's head, its signature verified against `public_key` (the station's OCMF
    key, hex) or, when that is unknown, the key written in the file (which proves nothing
    against someone holding another key: say so to the user). FileNotFoundError if missing."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        head = Head(**doc["head"])
        signature = base64.b64decode(doc["signature"], validate=True)
        written_key = doc["public_key"]
    except PermissionError as e:
        raise CheckpointError(
            f"{path}: cannot read it ({e.strerror}): run as the agent's user"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    if public_key is not None and written_key.upper() != public_key.upper():
        raise CheckpointError(f"{path}: signed with a key other than this station's OCMF key")
    try:
        load_public_key(public_key or written_key).verify(
            signature, head.payload(), ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError):
        raise CheckpointError(f"{path}: signature does not verify: edited") from None
    return head
