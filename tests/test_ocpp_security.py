"""OCPP security profiles 1-3 against the test CSMS, with certificates generated here.

Profile 1: HTTP Basic auth (the CSMS checks it; a wrong password is refused), profile 2: TLS
verified against the configured CA (a wrong CA is refused, clearly logged), profile 3: the
client certificate (required by the CSMS), no downgrade, password file permissions, and the
password never in a log line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from pathlib import Path

import pytest
from conftest import station_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ocpp.v16 import call
from ocpp_helpers import csms_running, ocpp_service
from structlog.testing import capture_logs

from agent.bus import EventBus
from agent.config import ConfigError, parse_config
from agent.ocpp.service import OcppService, OcppSetupError
from hil.procs import until

PASSWORD = "s3cret-Pa55word-0123"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".key").chmod(0o600)


def make_ca(path: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA; writes <path>.pem and <path>.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(path, key, cert)
    return key, cert


def make_leaf(path: Path, cn: str, ca: tuple, *, server: bool) -> None:
    """A certificate signed by `ca` for 127.0.0.1 (server) or a charge point (client)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = (
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        if server
        else (x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    _write(path, key, builder.sign(ca_key, hashes.SHA256()))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """ca.pem, server.pem/.key (127.0.0.1), cp.pem/.key (TEST), other-ca.pem; pass 0600."""
    ca = make_ca(tmp_path / "ca", "CSMS test root")
    make_ca(tmp_path / "other-ca", "somebody else's root")
    make_leaf(tmp_path / "server", "127.0.0.1", ca, server=True)
    make_leaf(tmp_path / "cp", "TEST", ca, server=False)
    pw = tmp_path / "ocpp.pass"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    return tmp_path


def server_ssl(pki: Path, *, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def config(pki: Path, url: str, profile: int, **files: str):
    lines = [f'url = "{url}"', f"security_profile = {profile}", "reconnect_min_s = 0.2"]
    lines += [f'{k} = "{v}"' for k, v in files.items()]
    return station_config(
        extra=f'[store]\npath = "{pki / "evedge.db"}"\n[ocpp]\n' + "\n".join(lines) + "\n"
    )


async def test_profile1_basic_auth_checked_and_wrong_password_refused(pki, caplog):
    caplog.set_level(logging.DEBUG)
    pw = str(pki / "ocpp.pass")
    with capture_logs() as logs:
        async with csms_running(credentials={"TEST": PASSWORD}) as csms:
            async with ocpp_service(config(pki, csms.url, 1, password_file=pw)):
                await csms.wait_for("StatusNotification", "TEST")
                assert csms.auth_failures == []
                # The whitepaper: the CSMS cannot lower the profile.
                res = await csms.call(
                    "TEST", call.ChangeConfiguration(key="SecurityProfile", value="0")
                )
                assert res.status == "Rejected"
            csms.credentials = {"TEST": "another-password-000"}
            async with ocpp_service(config(pki, csms.url, 1, password_file=pw)) as svc:
                await until(lambda: len(csms.auth_failures) >= 2, 10, "two auth failures")
                assert csms.auth_failures[0] == ("TEST", "wrong password")
                assert "HTTP 401" in (svc.state()["last_error"] or "")
                assert not svc.state()["connected"]
    refused = [e for e in logs if e["event"] == "ocpp.connect_refused"]
    assert refused and refused[0]["status"] == 401
    # Secrets never reach a log: structlog events, stdlib records (the ocpp library's).
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in caplog.text


async def test_password_file_readable_by_others_is_refused(pki):
    (pki / "ocpp.pass").chmod(0o644)
    cfg = config(pki, "ws://127.0.0.1:9", 1, password_file=str(pki / "ocpp.pass"))
    with pytest.raises(OcppSetupError, match=r"mode 0644.*chmod 600"):
        OcppService(cfg, EventBus())


async def test_profile2_tls_verifies_the_csms_and_refuses_a_wrong_ca(pki):
    files = dict(password_file=str(pki / "ocpp.pass"), ca_file=str(pki / "ca.pem"))
    ssl_ctx = server_ssl(pki, client_cert=False)
    async with csms_running(ssl=ssl_ctx, credentials={"TEST": PASSWORD}) as csms:
        assert csms.url.startswith("wss://")
        async with ocpp_service(config(pki, csms.url, 2, **files)) as svc:
            await csms.wait_for("StatusNotification", "TEST")
            assert svc.state()["security_profile"] == 2
        files["ca_file"] = str(pki / "other-ca.pem")
        with capture_logs() as logs:
            async with ocpp_service(config(pki, csms.url, 2, **files)) as svc:
                await until(
                    lambda: any(e["event"] == "ocpp.tls_failed" for e in logs), 10, "tls_failed"
                )
                assert csms.connections["TEST"] == 1  # the second one never got through
        failed = next(e for e in logs if e["event"] == "ocpp.tls_failed")
        assert "certificate verify failed" in str(failed["error"]) or failed["error"]
        assert "ca_file" in failed["hint"]


async def test_profile3_client_certificate_required_and_no_downgrade(pki):
    tls = dict(ca_file=str(pki / "ca.pem"))
    ssl_ctx = server_ssl(pki, client_cert=True)
    async with csms_running(ssl=ssl_ctx) as csms:
        cert = dict(tls, cert_file=str(pki / "cp.pem"), key_file=str(pki / "cp.key"))
        async with ocpp_service(config(pki, csms.url, 3, **cert)):
            await csms.wait_for("StatusNotification", "TEST")
        assert csms.connections["TEST"] == 1
    # Profile 3 was used: a config asking for profile 2 now is a downgrade.
    files = dict(tls, password_file=str(pki / "ocpp.pass"))
    with pytest.raises(OcppSetupError, match="downgrade refused"):
        OcppService(config(pki, "wss://127.0.0.1:9", 2, **files), EventBus())


async def test_without_client_certificate_the_csms_refuses(pki, tmp_path):
    ssl_ctx = server_ssl(pki, client_cert=True)
    async with csms_running(ssl=ssl_ctx) as csms:
        files = dict(password_file=str(pki / "ocpp.pass"), ca_file=str(pki / "ca.pem"))
        with capture_logs() as logs:
            async with ocpp_service(config(pki, csms.url, 2, **files)) as svc:
                await until(lambda: svc.reconnects >= 1, 10, "a reconnect")
                assert not svc.state()["connected"]
        assert "TEST" not in csms.connections
        assert any(e["event"] == "ocpp.connect_failed" for e in logs)


def test_config_cross_checks():
    base = '[station]\nid = "X"\n[ocpp]\n'
    with pytest.raises(ConfigError, match="must be wss://"):
        parse_config(base + 'url = "ws://h/ocpp"\nsecurity_profile = 2\n')
    with pytest.raises(ConfigError, match="must be ws://"):
        parse_config(base + 'url = "wss://h/ocpp"\nsecurity_profile = 1\npassword_file = "p"\n')
    with pytest.raises(ConfigError, match="needs cert_file, key_file"):
        parse_config(base + 'url = "wss://h/ocpp"\nsecurity_profile = 3\nca_file = "c"\n')
    with pytest.raises(ConfigError, match="needs password_file"):
        parse_config(base + 'url = "ws://h/ocpp"\nsecurity_profile = 1\n')
    with pytest.raises(ConfigError, match="read-only"):
        parse_config(base + 'url = "ws://h/ocpp"\nkeys = { NumberOfConnectors = "3" }\n')
    cfg = parse_config(base + 'url = "ws://h/ocpp"\n')
    assert cfg.ocpp is not None and cfg.ocpp.security_profile == 0
