"""Signing keys and certificates for update archives: a root CA and a code-signing cert.

`make release` makes a throwaway pair with these (build.py); the tests make theirs, good and
bad. A manufacturer signs with its own PKI: only `sign` matters there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    """A P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(
    cn: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None = None,
    *,
    ca: bool = False,
    digital_signature: bool = True,
    code_signing: bool = True,
    valid_from: datetime | None = None,
    days: int = 3650,
) -> x509.Certificate:
    """A certificate for `key`, self-signed without `issuer`; a CA or a code signer."""
    start = valid_from or datetime.now(UTC) - timedelta(minutes=5)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca and code_signing:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
    return b.sign(signing_key, hashes.SHA256())


def sign(key: Key, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature of `data` (what verify.verify_signature checks)."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def pem(*certs: x509.Certificate) -> bytes:
    """Certificates as one PEM bundle, in the order given."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (test keys only: keep real ones in an HSM)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
