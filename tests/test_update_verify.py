"""Update archives: what is trusted and what is refused, with which OCPP status and security
event (no install here; tests/test_update_cycle.py installs)."""

from __future__ import annotations

import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from update_helpers import Pki, http_server, make_pki, standin_wheels

from agent.store.migrations import LATEST_VERSION
from agent.update import keys
from agent.update.apply import Request, Updater
from agent.update.archive import StoreSchema, pack, unpack
from agent.update.config import UpdateConfig
from agent.update.download import clamp_retries
from agent.update.status import UpdateRefused
from agent.update.status import UpdateStatus as S


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> list[Path]:
    return standin_wheels(tmp_path_factory.mktemp("wheels"), "2.0.0", "healthy")


def updater(tmp: Path, pki: Pki, seen: list, sleeps: list | None = None, **cfg) -> Updater:
    c = UpdateConfig(root_ca_file=pki.roots_file, releases_dir=tmp / "releases",
                     current_link=tmp / "current", **cfg)  # fmt: skip
    sleep = sleeps.append if sleeps is not None else None
    return Updater(c, tmp / "state", LATEST_VERSION, seen.append, restart=lambda: None,
                   **({"sleep": sleep} if sleep else {}))  # fmt: skip


def refused(tmp: Path, pki: Pki, location: Path | str, **cfg) -> tuple[UpdateRefused, list, list]:
    """Apply (dry run) expecting a refusal: the error, the statuses, the security events."""
    seen: list = []
    with capture_logs() as logs, pytest.raises(UpdateRefused) as e:
        updater(tmp, pki, seen, **cfg).apply(Request(str(location)), dry_run=True)
    events = [entry["type"] for entry in logs if entry["event"] == "security_event"]
    assert seen[-1] == e.value.status  # the final status is reported before raising
    return e.value, seen, events


def test_good_archive_over_http_is_verified(tmp_path, pki, wheels):
    pki.archive(tmp_path / "evedge-2.0.0.update", wheels, "2.0.0")
    seen: list = []
    with http_server(tmp_path) as url:
        m = updater(tmp_path, pki, seen).apply(Request(f"{url}/evedge-2.0.0.update"), dry_run=True)
    assert m.version == "2.0.0" and m.store.version == LATEST_VERSION
    assert seen == [S.DOWNLOADING, S.DOWNLOADED, S.SIGNATURE_VERIFIED]
    assert not (tmp_path / "releases").exists()  # a dry run installs nothing


def test_signature_by_another_key_is_invalid_signature(tmp_path, pki, wheels):
    # The right certificate, but the manifest signed by a key that is not its.
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0", key=keys.new_key())
    err, seen, events = refused(tmp_path, pki, a)
    assert err.status == S.INVALID_SIGNATURE and err.event == "InvalidFirmwareSignature"
    assert events == ["InvalidFirmwareSignature"]
    assert S.SIGNATURE_VERIFIED not in seen


def test_manifest_edited_after_signing_is_invalid_signature(tmp_path, pki, wheels):
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0")
    u = unpack(a, tmp_path / "u")
    edited = u.manifest_bytes.replace(b'"2.0.0"', b'"2.0.1"')
    assert edited != u.manifest_bytes
    pack(tmp_path / "b.update", edited, u.signature, u.signer_pem, sorted(u.wheelhouse.iterdir()))
    err, _, events = refused(tmp_path, pki, tmp_path / "b.update")
    assert err.status == S.INVALID_SIGNATURE and events == ["InvalidFirmwareSignature"]


def test_wheel_changed_after_signing_is_install_verification_failed(tmp_path, pki, wheels):
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0")
    u = unpack(a, tmp_path / "u")
    whl = next(u.wheelhouse.glob("evedge-*.whl"))
    whl.write_bytes(whl.read_bytes() + b"\0")  # one byte more: a different sha256
    pack(tmp_path / "b.update", u.manifest_bytes, u.signature, u.signer_pem,
         sorted(u.wheelhouse.iterdir()))  # fmt: skip
    err, seen, events = refused(tmp_path, pki, tmp_path / "b.update")
    assert err.status == S.INSTALL_VERIFICATION_FAILED and "sha256" in str(err)
    assert whl.name in str(err) and events == []
    assert seen == [S.INSTALL_VERIFICATION_FAILED]  # checked after the signature, before it is said


def test_extra_wheel_not_in_manifest_is_refused(tmp_path, pki, wheels):
    a = pki.archive(tmp_path / "a.update", wheels[:1], "2.0.0")  # manifest lists one wheel
    u = unpack(a, tmp_path / "u")
    pack(tmp_path / "b.update", u.manifest_bytes, u.signature, u.signer_pem,
         [*sorted(u.wheelhouse.iterdir()), wheels[1]])  # fmt: skip
    err, _, _ = refused(tmp_path, pki, tmp_path / "b.update")
    assert err.status == S.INSTALL_VERIFICATION_FAILED and "unlisted" in str(err)


def test_member_outside_the_format_is_refused(tmp_path, pki, wheels):
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0")
    with tarfile.open(a, "a") as tar:
        tar.add(wheels[0], arcname="../evil.whl")
    err, _, _ = refused(tmp_path, pki, a)
    assert err.status == S.INSTALL_VERIFICATION_FAILED and "'../evil.whl' is not allowed" in str(
        err
    )
    assert not (tmp_path / "evil.whl").exists()


def _other_pki_signer(tmp: Path) -> tuple[keys.Key, bytes]:
    tmp.mkdir()
    other = make_pki(tmp)
    return other.signer_key, keys.pem(other.signer)


@pytest.mark.parametrize(
    "case",
    ["other_root", "self_signed", "no_code_signing", "no_digital_signature", "expired", "not_yet"],
)
def test_signing_certificate_refused(tmp_path, pki, wheels, case):
    key = keys.new_key()
    issuer = (pki.root, pki.root_key)
    past = datetime.now(UTC) - timedelta(days=400)
    future = datetime.now(UTC) + timedelta(days=2)
    cert = {
        "other_root": lambda: None,
        "self_signed": lambda: keys.certificate("Self", key),
        "no_code_signing": lambda: _with_eku(key, issuer),
        "no_digital_signature": lambda: keys.certificate("S", key, issuer, digital_signature=False),
        "expired": lambda: keys.certificate("S", key, issuer, valid_from=past, days=30),
        "not_yet": lambda: keys.certificate("S", key, issuer, valid_from=future),
    }[case]()
    if cert is None:
        key, chain = _other_pki_signer(tmp_path / "other")
    else:
        chain = keys.pem(cert)
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0", key=key, chain=chain)
    err, _, events = refused(tmp_path, pki, a)
    assert err.status == S.INVALID_SIGNATURE
    assert events == ["InvalidFirmwareSigningCertificate"] == [err.event]


def _with_eku(key, issuer):
    """A signer whose extended key usage is serverAuth only (a TLS cert, not a code signer)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    base = keys.certificate("TLS", key, issuer, code_signing=False)
    b = x509.CertificateBuilder(
        subject_name=base.subject, issuer_name=base.issuer, public_key=base.public_key(),
        serial_number=base.serial_number, not_valid_before=base.not_valid_before_utc,
        not_valid_after=base.not_valid_after_utc, extensions=list(base.extensions),
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)  # fmt: skip
    return b.sign(issuer[1], hashes.SHA256())


def test_intermediate_ca_chain_is_accepted(tmp_path, pki, wheels):
    ik, sk = keys.new_key(), keys.new_key()
    inter = keys.certificate("Intermediate", ik, (pki.root, pki.root_key), ca=True)
    signer = keys.certificate("Signer via intermediate", sk, (inter, ik))
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0", key=sk, chain=keys.pem(signer, inter))
    seen: list = []
    updater(tmp_path, pki, seen).apply(Request(str(a)), dry_run=True)
    assert seen == [S.SIGNATURE_VERIFIED]


def test_no_root_configured_refuses_everything(tmp_path, pki, wheels):
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0")
    seen: list = []
    c = UpdateConfig(releases_dir=tmp_path / "r", current_link=tmp_path / "c")
    with pytest.raises(UpdateRefused, match="no \\[update\\] root_ca_file"):
        Updater(c, tmp_path, LATEST_VERSION, seen.append, lambda: None).apply(Request(str(a)))
    assert seen == [S.INVALID_SIGNATURE]


@pytest.mark.parametrize(
    ("version", "readable_by", "ok"),
    [
        (LATEST_VERSION, LATEST_VERSION, True),  # no migration
        (LATEST_VERSION + 1, LATEST_VERSION, True),  # migrates, this release still reads it
        (LATEST_VERSION + 1, LATEST_VERSION + 1, False),  # a rollback could not read the store
        (LATEST_VERSION - 1, LATEST_VERSION - 1, False),  # migrations never go back
    ],
)
def test_store_schema_rule(tmp_path, pki, wheels, version, readable_by, ok):
    store = StoreSchema(version=version, readable_by=readable_by)
    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0", store=store)
    if ok:
        updater(tmp_path, pki, []).apply(Request(str(a)), dry_run=True)
        return
    err, _, _ = refused(tmp_path, pki, a)
    assert err.status == S.INSTALL_VERIFICATION_FAILED and "schema" in str(err)


def test_download_retries_honoured_and_clamped(tmp_path, pki):
    sleeps: list = []
    seen: list = []
    up = updater(tmp_path, pki, seen, sleeps, max_retries=3, retry_interval_s=(2, 30))
    with http_server(tmp_path) as url, pytest.raises(UpdateRefused, match="3 tries failed"):
        up.apply(Request(f"{url}/missing.update", retries=2, retry_interval_s=0.01))
    assert sleeps == [2, 2]  # two retries, the interval raised to the configured minimum
    assert seen == [S.DOWNLOADING, S.DOWNLOAD_FAILED]
    assert clamp_retries(50, 9999, 3, (2, 30)) == (3, 30)
    assert clamp_retries(None, None, 3, (2, 30)) == (0, 2)


def test_missing_file_is_download_failed(tmp_path, pki):
    err, seen, _ = refused(tmp_path, pki, tmp_path / "nope.update")
    assert err.status == S.DOWNLOAD_FAILED and seen == [S.DOWNLOAD_FAILED]


def test_make_release_builds_an_archive_its_test_root_verifies(tmp_path, wheels, capsys):
    from agent.update import build

    keydir = tmp_path / "keys"
    args = ["--keys", str(keydir), "--out-dir", str(tmp_path / "dist"),
            "--wheelhouse", str(wheels[0].parent)]  # fmt: skip
    build.main(args)
    root = (keydir / "root.pem").read_bytes()
    assert oct((keydir / "signer.key").stat().st_mode & 0o777) == "0o600"
    build.main(args)  # the second build signs with the same test key
    assert (keydir / "root.pem").read_bytes() == root
    out = tmp_path / "dist" / "evedge-2.0.0.update"
    assert f"{out}  (root: {keydir / 'root.pem'})" in capsys.readouterr().out
    seen: list = []
    c = UpdateConfig(root_ca_file=keydir / "root.pem", releases_dir=tmp_path / "r",
                     current_link=tmp_path / "c")  # fmt: skip
    m = Updater(c, tmp_path, LATEST_VERSION, seen.append, lambda: None).apply(
        Request(str(out)), dry_run=True
    )
    assert m.requirement == "evedge==2.0.0" and len(m.files) == 2
    assert seen == [S.SIGNATURE_VERIFIED]


def test_release_needing_a_newer_config_format_is_refused(tmp_path, pki, wheels):
    import json

    from agent.update.build import manifest

    doc = json.loads(manifest("2.0.0", "evedge==2.0.0", wheels, StoreSchema(
        version=LATEST_VERSION, readable_by=LATEST_VERSION)))  # fmt: skip
    doc["min_config_schema"] = 2
    raw = json.dumps(doc).encode()
    pack(tmp_path / "a.update", raw, keys.sign(pki.signer_key, raw), keys.pem(pki.signer), wheels)
    err, _, _ = refused(tmp_path, pki, tmp_path / "a.update")
    assert err.status == S.INSTALL_VERIFICATION_FAILED and "config schema 2" in str(err)


def test_cli_dry_run_and_its_errors(tmp_path, pki, wheels):
    from typer.testing import CliRunner

    from agent.cli.main import app

    a = pki.archive(tmp_path / "a.update", wheels, "2.0.0")
    conf = tmp_path / "station.toml"
    conf.write_text(
        f'[station]\nid = "T"\n[store]\npath = "{tmp_path / "evedge.db"}"\n[update]\n'
        f'root_ca_file = "{pki.roots_file}"\nreleases_dir = "{tmp_path / "r"}"\n'
    )
    run = CliRunner().invoke
    r = run(app, ["update", "apply", str(a), "--config", str(conf), "--dry-run"])
    assert r.exit_code == 0 and "release 2.0.0: signature and files verified" in r.output
    bad = pki.archive(tmp_path / "b.update", wheels, "2.0.0", key=keys.new_key())
    r = run(app, ["update", "apply", str(bad), "--config", str(conf), "--dry-run"])
    assert r.exit_code == 1 and "InvalidSignature: the manifest's signature" in r.output
    r = run(app, ["update", "apply", str(a), "--config", str(conf), "--at", "2026-12-08T02:00"])
    assert r.exit_code == 2 and "needs a UTC offset" in r.output


def test_cli_boot_check_counts_a_start_on_probation(tmp_path):
    from typer.testing import CliRunner

    from agent.cli.main import app
    from agent.update import probation

    conf = tmp_path / "station.toml"
    conf.write_text(f'[station]\nid = "T"\n[store]\npath = "{tmp_path / "evedge.db"}"\n')
    state = tmp_path / "update"  # beside the store
    (tmp_path / "releases" / "1.0.0").mkdir(parents=True)
    probation.begin(state, "2.0.0", str(tmp_path / "releases" / "1.0.0"), tmp_path / "current",
                    healthy_within_s=300, max_boots=1)  # fmt: skip
    run = CliRunner().invoke
    r = run(app, ["update", "boot-check", "--config", str(conf)])
    assert r.exit_code == 0 and r.output.strip() == "probation"
    assert probation.read(state)["boots"] == 1
    r = run(app, ["update", "boot-check", "--config", str(conf)])  # the 2nd start: over max
    said, outcome = r.output.strip().splitlines()  # the journal line, then the outcome
    assert outcome == "rolled_back" and '"event": "update.rolled_back"' in said
    assert os.readlink(tmp_path / "current") == str(tmp_path / "releases" / "1.0.0")
    r = run(app, ["update", "boot-check", "--config", str(conf)])
    assert r.output.strip() == "stable"


def test_https_download_checks_the_server_against_download_ca_file(tmp_path, pki, wheels):
    from update_helpers import tls_context

    www = tmp_path / "www"
    www.mkdir()
    pki.archive(www / "a.update", wheels, "2.0.0")
    tls = tls_context(tmp_path, pki)
    seen: list = []
    with http_server(www, tls) as url:
        assert url.startswith("https://")
        up = updater(tmp_path, pki, seen, download_ca_file=pki.roots_file)
        assert up.apply(Request(f"{url}/a.update"), dry_run=True).version == "2.0.0"
        # The system's CAs do not know the test root: the same server is refused.
        err, _, _ = refused(tmp_path, pki, f"{url}/a.update")
    assert seen == [S.DOWNLOADING, S.DOWNLOADED, S.SIGNATURE_VERIFIED]
    assert err.status == S.DOWNLOAD_FAILED and "CERTIFICATE_VERIFY_FAILED" in str(err)
