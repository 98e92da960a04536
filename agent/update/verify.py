"""Trust checks of an unpacked archive: signer chain, signature, file hashes, store schema.

Each failure raises UpdateRefused with its OCPP status and logs its security event:
- the signing certificate does not chain to `[update] root_ca_file`, is not valid now or
  may not sign code: InvalidSignature + InvalidFirmwareSigningCertificate;
- the manifest's signature does not verify: InvalidSignature + InvalidFirmwareSignature;
- a file's SHA-256 differs, a file is missing or unlisted: InstallVerificationFailed;
- the release needs a newer config format, or its store schema could not be read by this
  release after a rollback: InstallVerificationFailed (see check_store for the rule).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.update.archive import Manifest, Unpacked, sha256_file
from agent.update.status import UpdateRefused, UpdateStatus, security_event

# The station.toml format this release reads. A release whose manifest needs a newer one
# (min_config_schema) would not start on this station's config: refused before installing.
CONFIG_SCHEMA = 1
BAD_CERT = "InvalidFirmwareSigningCertificate"
BAD_SIGNATURE = "InvalidFirmwareSignature"


def _refuse_cert(why: str) -> UpdateRefused:
    security_event(BAD_CERT, reason=why)
    return UpdateRefused(
        UpdateStatus.INVALID_SIGNATURE, f"signing certificate refused: {why}", BAD_CERT
    )


def load_roots(path: Path | None) -> list[x509.Certificate]:
    """The trusted root certificates; none configured refuses every update."""
    if path is None:
        raise _refuse_cert("no [update] root_ca_file configured")
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        raise _refuse_cert(f"cannot read root_ca_file {path}: {e}") from e


def _valid_now(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _refuse_cert(
            f"{what} {cert.subject.rfc4514_string()} is not valid now "
            f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})"
        )


def _ext(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def verify_chain(
    signer_pem: bytes, roots: list[x509.Certificate], now: datetime | None = None
) -> x509.Certificate:
    """Check the signer (then intermediates) chain to one of `roots`; return the signer.

    The signer must allow digitalSignature and, when it has an extended key usage, codeSigning;
    every issuer on the way must be a CA; every certificate must be valid at `now`."""
    now = now or datetime.now(UTC)
    try:
        chain = x509.load_pem_x509_certificates(signer_pem)
    except ValueError as e:
        raise _refuse_cert(f"signer.pem is not PEM certificates: {e}") from e
    leaf = chain[0]
    ku = _ext(leaf, x509.KeyUsage)
    if ku is None or not ku.digital_signature:
        raise _refuse_cert("the signing certificate's key usage lacks digitalSignature")
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise _refuse_cert("the signing certificate's extended key usage lacks codeSigning")
    for cert in chain:
        _valid_now(cert, now, "certificate")
    for child, issuer in itertools.pairwise(chain):
        _issued_by(child, issuer)
    last = chain[-1]
    for root in roots:
        if root.subject == last.issuer:
            _valid_now(root, now, "root")
            _issued_by(last, root)
            return leaf
    raise _refuse_cert(f"{last.issuer.rfc4514_string()} is not a configured root")


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> None:
    bc = _ext(issuer, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise _refuse_cert(f"{issuer.subject.rfc4514_string()} is not a CA")
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise _refuse_cert(
            f"{child.subject.rfc4514_string()} is not issued by {issuer.subject.rfc4514_string()}"
        ) from e


def verify_signature(signer: x509.Certificate, data: bytes, signature: bytes) -> None:
    """Check `signature` of `data` with the signer's key (ECDSA or RSA PKCS#1 v1.5, SHA-256)."""
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise _refuse_cert(f"unsupported key type {type(key).__name__}")
    except InvalidSignature:
        security_event(BAD_SIGNATURE, signer=signer.subject.rfc4514_string())
        raise UpdateRefused(
            UpdateStatus.INVALID_SIGNATURE,
            "the manifest's signature does not verify",
            BAD_SIGNATURE,
        ) from None


def verify_files(u: Unpacked) -> None:
    """Every wheel listed with its SHA-256, nothing more, nothing less."""
    present = {p.relative_to(u.root).as_posix() for p in u.wheelhouse.glob("*")}
    listed = set(u.manifest.files)
    if present != listed:
        raise UpdateRefused(
            UpdateStatus.INSTALL_VERIFICATION_FAILED,
            f"files differ from the manifest: missing {sorted(listed - present)}, "
            f"unlisted {sorted(present - listed)}",
        )
    for name, want in sorted(u.manifest.files.items()):
        got = sha256_file(u.root / name)
        if got != want.lower():
            raise UpdateRefused(
                UpdateStatus.INSTALL_VERIFICATION_FAILED,
                f"{name}: sha256 {got} but the manifest says {want}",
            )


def check_config(m: Manifest, config_schema: int = CONFIG_SCHEMA) -> None:
    """Refuse a release that needs a newer station.toml format than this station has."""
    if m.min_config_schema > config_schema:
        raise UpdateRefused(
            UpdateStatus.INSTALL_VERIFICATION_FAILED,
            f"release {m.version} needs config schema {m.min_config_schema}, this station's "
            f"config is schema {config_schema}",
        )


def check_store(m: Manifest, running_schema: int) -> None:
    """The store rule (migrations are forward-only; the store is shared by every release).

    A release may migrate the store beyond the running release's schema only if the running
    release can still read it afterwards (`store.readable_by <= running_schema`), since a
    rollback brings the running release back onto the migrated store. A release that needs an
    older schema than the store has is refused too: migrations never go backwards."""
    if m.store.version < running_schema:
        raise UpdateRefused(
            UpdateStatus.INSTALL_VERIFICATION_FAILED,
            f"release {m.version} knows store schema {m.store.version}, the store is at "
            f"{running_schema}: migrations never go back",
        )
    if m.store.readable_by > running_schema:
        raise UpdateRefused(
            UpdateStatus.INSTALL_VERIFICATION_FAILED,
            f"release {m.version} migrates the store to schema {m.store.version}, readable only "
            f"by schema {m.store.readable_by} and later; this release ({running_schema}) could "
            "not read it after a rollback",
        )


def verify(u: Unpacked, roots: list[x509.Certificate], running_schema: int) -> None:
    """All checks, in the order that gives the most specific status first."""
    signer = verify_chain(u.signer_pem, roots)
    verify_signature(signer, u.manifest_bytes, u.signature)
    verify_files(u)
    check_config(u.manifest)
    check_store(u.manifest, running_schema)
