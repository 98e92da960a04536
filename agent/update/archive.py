"""The update archive: a tar holding a wheelhouse, its manifest and the manifest's signature.

    manifest.json        Manifest below (the exact bytes that are signed)
    manifest.sig         signature of manifest.json by the signer's key (ECDSA/RSA, SHA-256)
    signer.pem           the signing certificate, then any intermediates toward the root
    wheels/*.whl         the evedge wheel and its locked dependency wheels

Nothing outside these names is accepted: the archive is unpacked member by member into a
fresh directory, never with extractall.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT = 1
MANIFEST, SIGNATURE, SIGNER = "manifest.json", "manifest.sig", "signer.pem"
_WHEEL = re.compile(r"^wheels/[A-Za-z0-9._+-]+\.whl$")
MAX_MEMBER_BYTES = 512 * 1024 * 1024  # a wheelhouse is tens of MB; refuse a tar bomb


class StoreSchema(BaseModel):
    """What the release does to the shared store (see verify.check_store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1, description="the schema version the release migrates the store to")
    readable_by: int = Field(
        ge=1, description="the oldest schema version whose code still reads the migrated store"
    )


class Manifest(BaseModel):
    """What a signed archive brings: version, files with their SHA-256, config and store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(ge=1, le=FORMAT)
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
    requirement: str = Field(min_length=1, description="what pip installs, e.g. evedge==0.2.0")
    files: dict[str, str] = Field(min_length=1, description="member name -> sha256 hex")
    min_config_schema: int = Field(default=1, ge=1)
    store: StoreSchema


class ArchiveError(ValueError):
    """The archive is not one: unreadable, a member missing or not allowed, a bad manifest."""


@dataclass(frozen=True)
class Unpacked:
    """An archive unpacked into `root`: manifest bytes, signature, signer chain, wheelhouse."""

    root: Path
    manifest_bytes: bytes
    manifest: Manifest
    signature: bytes
    signer_pem: bytes

    @property
    def wheelhouse(self) -> Path:
        return self.root / "wheels"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack(archive: Path, into: Path) -> Unpacked:
    """Unpack `archive` into the empty directory `into`; raise ArchiveError if malformed."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar.getmembers():
                name = m.name
                if name not in (MANIFEST, SIGNATURE, SIGNER) and not _WHEEL.match(name):
                    raise ArchiveError(f"{archive}: member {name!r} is not allowed")
                if not m.isfile() or m.size > MAX_MEMBER_BYTES:
                    raise ArchiveError(f"{archive}: member {name!r} is not a regular file")
                dest = into / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{archive}: not a readable update archive: {e}") from e
    for need in (MANIFEST, SIGNATURE, SIGNER):
        if not (into / need).is_file():
            raise ArchiveError(f"{archive}: {need} is missing")
    raw = (into / MANIFEST).read_bytes()
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as e:
        raise ArchiveError(f"{archive}: invalid manifest: {e}") from e
    return Unpacked(
        into, raw, manifest, (into / SIGNATURE).read_bytes(), (into / SIGNER).read_bytes()
    )


def pack(
    out: Path, manifest_bytes: bytes, signature: bytes, signer_pem: bytes, wheels: list[Path]
) -> None:
    """Write an archive: the manifest as given (signed bytes), signature, chain, wheels."""
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in (
            (MANIFEST, manifest_bytes),
            (SIGNATURE, signature),
            (SIGNER, signer_pem),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for w in wheels:
            tar.add(w, arcname=f"wheels/{w.name}", recursive=False)
    tmp.replace(out)
