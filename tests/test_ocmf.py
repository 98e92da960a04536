"""Signed OCMF charge records, the agent's key file and the hash chain.

Every record is checked twice: by our verifier and by pyocmf, an independent implementation
(`OCMF.from_string(text).verify_signature(public_key_hex_or_base64)`).
"""

from __future__ import annotations

import os
import pickle
import stat
import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pyocmf import OCMF, PublicKey
from pyocmf.exceptions import PyOCMFError, SpecWarning
from structlog.testing import capture_logs

from agent.billing import chain, keys, ocmf

CEST = timezone(timedelta(hours=2))
T0 = datetime(2018, 7, 24, 13, 22, 4, 123999, tzinfo=CEST)

GATEWAY = ocmf.Gateway(serial="ST-0001", version="0.1.0", charge_controller_firmware="cc-2.3")
METER = ocmf.MeterIdentity(serial="79001234", vendor="Iskra", model="WM3M4C", firmware="1.14")
USER = ocmf.UserAssignment(
    assigned=True,
    level="HEARSAY",
    flags=("RFID_PLAIN",),
    id_type="ISO14443",
    id_data="1F2D3A4F5506C7",
)
CHARGE_POINT = ocmf.ChargePoint("DE*EVD*E0001*1")


@pytest.fixture
def key(tmp_path: Path) -> keys.PrivateKey:
    return keys.load_or_create_key(tmp_path / "keys")


def reading(tx: ocmf.Tx, wh: int, at: datetime = T0, **kw) -> ocmf.MeterReading:
    return ocmf.MeterReading(at, tx, wh, ocmf.TimeStatus.SYNCHRONIZED, **kw)


def session_records(key: keys.PrivateKey) -> tuple[str, str]:
    """A session's begin and end records (TX B in T1, TX E in T2), as the agent signs them."""
    counter = ocmf.TransactionCounter()
    common = dict(
        gateway=GATEWAY, meter=METER, user=USER, charge_point=CHARGE_POINT, tariff_text="AC 1"
    )
    begin = ocmf.build_record(
        key, pagination=counter.next(), readings=[reading(ocmf.Tx.BEGIN, 2935600)], **common
    )
    end_at = T0 + timedelta(minutes=42)
    end = ocmf.build_record(
        key, pagination=counter.next(), readings=[reading(ocmf.Tx.END, 2965100, end_at)], **common
    )
    return begin, end


def pyocmf_parse(text: str, *, strict: bool = True) -> OCMF:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)  # our records must not deviate at all
        return OCMF.from_string(text, strict=strict)


def pyocmf_accepts(text: str, public_key: str) -> bool:
    """pyocmf's verdict on a possibly damaged record: parse errors count as rejection."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpecWarning)
            return OCMF.from_string(text).verify_signature(public_key)
    except PyOCMFError:
        return False


def ours_accepts(text: str, public_key: str) -> bool:
    try:
        ocmf.verify(text, public_key)
    except ocmf.OcmfError:
        return False
    return True


def sections(text: str) -> tuple[str, str, str]:
    header, payload, signature = text.split("|")
    return header, payload, signature


# --- signing and verification ----------------------------------------------------------


def test_begin_end_pair_verifies_with_pyocmf_and_ours(key):
    begin, end = session_records(key)
    pub_hex, pub_b64 = keys.public_key_hex(key), keys.public_key_b64(key)

    b, e = pyocmf_parse(begin), pyocmf_parse(end)
    assert b.verify_signature(pub_hex) is True
    assert e.verify_signature(pub_b64) is True
    assert b.payload.PG == "T1" and e.payload.PG == "T2"
    assert [r.TX for r in b.payload.RD] == ["B"] and [r.TX for r in e.payload.RD] == ["E"]
    assert b.payload.RD[0].RV == 2935600 and e.payload.RD[0].RV == 2965100
    assert b.check_eichrecht(e, errors_only=True) == []

    vb, ve = ocmf.verify(begin, pub_hex), ocmf.verify(end, pub_b64)
    assert vb.text == begin and not vb.der_normalized
    assert [r.energy_wh for r in vb.record.readings + ve.record.readings] == [2935600, 2965100]
    ocmf.check_pagination([vb.record, ve.record])


def test_payload_and_signature_format(key):
    begin, _ = session_records(key)
    header, payload, signature = sections(begin)
    assert header == "OCMF"
    assert payload.startswith(
        '{"FV":"1.0","GI":"evedge","GS":"ST-0001","GV":"0.1.0","PG":"T1","MV":"Iskra",'
        '"MM":"WM3M4C","MS":"79001234","MF":"1.14","IS":true,"IL":"HEARSAY",'
        '"IF":["RFID_PLAIN"],"IT":"ISO14443","ID":"1F2D3A4F5506C7","TT":"AC 1","CF":"cc-2.3",'
        '"CT":"EVSEID","CI":"DE*EVD*E0001*1","RD":[{"TM":"2018-07-24T13:22:04,123+0200 S",'
        '"TX":"B","RV":2935600,"RI":"01-00:01.08.00*FF","RU":"Wh","RT":"AC","EF":"","ST":"G"}]}'
    )
    assert " " not in payload.replace("AC 1", "").replace("+0200 S", "")  # compact
    assert signature.startswith('{"SA":"ECDSA-secp256r1-SHA256","SD":"30')
    sd = signature.split('"SD":"')[1].rstrip('"}')
    decode_dss_signature(bytes.fromhex(sd))  # strict DER, or this raises


def test_tampering_with_the_energy_value_fails_both(key):
    begin, _ = session_records(key)
    pub = keys.public_key_hex(key)
    forged = begin.replace('"RV":2935600', '"RV":2935601')
    assert forged != begin
    with pytest.raises(ocmf.SignatureInvalid):
        ocmf.verify(forged, pub)
    assert pyocmf_parse(forged).verify_signature(pub) is False


def test_tampering_with_any_payload_byte_fails_both(key):
    begin, _ = session_records(key)
    pub = keys.public_key_hex(key)
    start = len("OCMF|")
    end = begin.index("|", start)
    for i in range(start, end):
        # Change the character to a different one that keeps most JSON valid.
        new = "1" if begin[i] != "1" else "2"
        forged = begin[:i] + new + begin[i + 1 :]
        assert not ours_accepts(forged, pub), f"ours accepted a change at {i}"
        assert not pyocmf_accepts(forged, pub), f"pyocmf accepted a change at {i}"


def test_tampering_with_any_signature_digit_fails_both(key):
    begin, _ = session_records(key)
    pub = keys.public_key_hex(key)
    sd_start = begin.index('"SD":"') + len('"SD":"')
    sd_end = begin.index('"', sd_start)
    for i in range(sd_start, sd_end):
        new = "0" if begin[i] != "0" else "F"
        forged = begin[:i] + new + begin[i + 1 :]
        assert not ours_accepts(forged, pub), f"ours accepted a signature change at {i}"
        assert not pyocmf_accepts(forged, pub), f"pyocmf accepted a signature change at {i}"


def test_wrong_public_key_fails_both(key, tmp_path):
    begin, _ = session_records(key)
    other = keys.load_or_create_key(tmp_path / "other")
    assert keys.public_key_hex(other) != keys.public_key_hex(key)
    with pytest.raises(ocmf.SignatureInvalid):
        ocmf.verify(begin, keys.public_key_hex(other))
    assert pyocmf_parse(begin).verify_signature(keys.public_key_hex(other)) is False
    # A key on another curve is refused as not fitting the algorithm.
    p384 = keys.public_key_hex(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ocmf.SignatureInvalid, match="curve"):
        ocmf.verify(begin, p384)


def test_payload_is_serialized_once_and_signed_over_those_bytes(key):
    payload = ocmf.build_payload(
        pagination=7,
        gateway=GATEWAY,
        meter=METER,
        user=USER,
        readings=[reading(ocmf.Tx.BEGIN, 1000)],
    )
    record = ocmf.sign(payload, key)
    assert sections(record)[1] == payload
    # Whitespace is allowed by JSON but not between signing and verification.
    spaced = record.replace('"PG":"T7"', '"PG": "T7"')
    assert ocmf.parse(spaced).payload["PG"] == "T7"
    assert not ours_accepts(spaced, keys.public_key_hex(key))
    assert not pyocmf_accepts(spaced, keys.public_key_hex(key))


def test_unassigned_user_still_writes_the_mandatory_fields(key):
    record = ocmf.build_record(
        key,
        pagination=1,
        gateway=ocmf.Gateway(serial="ST-0001", version="0.1.0"),
        meter=ocmf.MeterIdentity(serial="79001234"),
        user=ocmf.UserAssignment(),
        readings=[reading(ocmf.Tx.BEGIN, 0)],
    )
    # IS and IT are 1..1, and IF is an array even when empty (spec table 4).
    assert '"MS":"79001234","IS":false,"IL":"NONE","IF":[],"IT":"NONE","RD":' in record
    assert pyocmf_parse(record).verify_signature(keys.public_key_hex(key)) is True


# --- field formats -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "status", "expected"),
    [
        (T0, "S", "2018-07-24T13:22:04,123+0200 S"),  # truncated, not rounded to ,124
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "U", "2024-01-02T03:04:05,000+0000 U"),
        (
            datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5.5))),
            "I",
            "2024-12-31T23:59:59,999-0530 I",
        ),
        (
            datetime(999, 1, 1, tzinfo=UTC),
            ocmf.TimeStatus.RELATIVE,
            "0999-01-01T00:00:00,000+0000 R",
        ),
    ],
)
def test_tm_format_is_exact(when, status, expected):
    assert ocmf.format_time(when, status) == expected
    parsed, parsed_status = ocmf.parse_time(expected)
    assert parsed_status == ocmf.TimeStatus(status)
    assert parsed == when.replace(microsecond=when.microsecond // 1000 * 1000)


def test_tm_refuses_naive_times_and_unknown_flags():
    with pytest.raises(ocmf.OcmfFormatError, match="timezone-aware"):
        ocmf.format_time(datetime(2024, 1, 1), "S")
    with pytest.raises(ValueError):
        ocmf.format_time(T0, "Z")
    for bad in ("2018-07-24T13:22:04.000+0200 S", "2018-07-24T13:22:04,000+02:00 S"):
        with pytest.raises(ocmf.OcmfFormatError):
            ocmf.parse_time(bad)


def test_energy_must_be_integer_wh_and_kwh_is_rendered_exactly(key):
    with pytest.raises(ocmf.OcmfFormatError, match="integer Wh"):
        ocmf.build_payload(
            pagination=1,
            gateway=GATEWAY,
            meter=METER,
            user=USER,
            readings=[reading(ocmf.Tx.BEGIN, 2935.6)],
        )
    record = ocmf.build_record(
        key,
        pagination=1,
        gateway=GATEWAY,
        meter=METER,
        user=USER,
        readings=[reading(ocmf.Tx.BEGIN, 2935600, unit="kWh")],
    )
    assert '"RV":2935.600,' in record
    parsed = pyocmf_parse(record)
    assert parsed.verify_signature(keys.public_key_b64(key))
    assert str(parsed.payload.RD[0].RV) == "2935.600"  # digits kept exactly
    assert ocmf.verify(record, keys.public_key_b64(key)).record.readings[0].energy_wh == 2935600


@pytest.mark.parametrize(
    "change",
    [
        {"tariff_text": "a|b"},  # the pipe would split the record
        {"tariff_text": "x" * 251},
        {"user": replace(USER, level="HEARING")},  # the spec's word is HEARSAY
        {"user": replace(USER, id_data="1F2D")},  # not a 4 or 7 byte ISO 14443 UID
        {"user": replace(USER, flags=("RFID_NONE",) * 5)},
        {"meter": replace(METER, serial="")},
        {"pagination": 0},
        {"readings": []},
    ],
)
def test_values_the_spec_does_not_allow_are_refused(change):
    fields = dict(pagination=1, gateway=GATEWAY, meter=METER, user=USER, readings=[reading("B", 1)])
    with pytest.raises(ocmf.OcmfFormatError):
        ocmf.build_payload(**(fields | change))


# --- pagination ----------------------------------------------------------------------


def test_pagination_counter_increases_and_persists_before_use():
    stored: list[int] = []
    counter = ocmf.TransactionCounter(last=41, persist=stored.append)
    assert [counter.next(), counter.next(), counter.next()] == [42, 43, 44]
    assert stored == [42, 43, 44]

    def broken(_: int) -> None:
        raise OSError("disk full")

    failing = ocmf.TransactionCounter(last=5, persist=broken)
    with pytest.raises(OSError):
        failing.next()
    assert failing.last == 5  # not handed out, so not skipped either


def test_pagination_gaps_and_reversals_are_reported(key):
    records = [
        ocmf.parse(
            ocmf.build_record(
                key,
                pagination=n,
                gateway=GATEWAY,
                meter=METER,
                user=USER,
                readings=[reading("C", 1000 + n)],
            )
        )
        for n in (1, 2, 3, 5)
    ]
    ocmf.check_pagination(records[:3])
    with pytest.raises(ocmf.PaginationError, match=r"record 3: PG T5 follows T3 \(a gap\)"):
        ocmf.check_pagination(records)
    with pytest.raises(ocmf.PaginationError, match=r"record 1: .*not increasing"):
        ocmf.check_pagination([records[1], records[0]])


# --- parsing -------------------------------------------------------------------------


def test_parse_refuses_malformed_records(key):
    begin, _ = session_records(key)
    _, payload, signature = sections(begin)
    bad = {
        "no header": begin[5:],
        "appended key": begin + "|" + keys.public_key_hex(key),
        "duplicate key": f'OCMF|{payload[:-1]},"PG":"T9"}}|{signature}',
        "no SD": f"OCMF|{payload}|{{}}",
        "not json": f"OCMF|{payload[:-1]}|{signature}",
        "NaN": f'OCMF|{payload[:-1]},"X":NaN}}|{signature}',
    }
    for name, text in bad.items():
        with pytest.raises(ocmf.OcmfFormatError):
            ocmf.parse(text)
            pytest.fail(name)


# --- meter-signed records: passthrough and the Iskra DER quirk ------------------------

# Deliberately not how we format: whitespace and a decimal kWh value. Passthrough must keep
# every byte, because the meter's signature covers exactly these bytes.
METER_PAYLOAD = (
    '{"FV": "1.0", "GI": "ISKRA WM3M4C", "GS": "79001234", "PG": "T17", "MV": "Iskra", '
    '"MM": "WM3M4C", "MS": "79001234", "IS": false, "IT": "NONE", "RD": [{"TM": '
    '"2024-05-01T10:00:00,000+0000 S", "TX": "B", "RV": 2935.60, "RI": "01-00:01.08.00*FF", '
    '"RU": "kWh", "RT": "AC", "EF": "", "ST": "G"}]}'
)


def meter_record(meter_key: ec.EllipticCurvePrivateKey, der: bytes | None = None) -> str:
    if der is None:
        der = meter_key.sign(METER_PAYLOAD.encode(), ec.ECDSA(hashes.SHA256()))
    return f'OCMF|{METER_PAYLOAD}|{{"SD":"{der.hex().upper()}"}}'


def with_padded_r(der: bytes) -> bytes:
    """The same signature with one superfluous 0x00 in front of r (Iskra firmware quirk)."""
    r, s = decode_dss_signature(der)

    def integer(v: int, pad: bytes) -> bytes:
        body = pad + v.to_bytes(v.bit_length() // 8 + 1, "big")  # minimal, with a sign byte
        return b"\x02" + bytes([len(body)]) + body

    seq = integer(r, b"\x00") + integer(s, b"")
    return b"\x30" + bytes([len(seq)]) + seq


def test_passthrough_keeps_meter_bytes_identical(key):
    meter_key = ec.generate_private_key(ec.SECP256R1())
    meter_pub = keys.public_key_hex(meter_key.public_key())
    text = meter_record(meter_key)

    result = ocmf.passthrough_meter_record(text, meter_pub, meter_serial="79001234")
    assert result.text is text  # the very same string object, not a re-serialization
    assert not result.der_normalized
    assert result.record.readings[0].energy_wh == 2935600
    assert pyocmf_parse(text, strict=False).verify_signature(meter_pub) is True

    with pytest.raises(ocmf.SignatureInvalid):  # our key is not the meter's
        ocmf.passthrough_meter_record(text, keys.public_key_hex(key))
    with pytest.raises(ocmf.OcmfFormatError, match="expected 'OTHER'"):
        ocmf.passthrough_meter_record(text, meter_pub, meter_serial="OTHER")
    with pytest.raises(ocmf.SignatureInvalid):
        ocmf.passthrough_meter_record(text.replace("2935.60", "2935.70"), meter_pub)


def test_der_with_superfluous_leading_zero_verifies_via_normalization():
    meter_key = ec.generate_private_key(ec.SECP256R1())
    meter_pub = keys.public_key_b64(meter_key.public_key())
    strict = meter_key.sign(METER_PAYLOAD.encode(), ec.ECDSA(hashes.SHA256()))
    padded = with_padded_r(strict)
    assert padded != strict
    text = meter_record(meter_key, padded)

    with capture_logs() as logs:
        result = ocmf.passthrough_meter_record(text, meter_pub)
    assert result.der_normalized is True
    assert [e["event"] for e in logs] == ["ocmf.meter_signature_not_strict_der"]
    assert logs[0]["log_level"] == "warning" and logs[0]["pg"] == "T17"
    assert result.text is text
    assert ocmf.normalize_der_signature(padded) == strict
    # Strict verifiers reject the meter's bytes as they are; the normalized form is fine.
    assert pyocmf_accepts(text, meter_pub) is False
    assert pyocmf_accepts(meter_record(meter_key, strict), meter_pub) is True
    # Normalization does not weaken verification: a forged payload still fails.
    with pytest.raises(ocmf.SignatureInvalid):
        ocmf.verify(text.replace("2935.60", "2935.70"), meter_pub)


def test_negative_or_trailing_der_is_not_normalized():
    meter_key = ec.generate_private_key(ec.SECP256R1())
    der = meter_key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    assert ocmf.normalize_der_signature(der + b"\x00") is None
    r, s = decode_dss_signature(der)
    rb = r.to_bytes(32, "big")
    if not rb[0] & 0x80:
        rb = bytes([rb[0] | 0x80]) + rb[1:]
    seq = b"\x02\x20" + rb + b"\x02" + bytes([len(sb := s.to_bytes(33, "big"))]) + sb
    assert ocmf.normalize_der_signature(b"\x30" + bytes([len(seq)]) + seq) is None


# --- the signing key -----------------------------------------------------------------


def test_key_file_is_created_0600_and_reloaded_identically(tmp_path):
    directory = tmp_path / "state" / "keys"
    first = keys.load_or_create_key(directory)
    path = directory / keys.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in directory.iterdir()] == [keys.KEY_FILE]  # no temp file left

    again = keys.load_or_create_key(directory)
    assert keys.public_key_hex(again) == keys.public_key_hex(first)
    assert again._key.private_numbers() == first._key.private_numbers()
    # Both encodings are the same DER SubjectPublicKeyInfo, and pyocmf reads them.
    assert PublicKey.from_string(keys.public_key_hex(first)).curve == "secp256r1"
    assert PublicKey.from_string(keys.public_key_b64(first)).key.upper() == (
        keys.public_key_hex(first)
    )


def test_group_readable_key_file_is_refused(tmp_path):
    keys.load_or_create_key(tmp_path)
    path = tmp_path / keys.KEY_FILE
    os.chmod(path, 0o644)
    with pytest.raises(keys.KeyFileError, match=r"mode 0644.*chmod 600"):
        keys.load_or_create_key(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # reported, not silently "fixed"


def test_corrupt_key_file_gives_a_clear_error_and_is_kept(tmp_path):
    keys.load_or_create_key(tmp_path)
    path = tmp_path / keys.KEY_FILE
    damaged = path.read_bytes()[:60] + b"garbage\n"
    path.write_bytes(damaged)
    with pytest.raises(keys.KeyFileError, match="corrupt") as err:
        keys.load_or_create_key(tmp_path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == damaged  # never replaced by a new key


def test_key_never_appears_in_repr_or_pickle(key):
    secret = key._key.private_numbers().private_value
    for text in (repr(key), str(key), f"{key}"):
        assert str(secret) not in text and format(secret, "x") not in text.lower()
        assert keys.fingerprint(key) in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


# --- the hash chain ------------------------------------------------------------------


def make_chain(key: keys.PrivateKey, n: int = 5) -> list[chain.ChainedRecord]:
    records: list[chain.ChainedRecord] = []
    for i in range(n):
        begin, end = session_records(key)
        body = {
            "session": f"S{i}",
            "energy_wh": 29500 + i,
            "cost": Decimal("11.51"),
            "ocmf": [begin, end],
        }
        records.append(chain.append(records[-1] if records else None, body))
    return records


def test_chain_verifies_and_survives_key_reordering_in_storage(key):
    records = make_chain(key)
    chain.verify_chain(records, head=chain.record_hash(records[-1]))
    assert records[0].prev_hash == chain.GENESIS and records[1].seq == 2
    reordered_body = dict(reversed(list(records[2].body.items())))
    same = replace(records[2], body=reordered_body)
    assert chain.record_hash(same) == chain.record_hash(records[2])


def test_chain_detects_an_edited_record(key):
    records = make_chain(key)
    records[2] = replace(records[2], body={**records[2].body, "cost": Decimal("1.51")})
    with pytest.raises(chain.ChainBroken) as err:
        chain.verify_chain(records)
    assert (err.value.index, err.value.kind) == (2, "edited")


def test_chain_detects_a_removed_record(key):
    records = make_chain(key)
    del records[2]
    with pytest.raises(chain.ChainBroken) as err:
        chain.verify_chain(records)
    assert (err.value.index, err.value.kind) == (2, "removed")
    with pytest.raises(chain.ChainBroken) as err:
        chain.verify_chain(make_chain(key)[1:])
    assert (err.value.index, err.value.kind) == (0, "removed")


def test_chain_detects_reordered_records(key):
    records = make_chain(key)
    records[1], records[3] = records[3], records[1]
    with pytest.raises(chain.ChainBroken) as err:
        chain.verify_chain(records)
    assert (err.value.index, err.value.kind) == (1, "reordered")


def test_chain_head_detects_truncation_and_last_record_edits(key):
    records = make_chain(key)
    head = chain.record_hash(records[-1])
    chain.verify_chain(records[:-1])  # without a head, a truncated chain looks whole
    with pytest.raises(chain.ChainBroken) as err:
        chain.verify_chain(records[:-1], head=head)
    assert (err.value.index, err.value.kind) == (3, "head")
    records[-1] = replace(records[-1], body={"session": "forged"})
    with pytest.raises(chain.ChainBroken) as err:
        chain.verify_chain(records, head=head)
    assert (err.value.index, err.value.kind) == (4, "head")


def test_chain_refuses_floats():
    with pytest.raises(chain.ChainError, match=r"body\.cost"):
        chain.append(None, {"cost": 11.51})
