"""The agent's own OCMF signing key (ECDSA secp256r1) and public-key encodings.

The private key lives in one PEM file (PKCS#8, unencrypted: the file mode is the protection)
that only its owner may read. It is generated at first use and never replaced afterwards: every
record it signed must stay verifiable, so a damaged or too-open key file is an error for a
person to resolve, not something to paper over with a fresh key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.secretfile import SecretFileError, read_secret_bytes

KEY_FILE = "ocmf-signing-key.pem"
CURVE = "secp256r1"


class KeyFileError(Exception):
    """The key file cannot be used; the message names the file and what to do about it."""


class PrivateKey:
    """The agent's ECDSA secp256r1 signing key.

    Wraps the `cryptography` key so that its repr, str and pickling never expose the secret:
    only a fingerprint of the public key is shown.
    """

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE:
            raise TypeError(f"the OCMF signing key must be an EC {CURVE} private key")
        self._key = key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The matching public key."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 signature of `data`, DER encoded (what OCMF's SM default expects)."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def __repr__(self) -> str:
        return f"PrivateKey({CURVE}, public sha256:{fingerprint(self)})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the secret into queues, caches or crash dumps.
        raise TypeError("the signing key cannot be pickled")


PublicKeyLike = PrivateKey | ec.EllipticCurvePublicKey


def _public(key: PublicKeyLike) -> ec.EllipticCurvePublicKey:
    return key.public_key if isinstance(key, PrivateKey) else key


def public_key_der(key: PublicKeyLike) -> bytes:
    """DER SubjectPublicKeyInfo of the (public half of the) key."""
    return _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_hex(key: PublicKeyLike) -> str:
    """Hex (upper case, as in the OCMF/Transparenzsoftware examples) DER SubjectPublicKeyInfo.

    This is the form OCPP's MeterPublicKey configuration value and pyocmf accept.
    """
    return public_key_der(key).hex().upper()


def public_key_b64(key: PublicKeyLike) -> str:
    """Base64 DER SubjectPublicKeyInfo (the other encoding pyocmf accepts)."""
    return base64.b64encode(public_key_der(key)).decode("ascii")


def fingerprint(key: PublicKeyLike) -> str:
    """First 16 hex digits of the SHA-256 of the DER public key: safe to log."""
    return hashlib.sha256(public_key_der(key)).hexdigest()[:16]


def load_public_key(key: str | bytes | PublicKeyLike) -> ec.EllipticCurvePublicKey:
    """A public key from hex or base64 DER SubjectPublicKeyInfo text, DER bytes, or a key object.

    Raises ValueError naming what was wrong: a bad encoding, or DER that is not an EC key.
    """
    if isinstance(key, PrivateKey | ec.EllipticCurvePublicKey):
        return _public(key)
    if isinstance(key, str):
        text = "".join(key.split())
        try:
            der = bytes.fromhex(text)
        except ValueError:
            try:
                der = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("public key is neither hex nor base64 DER") from None
    elif isinstance(key, bytes):
        der = key
    else:
        raise TypeError(f"public key must be text, bytes or a key object, not {type(key)!r}")
    try:
        public = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"public key is not a DER SubjectPublicKeyInfo: {e}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("public key is not an elliptic-curve key")
    return public


def load_or_create_key(directory: str | Path) -> PrivateKey:
    """The agent's signing key from `directory`/ocmf-signing-key.pem, generated at first use.

    The directory is created (mode 0700) when missing. A new key file is written with mode
    0600 under a temporary name and linked into place, so a crash never leaves a partial key
    and two processes starting at once end up with the same key. Raises `KeyFileError` if
    the file is readable by group/others (run chmod 600), is not a regular file, or is not a
    PEM secp256r1 private key (corrupt): it is never overwritten.
    """
    path = Path(directory) / KEY_FILE
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create(path)
        except OSError as e:
            raise KeyFileError(f"{path}: cannot create the signing key: {e.strerror or e}") from e
    # Load what is on disk rather than what we generated: if another process won the race,
    # its key is the one in use.
    return _load(path)


def _create(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL + mode 0600 at creation: the secret is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask could only narrow the mode, but be explicit
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() refuses to replace an existing file, unlike rename(): an existing key wins.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new directory entry survives a power cut
    finally:
        os.close(dir_fd)


def _load(path: Path) -> PrivateKey:
    try:
        data = read_secret_bytes(path, "the signing key")
    except SecretFileError as e:
        raise KeyFileError(str(e)) from None
    return PrivateKey(_parse_pem(path, data))


def _parse_pem(path: Path, data: bytes) -> ec.EllipticCurvePrivateKey:
    keep = (
        "It was left as it is (records it signed must stay verifiable): restore it from a "
        "backup, or move it away to have a new key generated and register the new public key "
        "with the CSMS."
    )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: the signing key is password-protected. {keep}") from None
    except (ValueError, UnsupportedAlgorithm):
        # The library's message is not repeated: nothing of the file's content goes to logs.
        raise KeyFileError(
            f"{path}: the signing key file is corrupt (not a PEM private key). {keep}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE:
        raise KeyFileError(f"{path}: the signing key is not an EC {CURVE} key. {keep}")
    return key
